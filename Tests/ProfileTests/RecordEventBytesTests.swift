import CDPProto
import Foundation
import SwiftProtobuf
import TestSupport
import Testing

@testable import ProfileStore

/// Reading a stored record's event from its encoding: the bytes are what decoding the record and
/// encoding its event gives, whatever order the fields come in; encodings the scan does not take as
/// they are fall back to decoding; bytes that are no record are an error.
@Suite("A stored record's event bytes")
struct RecordEventBytesTests {
    static let record = Bodea.pageVisit(at: Date(timeIntervalSince1970: 1_780_000_000)).record

    /// What profile sent before: the event decoded from the record, encoded again.
    static func decoded(_ bytes: Data) throws -> Data {
        try Cdp_Model_V1_Record(serializedBytes: bytes).event.serializedBytes()
    }

    @Test func theEventIsCopiedAsTheRecordHoldsIt() throws {
        let bytes: Data = try Self.record.serializedBytes()
        let scanned = try #require(RecordEventBytes.scan(bytes))
        #expect(scanned == (try Self.decoded(bytes)))
        #expect(try Cdp_Model_V1_ExperienceEvent(serializedBytes: scanned) == Self.record.event)
    }

    /// Field order and fields of every wire type (a varint, fixed 32 and 64-bit values, unknown
    /// length-prefixed ones) before and after the event do not matter.
    @Test func anyFieldOrderAndUnknownFieldsAreSkipped() throws {
        let event: Data = try Self.record.event.serializedBytes()
        try #require(event.count < 128, "the length below is one byte")
        var bytes = Data([0xf8, 0x01, 0x96, 0x01])  // field 31, varint 150
        bytes += [0x9a, 0x01, UInt8(event.count)] + event  // field 19, the event
        bytes += [0xfd, 0x01, 1, 2, 3, 4]  // field 31, fixed 32-bit
        bytes += [0xf9, 0x01, 1, 2, 3, 4, 5, 6, 7, 8]  // field 31, fixed 64-bit
        bytes += Data([0x0a, 0x03]) + Data("k-1".utf8)  // field 1, the key
        #expect(RecordEventBytes.scan(bytes) == event)
        #expect(try RecordEventBytes.of(record: bytes) == (try Self.decoded(bytes)))
    }

    @Test func aRecordWithoutAnEventHasAnEmptyOne() throws {
        var person = Cdp_Model_V1_Record()
        person.key = "102@mkto-1.Marketo"
        person.person.email = "p@example.com"
        // Another member of the entity oneof: what a decoded record's `event` gives is empty.
        let bytes: Data = try person.serializedBytes()
        #expect(try RecordEventBytes.of(record: bytes) == Data())
        #expect(try Self.decoded(bytes) == Data())
        #expect(try RecordEventBytes.of(record: Data()) == Data())
    }

    /// An event field twice (a decoder merges the two) or another oneof member after it (a decoder keeps
    /// the last) is left to the decoder.
    @Test func encodingsADecoderWouldMergeFallBackToDecoding() throws {
        let event: Data = try Self.record.event.serializedBytes()
        try #require(event.count < 128, "the lengths below are one byte")
        var url = Cdp_Model_V1_ExperienceEvent()
        url.url = "https://bodea.example/other"
        let second: Data = try url.serializedBytes()
        let twice = Data([0x9a, 0x01, UInt8(event.count)]) + event + Data([0x9a, 0x01, UInt8(second.count)]) + second
        #expect(RecordEventBytes.scan(twice) == nil)
        let merged = try RecordEventBytes.of(record: twice)
        #expect(merged == (try Self.decoded(twice)))
        #expect(try Cdp_Model_V1_ExperienceEvent(serializedBytes: merged).url == "https://bodea.example/other")

        let replaced = Data([0x9a, 0x01, UInt8(event.count)]) + event + Data([0x52, 0x00])  // then person = {}
        #expect(RecordEventBytes.scan(replaced) == nil)
        #expect(try RecordEventBytes.of(record: replaced) == Data())
    }

    @Test func bytesThatAreNoRecordAreAnError() throws {
        for bytes in [Data([0x9a, 0x01, 0x10, 0x01]), Data([0x0b]), Data([0xff])] {
            #expect(RecordEventBytes.scan(bytes) == nil)
            #expect(throws: (any Error).self) { try RecordEventBytes.of(record: bytes) }
        }
    }
}

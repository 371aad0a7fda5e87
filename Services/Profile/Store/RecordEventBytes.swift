import CDPProto
import Foundation

/// The `event` of a stored `cdp.model.v1.Record`, as bytes, read from the record's encoding without
/// decoding it: profile sends each logged event to segmentation, and decoded the whole record only to
/// encode its event again (taking the log's events was 3.9% of profile's CPU while a data set loaded).
///
/// The scan walks the record's top-level fields (a protobuf tag, then a varint, a fixed 32 or 64-bit
/// value or a length-prefixed value). An encoding it does not take as it is falls back to decoding:
/// the `entity` oneof set more than once (a decoder merges or replaces), a group, or bytes that do not
/// parse.
enum RecordEventBytes {
    /// `Record.event`'s field number.
    static let eventField: UInt64 = 19
    /// The field numbers of the `entity` oneof (`event` among them).
    static let entityFields: ClosedRange<UInt64> = 10...20

    /// The event's serialized `ExperienceEvent`, as the record holds it (empty if the record has none,
    /// as a decoded record gives an empty event).
    ///
    /// - Throws: The decoding error of a record that neither the scan nor the decoder can read.
    static func of(record bytes: Data) throws -> Data {
        if let found = scan(bytes) { return found }
        return try Cdp_Model_V1_Record(serializedBytes: bytes).event.serializedBytes()
    }

    /// The event's bytes if the record's encoding has at most one field of the `entity` oneof and
    /// parses; nil otherwise.
    static func scan(_ bytes: Data) -> Data? {
        bytes.withUnsafeBytes { (buffer: UnsafeRawBufferPointer) -> Data? in
            var reader = WireReader(buffer)
            var event: Range<Int>? = nil
            var entityFieldsSeen = 0
            while !reader.atEnd {
                guard let tag = reader.varint() else { return nil }
                let field = tag >> 3
                let isEntity = entityFields.contains(field)
                if isEntity { entityFieldsSeen += 1 }
                switch tag & 7 {
                case 0: guard reader.varint() != nil else { return nil }
                case 1: guard reader.skip(8) else { return nil }
                case 5: guard reader.skip(4) else { return nil }
                case 2:
                    guard let length = reader.varint(), let range = reader.take(length) else { return nil }
                    if field == eventField { event = range }
                default: return nil  // groups (3, 4) and reserved wire types
                }
                if isEntity, entityFieldsSeen > 1 { return nil }
            }
            guard let event else { return Data() }
            return Data(buffer[event])
        }
    }

    /// A cursor over encoded bytes.
    private struct WireReader {
        let buffer: UnsafeRawBufferPointer
        var offset = 0

        init(_ buffer: UnsafeRawBufferPointer) { self.buffer = buffer }

        var atEnd: Bool { offset >= buffer.count }

        /// A base-128 varint of at most ten bytes; nil if the bytes end first or it is longer.
        mutating func varint() -> UInt64? {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while offset < buffer.count, shift < 70 {
                let byte = buffer[offset]
                offset += 1
                value |= UInt64(byte & 0x7f) << shift
                if byte & 0x80 == 0 { return value }
                shift += 7
            }
            return nil
        }

        /// Skips `count` bytes; false if fewer are left.
        mutating func skip(_ count: Int) -> Bool {
            guard buffer.count - offset >= count else { return false }
            offset += count
            return true
        }

        /// The range of the next `length` bytes, skipped; nil if fewer are left.
        mutating func take(_ length: UInt64) -> Range<Int>? {
            guard length <= UInt64(buffer.count - offset) else { return nil }
            let range = offset..<(offset + Int(length))
            offset = range.upperBound
            return range
        }
    }
}

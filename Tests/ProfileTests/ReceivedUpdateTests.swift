import CDPProto
import Foundation
import ProfileStore
import SwiftProtobuf
import Testing

/// Identity's updates as profile's store takes them: of an event only what the store indexes is
/// decoded, with the same rules as decoding the whole record, and every record is stored and passed
/// on as it came, not encoded again.
@Suite("Received updates")
struct ReceivedUpdateTests {
    /// An update carrying `record` (serialized as given) for the person cluster 7.
    static func update(
        _ record: Data,
        sequence: UInt64 = 1,
        entityType: Cdp_Model_V1_EntityType = .unspecified
    )
        throws -> ReceivedUpdate
    {
        var update = Cdp_Profile_V1_IdentityUpdateStoredBytes()
        update.sequence = sequence
        update.record.entityType = entityType
        update.record.stored.version = 5
        update.record.stored.record = record
        var person = Cdp_Profile_V1_ResolvedReference()
        person.role = "person"
        person.entityType = .person
        person.clusterID = 7
        person.identity.namespace = "email"
        person.identity.value = "p@example.com"
        update.record.references = [person]
        return try ReceivedUpdate(update)
    }

    /// A length-delimited field, encoded by hand.
    static func field(_ number: UInt64, _ bytes: Data) -> Data {
        varint(number << 3 | 2) + varint(UInt64(bytes.count)) + bytes
    }

    static func field(_ number: UInt64, _ string: String) -> Data { field(number, Data(string.utf8)) }

    static func varint(_ value: UInt64) -> Data {
        var value = value
        var bytes = Data()
        while value >= 0x80 {
            bytes.append(UInt8(value & 0x7f) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
        return bytes
    }

    /// An event's fields in an order no encoder writes (the url before the id, the event before the
    /// key): a record encoded again would not hold these bytes.
    static let event: Data = {
        var time = Google_Protobuf_Timestamp()
        time.seconds = 1_780_000_000
        return field(7, "https://bodea.example/pricing") + field(5, "web.webpagedetails.pageViews")
            + field(6, try! time.serializedBytes()) + field(1, "e-1")
    }()

    @Test func anEventIsReadFromItsOutlineAndPassedOnAsItCame() throws {
        let record = Self.field(19, Self.event) + Self.field(1, "e-1@web-1.Web")
        let update = try Self.update(record)
        guard case .record(let received) = update.change,
            case .event(let key, let isDeleted, let timestamp) = received.content
        else {
            Issue.record("not read as an event: \(update.change)")
            return
        }
        #expect(key == "e-1@web-1.Web")
        #expect(!isDeleted)
        #expect(timestamp.seconds == 1_780_000_000)
        #expect(received.bytes == record)

        let store = try SQLiteProfileStore()
        #expect(try store.apply([update]) == (1, 0))
        let chunk = try store.takeStateChanges(limit: 10)
        #expect(chunk.serialized.count == 1)
        // Segmentation gets the event's bytes as ingestion encoded them.
        #expect(chunk.serialized.first?.range(of: Self.event) != nil)
        let change = try Cdp_Profile_V1_StateChange(serializedBytes: try #require(chunk.serialized.first))
        #expect(change.event.personClusterID == 7)
        #expect(change.event.event.url == "https://bodea.example/pricing")
    }

    /// The outline follows the record's rules: the last entity field wins, so an event followed by a
    /// person is a person's fragment and a person followed by an event is an event. A record that
    /// identity placed in a graph is decoded whole, and still stored as an event if it holds one.
    @Test func theLastEntityFieldDecidesAsItDoesForTheRecord() throws {
        let person = Self.field(2, "p@example.com")
        for (bytes, isEvent) in [
            (Self.field(19, Self.event) + Self.field(10, person), false),
            (Self.field(10, person) + Self.field(19, Self.event), true),
            (Self.field(1, "no-entity"), false),
        ] {
            let update = try Self.update(bytes)
            guard case .record(let received) = update.change else {
                Issue.record("not a record")
                continue
            }
            switch received.content {
            case .event: #expect(isEvent, "\(bytes as NSData)")
            case .fragment(let record):
                #expect(!isEvent, "\(bytes as NSData)")
                #expect(record == (try Cdp_Model_V1_Record(serializedBytes: bytes)))
            }
        }
        let placed = try Self.update(Self.field(19, Self.event), entityType: .person)
        guard case .record(let received) = placed.change, case .event = received.content else {
            Issue.record("an event annotated with a graph was not read as an event")
            return
        }
    }

    @Test func aRecordThatDoesNotParseIsAnError() throws {
        #expect(throws: (any Error).self) { _ = try Self.update(Data([0x0a, 0x7f, 0x01])) }
        #expect(throws: (any Error).self) { _ = try Self.update(Data([0x0a, 0x7f, 0x01]), entityType: .person) }
    }
}

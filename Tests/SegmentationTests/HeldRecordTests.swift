import CDPProto
import Foundation
import SegmentationEvaluation
import SwiftProtobuf
import Testing

@testable import SegmentationState

/// How the state holds a unified record it received.
@Suite("Held records")
struct HeldRecordTests {
    /// Where a string's bytes are (nil for a string held inline or not native).
    static func storage(_ string: String) -> UnsafeRawPointer? {
        string.utf8.withContiguousStorageIfAvailable { UnsafeRawPointer($0.baseAddress) } ?? nil
    }

    /// Decoded from a call, a record's key and the fragment key it equals are two strings; held, they
    /// are one (the key is always one of the fragment keys, and long keys cost an allocation each).
    @Test func aRecordsKeySharesTheStringOfItsFragmentKey() throws {
        let key = "0035g00003UbW8YAAV@sf-1.Salesforce"
        var change = Cdp_Profile_V1_StateChange()
        change.version = 1
        change.entity.entityType = .person
        change.entity.clusterID = 7
        change.entity.unified.record.key = key
        change.entity.unified.record.person.email = "p@example.com"
        change.entity.unified.fragmentKeys = ["1000001@mkto-1.Marketo", key]
        let received = try Cdp_Profile_V1_StateChange(serializedBytes: change.serializedBytes() as Data)
        #expect(
            Self.storage(received.entity.unified.record.key) != Self.storage(received.entity.unified.fragmentKeys[1])
        )

        let state = EntityState()
        var touched: Set<EntityState.EntityKey> = []
        try state.apply(received, touched: &touched)
        let held = try #require(state.view(EntityState.EntityKey(.person, 7), asOf: Date())).record
        #expect(held.record.key == key)
        #expect(held.fragmentKeys == ["1000001@mkto-1.Marketo", key])
        #expect(Self.storage(held.record.key) != nil)
        #expect(Self.storage(held.record.key) == Self.storage(held.fragmentKeys[1]))
    }
}

import CDPProto
import Foundation
import SegmentationEvaluation
import SwiftProtobuf
import Testing

@testable import SegmentationState

/// How the state holds a unified record it received: encoded, decoded again for each view.
@Suite("Held records")
struct HeldRecordTests {
    /// A person's unified record with fields of every kind: strings, numbers, flags, a time, custom
    /// attributes, several fragment keys.
    static func person(cluster: UInt64) -> Cdp_Profile_V1_UnifiedRecord {
        var unified = Cdp_Profile_V1_UnifiedRecord()
        unified.clusterID = cluster
        unified.record.key = "0035g00003UbW8YAAV@sf-1.Salesforce"
        unified.record.source.instance = "sf-1"
        unified.record.lastUpdated = Google_Protobuf_Timestamp(seconds: 1_767_225_600, nanos: 5)
        unified.record.person.personID = "0035g00003UbW8YAAV"
        unified.record.person.email = "heather.fernandes@riverforgetechnologies.com"
        unified.record.person.jobTitle = "Marketing Operations Manager"
        unified.record.person.score = 121.5
        unified.record.person.emailOptOut = false
        var tier = Cdp_Model_V1_AttributeValue()
        tier.stringValue = "gold"
        unified.record.customAttributes = ["tier": tier]
        unified.fragmentKeys = ["1000001@mkto-1.Marketo", unified.record.key]
        return unified
    }

    static func change(
        version: UInt64,
        cluster: UInt64,
        _ unified: Cdp_Profile_V1_UnifiedRecord?
    ) -> Cdp_Profile_V1_StateChange {
        var change = Cdp_Profile_V1_StateChange()
        change.version = version
        change.entity.entityType = .person
        change.entity.clusterID = cluster
        if var unified {
            // Profile does not repeat the cluster id inside the record; views carry it.
            unified.clusterID = 0
            change.entity.unified = unified
        }
        return change
    }

    @Test func aViewShowsTheRecordAsItWasReceivedWithItsCluster() throws {
        let state = EntityState()
        var touched: Set<EntityState.EntityKey> = []
        try state.apply(Self.change(version: 1, cluster: 7, Self.person(cluster: 7)), touched: &touched)
        #expect(state.hasRecord(.person, 7))
        #expect(state.record(.person, 7) == Self.person(cluster: 7))
        let view = try #require(state.personView(7, asOf: Date()))
        #expect(view.person == Self.person(cluster: 7))

        // A newer record replaces it; an older one does not; a removal leaves none.
        var renamed = Self.person(cluster: 7)
        renamed.record.person.jobTitle = "CMO"
        try state.apply(Self.change(version: 3, cluster: 7, renamed), touched: &touched)
        #expect(
            try state.apply(Self.change(version: 2, cluster: 7, Self.person(cluster: 7)), touched: &touched) == .stale
        )
        #expect(state.record(.person, 7)?.record.person.jobTitle == "CMO")
        try state.apply(Self.change(version: 4, cluster: 7, nil), touched: &touched)
        #expect(!state.hasRecord(.person, 7))
        #expect(state.record(.person, 7) == nil)
        #expect(state.personView(7, asOf: Date()) == nil)
        #expect(state.count(of: .person) == 0)
    }

    /// Held, a record takes its encoded size and no more: the cluster id is not repeated in it.
    @Test func aHeldRecordIsItsEncodingWithoutTheCluster() throws {
        var record = Self.person(cluster: 123_456_789)
        let held = try HeldRecord(
            version: 1,
            unified: {
                record.clusterID = 0
                return record
            }()
        )
        #expect(held.encoded == (try record.serializedBytes() as [UInt8]))
        #expect(held.unified(cluster: 123_456_789) == Self.person(cluster: 123_456_789))
        #expect(try HeldRecord(version: 2, unified: nil).unified(cluster: 1) == nil)
    }
}

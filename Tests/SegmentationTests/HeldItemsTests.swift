import CDPProto
import Foundation
import SegmentationEvaluation
import SwiftProtobuf
import Testing

@testable import SegmentationState

/// How the state holds a unified record it received: a person's encoded, decoded again for each view;
/// the others decoded.
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

    /// Held, a person's record takes its encoded size and no more: the cluster id is not repeated in it.
    @Test func aHeldPersonIsItsEncodingWithoutTheCluster() throws {
        var record = Self.person(cluster: 123_456_789)
        let held = try HeldRecord(version: 1, unified: record, encoded: true, cluster: 123_456_789)
        record.clusterID = 0
        #expect(held.encoded == (try record.serializedBytes() as [UInt8]))
        #expect(held.unified(cluster: 123_456_789) == Self.person(cluster: 123_456_789))
        let decoded = try HeldRecord(version: 1, unified: record, encoded: false, cluster: 5)
        #expect(decoded.encoded == nil)
        #expect(decoded.unified(cluster: 5)?.record == record.record)
        #expect(decoded.unified(cluster: 5)?.clusterID == 5)
        #expect(try HeldRecord(version: 2, unified: nil, encoded: true, cluster: 1).unified(cluster: 1) == nil)
        #expect(try HeldRecord(version: 2, unified: nil, encoded: false, cluster: 1).unified(cluster: 1) == nil)
    }

    /// Decoded from a call, a record's key and the fragment key it equals are two strings; held
    /// decoded, they are one (the key is always one of the fragment keys, and long keys cost an
    /// allocation each).
    @Test func aDecodedRecordsKeySharesTheStringOfItsFragmentKey() throws {
        let key = "0015g00000fpDBoAAM@sf-1.Salesforce"
        var change = Cdp_Profile_V1_StateChange()
        change.version = 1
        change.entity.entityType = .account
        change.entity.clusterID = 7
        change.entity.unified.record.key = key
        change.entity.unified.record.account.name = "Novapath"
        change.entity.unified.fragmentKeys = ["50003540@mkto-1.Marketo", key]
        let received = try Cdp_Profile_V1_StateChange(serializedBytes: change.serializedBytes() as Data)
        #expect(
            Self.storage(received.entity.unified.record.key) != Self.storage(received.entity.unified.fragmentKeys[1])
        )

        let state = EntityState()
        var touched: Set<EntityState.EntityKey> = []
        try state.apply(received, touched: &touched)
        let held = try #require(state.record(.account, 7))
        #expect(held.record.key == key)
        #expect(held.fragmentKeys == ["50003540@mkto-1.Marketo", key])
        #expect(Self.storage(held.record.key) != nil)
        #expect(Self.storage(held.record.key) == Self.storage(held.fragmentKeys[1]))
    }

    /// An opportunity's CRM id equal to its id (as in a CRM's own records) is held as the same string;
    /// a different one is kept as it is.
    @Test func aDecodedOpportunitysCRMIdSharesTheStringOfItsId() throws {
        let state = EntityState()
        var touched: Set<EntityState.EntityKey> = []
        for (cluster, crmID) in [(UInt64(1), "0065g00005ukGTiAAM"), (2, "0065g00005ukT2HAAU")] {
            var change = Cdp_Profile_V1_StateChange()
            change.version = cluster
            change.entity.entityType = .opportunity
            change.entity.clusterID = cluster
            change.entity.unified.record.key = "0065g00005ukGTiAAM@sfdc-1.Salesforce"
            change.entity.unified.record.opportunity.opportunityID = "0065g00005ukGTiAAM"
            change.entity.unified.record.opportunity.crmID = crmID
            let received = try Cdp_Profile_V1_StateChange(serializedBytes: change.serializedBytes() as Data)
            try state.apply(received, touched: &touched)
        }
        let same = try #require(state.record(.opportunity, 1)).record.opportunity
        #expect(same.crmID == "0065g00005ukGTiAAM")
        #expect(Self.storage(same.crmID) != nil)
        #expect(Self.storage(same.crmID) == Self.storage(same.opportunityID))
        let other = try #require(state.record(.opportunity, 2)).record.opportunity
        #expect(other.crmID == "0065g00005ukT2HAAU")
        #expect(other.opportunityID == "0065g00005ukGTiAAM")
    }

    /// Where a string's bytes are (nil for a string held inline or not native).
    static func storage(_ string: String) -> UnsafeRawPointer? {
        string.utf8.withContiguousStorageIfAvailable { UnsafeRawPointer($0.baseAddress) } ?? nil
    }
}

extension HeldRecordTests {
    /// Whether a commit saved the record shares the version's word: setting and clearing it keeps the
    /// version, up to the largest the state takes.
    @Test func markingARecordSavedKeepsItsVersion() throws {
        for version in [0, 1, UInt64(Int64.max)] {
            var held = try HeldRecord(version: version, unified: Self.person(cluster: 1), encoded: true, cluster: 1)
            #expect(!held.saved)
            held.saved = true
            #expect(held.saved && held.version == version)
            held.saved = false
            #expect(!held.saved && held.version == version)
        }
        #expect(MemoryLayout<HeldRecord>.stride == 16)
    }

    /// The state marks a record saved until a change replaces it.
    @Test func aNewRecordIsNotSaved() throws {
        let state = EntityState()
        var touched: Set<EntityState.EntityKey> = []
        let key = EntityState.EntityKey(.person, 7)
        try state.apply(Self.change(version: 1, cluster: 7, Self.person(cluster: 7)), touched: &touched)
        #expect(!state.isRecordSaved(key))
        state.markRecordSaved(key)
        #expect(state.isRecordSaved(key))
        #expect(!state.isRecordSaved(EntityState.EntityKey(.account, 7)))
        try state.apply(Self.change(version: 2, cluster: 7, Self.person(cluster: 7)), touched: &touched)
        #expect(!state.isRecordSaved(key))
    }
}

/// How the state holds an event: its strings interned, its type, page, title and whether it has a
/// time as one number.
@Suite("Held events")
struct HeldEventTests {
    static func event(_ key: String, _ fill: (inout Cdp_Model_V1_ExperienceEvent) -> Void) -> Cdp_Profile_V1_Event {
        var event = Cdp_Profile_V1_Event()
        event.key = key
        fill(&event.event)
        return event
    }

    /// Each event comes back as it was received, whichever fields it has, among events sharing some.
    @Test func anEventComesBackAsItWasReceived() throws {
        let time = Google_Protobuf_Timestamp(seconds: 1_767_225_600, nanos: 123_000_000)
        let events = [
            Self.event("web-1@web-1.Web") {
                $0.eventID = "web-1"
                $0.eventType = "web.webpagedetails.pageViews"
                $0.timestamp = time
                $0.url = "https://bodea.example/pricing"
                $0.name = "Pricing"
                $0.email = "a@example.com"
            },
            // The same page without a title, another id than the key's, an ecid and a person key.
            Self.event("web-2@web-1.Web") {
                $0.eventID = "visit-2"
                $0.eventType = "web.webpagedetails.pageViews"
                $0.timestamp = Google_Protobuf_Timestamp(seconds: time.seconds - 60, nanos: 0)
                $0.url = "https://bodea.example/pricing"
                $0.email = "a@example.com"
                $0.ecid = "93634308237190101870723343459544865055"
                $0.personKey = "1000001@mkto-1.Marketo"
            },
            // No time (sorted as the oldest) and an empty url, which is present.
            Self.event("web-3@web-1.Web") {
                $0.eventID = "web-3"
                $0.eventType = "email.opened"
                $0.url = ""
            },
        ]
        // A retention reaching back past 1970, where the event without a time sorts.
        let state = EntityState(configuration: .init(eventRetention: .seconds(100 * 365 * 86_400)))
        var touched: Set<EntityState.EntityKey> = []
        try state.apply(
            HeldRecordTests.change(version: 1, cluster: 7, HeldRecordTests.person(cluster: 7)),
            touched: &touched
        )
        for (index, event) in events.enumerated() {
            var change = Cdp_Profile_V1_StateChange()
            change.version = UInt64(index + 2)
            change.event.key = event.key
            change.event.personClusterID = 7
            change.event.event = event.event
            try state.apply(change, touched: &touched)
        }
        let view = try #require(state.personView(7, asOf: Date(timeIntervalSince1970: 1_767_225_700)))
        // Newest first.
        #expect(view.events == events)
    }

    /// What a held event takes: the state holds millions of them.
    @Test func aHeldEventTakesSixtyFourBytes() {
        #expect(MemoryLayout<HeldEvent>.stride == 64)
    }
}

/// Records many views share (accounts here), held decoded.
@Suite("Shared records")
struct SharedRecordsTests {
    static func account(_ name: String) -> Cdp_Profile_V1_UnifiedRecord {
        var unified = Cdp_Profile_V1_UnifiedRecord()
        unified.record.key = "\(name)@sf-1.Salesforce"
        unified.record.account.accountID = name
        unified.record.account.name = name
        unified.fragmentKeys = [unified.record.key]
        return unified
    }

    /// A view built after a newer record of an account shows the newer one, in the person's view and
    /// the account's; a removed account leaves both.
    @Test func aViewShowsTheNewestRecordOfASharedAccount() throws {
        let state = EntityState()
        var touched: Set<EntityState.EntityKey> = []
        var version: UInt64 = 0
        func apply(_ fill: (inout Cdp_Profile_V1_StateChange) -> Void) throws {
            version += 1
            var change = Cdp_Profile_V1_StateChange()
            change.version = version
            fill(&change)
            try state.apply(change, touched: &touched)
        }
        try apply {
            $0.entity.entityType = .person
            $0.entity.clusterID = 7
            $0.entity.unified = HeldRecordTests.person(cluster: 0)
        }
        try apply {
            $0.entity.entityType = .account
            $0.entity.clusterID = 3
            $0.entity.unified = Self.account("Old name")
        }
        try apply {
            $0.link.entityType = .person
            $0.link.key = "p1@sf-1.Salesforce"
            $0.link.fromClusterID = 7
            $0.link.toClusterID = 3
            $0.link.present = true
        }
        #expect(state.personView(7, asOf: Date())?.accounts.map(\.record.account.name) == ["Old name"])
        try apply {
            $0.entity.entityType = .account
            $0.entity.clusterID = 3
            $0.entity.unified = Self.account("New name")
        }
        #expect(state.personView(7, asOf: Date())?.accounts.map(\.record.account.name) == ["New name"])
        #expect(state.accountView(3)?.account.record.account.name == "New name")
        try apply {
            $0.entity.entityType = .account
            $0.entity.clusterID = 3
        }
        #expect(state.personView(7, asOf: Date())?.accounts == [])
        #expect(state.accountView(3) == nil)
    }
}

import CDPProto
import Foundation
import Testing

@testable import SegmentationState

/// Which persons and accounts a change touches: the roots whose views show what it changed, of the
/// kinds the engine asks for (those a streaming segment evaluates), and always a person or account
/// whose own record it replaces.
@Suite("Touched roots")
struct TouchedRootsTests {
    typealias Key = EntityState.EntityKey

    /// Person 7 works at account 3 (its person record's link); person 8 holds a role on opportunity 5,
    /// which belongs to account 3; person 9 is a member of campaign 4.
    static func world() throws -> (EntityState, () -> UInt64) {
        let state = EntityState()
        var version: UInt64 = 0
        let next = {
            version += 1
            return version
        }
        var ignored: Set<Key> = []
        func link(_ entity: Cdp_Model_V1_EntityType, _ key: String, from: UInt64, to: UInt64) throws {
            var change = Cdp_Profile_V1_StateChange()
            change.version = next()
            change.link.entityType = entity
            change.link.key = key
            change.link.fromClusterID = from
            change.link.toClusterID = to
            change.link.present = true
            try state.apply(change, touched: &ignored)
        }
        try link(.person, "p7@sf-1.Salesforce", from: 7, to: 3)
        try link(.opportunity, "o5@sf-1.Salesforce", from: 5, to: 3)
        try link(.opportunityPersonRelation, "r8@sf-1.Salesforce", from: 8, to: 5)
        try link(.campaignMember, "m9@sf-1.Salesforce", from: 9, to: 4)
        return (state, next)
    }

    static func entityChange(
        _ entity: Cdp_Model_V1_EntityType,
        _ cluster: UInt64,
        version: UInt64
    )
        -> Cdp_Profile_V1_StateChange
    {
        var change = Cdp_Profile_V1_StateChange()
        change.version = version
        change.entity.entityType = entity
        change.entity.clusterID = cluster
        change.entity.unified.record.key = "\(entity)-\(cluster)"
        return change
    }

    static func touched(
        by change: (UInt64) -> Cdp_Profile_V1_StateChange,
        asking roots: EntityState.Roots
    ) throws -> Set<Key> {
        let (state, next) = try world()
        state.touchedRoots = roots
        var touched: Set<Key> = []
        try state.apply(change(next()), touched: &touched)
        return touched
    }

    @Test func anOpportunityTouchesItsAccountsAndTheirPersonsAndItsRolesPersonsAsAsked() throws {
        let change: (UInt64) -> Cdp_Profile_V1_StateChange = { Self.entityChange(.opportunity, 5, version: $0) }
        #expect(
            try Self.touched(by: change, asking: [.persons, .accounts])
                == [Key(.account, 3), Key(.person, 7), Key(.person, 8)]
        )
        #expect(try Self.touched(by: change, asking: .persons) == [Key(.person, 7), Key(.person, 8)])
        #expect(try Self.touched(by: change, asking: .accounts) == [Key(.account, 3)])
        #expect(try Self.touched(by: change, asking: []) == [])
    }

    @Test func aPersonOrAnAccountIsTouchedByItsOwnRecordWhateverIsAsked() throws {
        let person: (UInt64) -> Cdp_Profile_V1_StateChange = { Self.entityChange(.person, 7, version: $0) }
        #expect(try Self.touched(by: person, asking: [.persons, .accounts]) == [Key(.person, 7), Key(.account, 3)])
        #expect(try Self.touched(by: person, asking: .persons) == [Key(.person, 7)])
        #expect(try Self.touched(by: person, asking: []) == [Key(.person, 7)])
        let account: (UInt64) -> Cdp_Profile_V1_StateChange = { Self.entityChange(.account, 3, version: $0) }
        #expect(
            try Self.touched(by: account, asking: [.persons, .accounts])
                == [Key(.account, 3), Key(.person, 7), Key(.person, 8)]
        )
        #expect(try Self.touched(by: account, asking: .accounts) == [Key(.account, 3)])
        #expect(try Self.touched(by: account, asking: []) == [Key(.account, 3)])
    }

    @Test func campaignsEventsAndLinksTouchOnlyTheKindsAsked() throws {
        let campaign: (UInt64) -> Cdp_Profile_V1_StateChange = { Self.entityChange(.campaign, 4, version: $0) }
        #expect(try Self.touched(by: campaign, asking: .persons) == [Key(.person, 9)])
        #expect(try Self.touched(by: campaign, asking: .accounts) == [])
        let event: (UInt64) -> Cdp_Profile_V1_StateChange = { version in
            var change = Cdp_Profile_V1_StateChange()
            change.version = version
            change.event.key = "e1@web-1.Web"
            change.event.personClusterID = 7
            change.event.event.eventType = "web.webpagedetails.pageViews"
            return change
        }
        #expect(try Self.touched(by: event, asking: .persons) == [Key(.person, 7)])
        #expect(try Self.touched(by: event, asking: .accounts) == [])
        let role: (UInt64) -> Cdp_Profile_V1_StateChange = { version in
            var change = Cdp_Profile_V1_StateChange()
            change.version = version
            change.link.entityType = .opportunityPersonRelation
            change.link.key = "r7@sf-1.Salesforce"
            change.link.fromClusterID = 7
            change.link.toClusterID = 5
            change.link.present = true
            return change
        }
        #expect(try Self.touched(by: role, asking: [.persons, .accounts]) == [Key(.person, 7), Key(.account, 3)])
        #expect(try Self.touched(by: role, asking: .accounts) == [Key(.account, 3)])
        #expect(try Self.touched(by: role, asking: .persons) == [Key(.person, 7)])
    }
}

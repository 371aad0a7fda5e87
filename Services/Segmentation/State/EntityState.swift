import CDPProto
import Foundation
import SegmentationEvaluation
import SwiftProtobuf

/// The state segments are evaluated on, held in memory and kept up to date by profile's changes:
/// every clustered entity's unified record, the links fragments make between clusters, and every
/// person's events. From it the person and account views are rebuilt exactly as profile builds them
/// (the same accounts through the same three paths, the same opportunities, roles, memberships and
/// events), without asking profile.
///
/// Applying a change answers which persons and accounts it touches: the roots whose views it can
/// change, found from the links before and after it, so that only those are evaluated again.
///
/// Not thread-safe: one owner (the segmentation engine's actor) applies changes and builds views.
public final class EntityState {
    /// How views are built from the state.
    public struct Configuration: Sendable {
        /// How far back a person view's events reach.
        public var eventRetention: Duration
        /// The most events in a person view.
        public var maxEventsPerView: Int

        /// Profile's defaults: 400 days, 5,000 events.
        public init(eventRetention: Duration = .seconds(400 * 86_400), maxEventsPerView: Int = 5000) {
            self.eventRetention = eventRetention
            self.maxEventsPerView = maxEventsPerView
        }
    }

    /// A clustered entity.
    public struct EntityKey: Hashable, Sendable {
        public var entity: Cdp_Model_V1_EntityType
        public var cluster: UInt64

        /// Creates a key.
        public init(_ entity: Cdp_Model_V1_EntityType, _ cluster: UInt64) {
            self.entity = entity
            self.cluster = cluster
        }
    }

    /// A fragment that makes a link.
    public struct LinkKey: Hashable, Sendable {
        public var entity: Cdp_Model_V1_EntityType
        public var key: String

        /// Creates a key.
        public init(_ entity: Cdp_Model_V1_EntityType, _ key: String) {
            self.entity = entity
            self.key = key
        }
    }

    private let configuration: Configuration
    /// Every clustered entity's unified record taken, present or gone.
    private var records = HeldRecords()
    /// Every link taken, present or not, by fragment and by end.
    private var links = LinkTable()
    /// Where each held event is (see ``heldEvent(_:_:)``): the person whose list holds it, by a 64-bit
    /// hash of its name. An index entry is 16 bytes against 40 for a dictionary by name: events are the
    /// most numerous items. A name whose hash another held name has is in ``collidedEvents`` instead.
    private var eventPersons: [UInt64: UInt64] = [:]
    /// The person of each held event whose name's hash another held event's name had first.
    private var collidedEvents: [ItemName: UInt64] = [:]
    /// The version of each event taken that is gone (a later change put it on no person).
    private var goneEvents: [ItemName: UInt64] = [:]
    /// Each person's events, oldest first (see ``insertionIndex(of:in:)``).
    private var personEvents: [UInt64: [HeldEvent]] = [:]
    /// The strings the held events and links repeat.
    private var strings = InternedStrings()
    /// The persons' and accounts' clusters in order, rebuilt when asked for after a change.
    private var sortedRoots: [Cdp_Model_V1_EntityType: [UInt64]] = [:]

    /// An empty state.
    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    /// The entity types profile sends unified records of.
    public static let entityTypes: Set<Cdp_Model_V1_EntityType> = [
        .person, .account, .opportunity, .campaign, .marketingList,
    ]

    /// The fragment types that make links.
    public static let linkTypes: Set<Cdp_Model_V1_EntityType> = [
        .person, .opportunity, .accountPersonRelation, .opportunityPersonRelation, .campaignMember,
        .marketingListMember,
    ]

    // MARK: - Applying changes

    /// What applying a change did.
    public enum Applied: Equatable, Sendable {
        /// The change was newer than what was held and replaced it.
        case applied
        /// The state held a newer (or the same) version of the item: nothing changed.
        case stale
    }

    /// How many applied changes replaced an item the state held before (present or removed): each
    /// superseded the change that had put it there. The store compacts its log by this count.
    public private(set) var supersededChanges = 0

    /// Applies one change, adding the persons and accounts whose views it can change to `touched`.
    ///
    /// - Throws: ``StateChangeError`` for a change that names no item or an entity type that has none.
    @discardableResult
    public func apply(_ change: Cdp_Profile_V1_StateChange, touched: inout Set<EntityKey>) throws -> Applied {
        try Self.check(change)
        switch change.item {
        case .entity(let entity)?:
            let key = EntityKey(entity.entityType, entity.clusterID)
            let old = records[key]
            guard isNewer(change.version, than: old?.version) else { return .stale }
            if old != nil { supersededChanges += 1 }
            // Who shows the entity follows from links alone, which a record change leaves as they are.
            dependents(of: key, into: &touched)
            let unified = entity.hasUnified ? entity.unified : nil
            records[key] = try HeldRecord(
                version: change.version,
                unified: unified,
                encoded: key.entity == .person,
                cluster: key.cluster
            )
            if (old?.isPresent ?? false) != (unified != nil) { rootsChanged(key.entity) }
        case .link(let link)?:
            let name = ItemName(link.key, strings: &strings)
            let slot = links.slot(of: UInt8(truncatingIfNeeded: link.entityType.rawValue), name)
            guard isNewer(change.version, than: slot.map { links[$0].version }) else { return .stale }
            let held = HeldLink(link, name: name, version: change.version, strings: &strings)
            let taken: LinkTable.Slot
            if let slot {
                supersededChanges += 1
                if links[slot].isPresent { unlink(slot, touched: &touched) }
                links.replace(slot, with: held)
                taken = slot
            } else {
                taken = links.insert(held)
            }
            if held.isPresent {
                links.attach(taken)
                dependents(ofLink: link.entityType, from: held.from, to: held.to, into: &touched)
            }
        case .event(let event)?:
            let name = ItemName(event.key, strings: &strings)
            let hash = eventHash(name)
            let held = heldEvent(name, hash)
            let old = held.map { personEvents[$0.person]![$0.index].version } ?? goneEvents[name]
            guard isNewer(change.version, than: old) else { return .stale }
            if old != nil { supersededChanges += 1 }
            if let held {
                removeEvent(at: held.index, of: held.person, name, hash)
                touch(.persons, EntityKey(.person, held.person), &touched)
            } else if old != nil {
                goneEvents[name] = nil
            }
            if event.personClusterID != 0 {
                insertEvent(
                    HeldEvent(name, event.event, version: change.version, strings: &strings),
                    hash,
                    of: event.personClusterID
                )
                touch(.persons, EntityKey(.person, event.personClusterID), &touched)
            } else {
                goneEvents[name] = change.version
            }
        case nil:
            break
        }
        return .applied
    }

    /// Loads saved changes (each the latest of its item, in any order) into an empty state, without
    /// working out what they touch: `read` hands them to the function it is given one by one (from a
    /// cursor, so that they are never all decoded at once).
    public func load(
        _ read: ((Cdp_Profile_V1_StateChange) throws -> Void) throws -> Void
    ) throws {
        collecting = false
        defer { collecting = true }
        var ignored: Set<EntityKey> = []
        try read { change in try apply(change, touched: &ignored) }
    }

    /// Whether `apply` works out what changes touch (not while loading).
    private var collecting = true

    /// Kinds of roots whose views a change can touch.
    public struct Roots: OptionSet, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Persons.
        public static let persons = Roots(rawValue: 1)
        /// Accounts.
        public static let accounts = Roots(rawValue: 2)
    }

    /// The roots `apply` adds to what a change touches through the views that show what it changed:
    /// persons, accounts or both (the default). A person or account whose own record a change replaces
    /// is always touched (a removed one exits its segments). The engine asks only for the roots of an
    /// audience a streaming segment evaluates: without one, finding an account's persons for every
    /// change of the account, its opportunities and their relations is work nobody uses.
    public var touchedRoots: Roots = [.persons, .accounts]

    /// Checks that a change names an item of a type that has one, with ids the store can keep.
    ///
    /// - Throws: ``StateChangeError`` saying what is wrong.
    public static func check(_ change: Cdp_Profile_V1_StateChange) throws {
        // The store keeps ids and versions as SQLite integers (signed 64-bit).
        let limit = UInt64(Int64.max)
        guard change.version <= limit else {
            throw StateChangeError("version \(change.version) is above 2^63 - 1, the largest this service stores")
        }
        switch change.item {
        case .entity(let entity)?:
            guard entityTypes.contains(entity.entityType) else {
                throw StateChangeError(
                    "an entity change is for a PERSON, ACCOUNT, OPPORTUNITY, CAMPAIGN or MARKETING_LIST, not "
                        + "\(entity.entityType)"
                )
            }
            guard entity.clusterID != 0, entity.clusterID <= limit else {
                throw StateChangeError("an entity change has cluster_id \(entity.clusterID): it must be 1 to 2^63 - 1")
            }
        case .link(let link)?:
            guard linkTypes.contains(link.entityType) else {
                throw StateChangeError(
                    "a link change is for a PERSON, OPPORTUNITY, ACCOUNT_PERSON_RELATION, "
                        + "OPPORTUNITY_PERSON_RELATION, CAMPAIGN_MEMBER or MARKETING_LIST_MEMBER fragment, not "
                        + "\(link.entityType)"
                )
            }
            guard !link.key.isEmpty else { throw StateChangeError("a link change has no fragment key") }
            guard link.fromClusterID <= limit, link.toClusterID <= limit else {
                throw StateChangeError(
                    "a link change has a cluster id above 2^63 - 1 (\(link.fromClusterID), \(link.toClusterID))"
                )
            }
        case .event(let event)?:
            guard !event.key.isEmpty else { throw StateChangeError("an event change has no event key") }
            guard event.personClusterID <= limit else {
                throw StateChangeError("an event change has person_cluster_id \(event.personClusterID) above 2^63 - 1")
            }
        case nil:
            throw StateChangeError("a state change carries no entity, link or event")
        }
    }

    private func isNewer(_ version: UInt64, than held: UInt64?) -> Bool { held.map { version > $0 } ?? true }

    /// Takes a present link out of the lists of its two ends, noting whose views it was in.
    private func unlink(_ slot: LinkTable.Slot, touched: inout Set<EntityKey>) {
        let link = links[slot]
        dependents(ofLink: link.entityType, from: link.from, to: link.to, into: &touched)
        links.detach(slot)
    }

    private func rootsChanged(_ entity: Cdp_Model_V1_EntityType) {
        if entity == .person || entity == .account { sortedRoots[entity] = nil }
    }

    private func insertEvent(_ event: HeldEvent, _ hash: UInt64, of person: UInt64) {
        // In place (no copy of the list), and at the end when events come in time order.
        let index = personEvents[person].map { insertionIndex(of: event, in: $0) } ?? 0
        personEvents[person, default: []].insertGrowingByAQuarter(event, at: index)
        if eventPersons[hash] == nil {
            eventPersons[hash] = person
        } else {
            collidedEvents[event.name] = person
        }
    }

    /// Takes a held event out of its person's list and out of the index.
    private func removeEvent(at index: Int, of person: UInt64, _ name: ItemName, _ hash: UInt64) {
        if personEvents[person]?.count == 1 {
            personEvents[person] = nil
        } else {
            personEvents[person]?.remove(at: index)
        }
        if collidedEvents.removeValue(forKey: name) == nil { eventPersons[hash] = nil }
    }

    /// The person and list index of a held event, if it is held.
    private func heldEvent(_ name: ItemName, _ hash: UInt64) -> (person: UInt64, index: Int)? {
        // Rare (a duplicate, an update, or a merge, split or deletion moving it): found by name in
        // the person's list, from the newest.
        func find(in person: UInt64) -> (person: UInt64, index: Int)? {
            personEvents[person]?.lastIndex { $0.name == name }.map { (person, $0) }
        }
        if let person = collidedEvents[name] { return find(in: person) }
        return eventPersons[hash].flatMap(find(in:))
    }

    /// A 64-bit hash of an event's name, for ``eventPersons``.
    private func eventHash(_ name: ItemName) -> UInt64 {
        var hasher = Hasher()
        hasher.combine(name)
        return UInt64(bitPattern: Int64(hasher.finalize())) & eventHashMask
    }

    /// The bits of an event name's hash that ``eventPersons`` uses: all of them, except in tests that
    /// make names collide.
    var eventHashMask: UInt64 = .max

    /// The first index whose event sorts at or after `event`. A person's events are kept oldest first
    /// (time ascending, then key descending), so that views, newest first (time descending, then key
    /// ascending, as profile orders them), read them from the end.
    private func insertionIndex(of event: HeldEvent, in list: [HeldEvent]) -> Int {
        var low = 0
        var high = list.count
        while low < high {
            let middle = (low + high) / 2
            let other = list[middle]
            let before =
                other.milliseconds < event.milliseconds
                || (other.milliseconds == event.milliseconds && other.name.key(strings) > event.name.key(strings))
            if before { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// The index of the first event dated after `milliseconds` (the count if none is).
    private static func firstIndex(after milliseconds: Int64, in list: [HeldEvent]) -> Int {
        var low = 0
        var high = list.count
        while low < high {
            let middle = (low + high) / 2
            if list[middle].milliseconds <= milliseconds { low = middle + 1 } else { high = middle }
        }
        return low
    }

    // MARK: - Who depends on what

    /// The roots whose views show the entity, of ``touchedRoots`` (straight into `touched`: an account's
    /// persons can be thousands, and this runs for every change); the entity itself if it is a root.
    private func dependents(of key: EntityKey, into touched: inout Set<EntityKey>) {
        guard collecting else { return }
        switch key.entity {
        case .person:
            touched.insert(key)
            touchAccounts(ofPerson: key.cluster, &touched)
        case .account:
            touched.insert(key)
            touchPersons(ofAccount: key.cluster, &touched)
        case .opportunity:
            dependents(ofOpportunity: key.cluster, into: &touched)
        case .campaign:
            touchPersons(from: .campaignMember, to: key.cluster, &touched)
        case .marketingList:
            touchPersons(from: .marketingListMember, to: key.cluster, &touched)
        default:
            break
        }
    }

    /// The roots whose views show an opportunity: its accounts, their persons, the persons with a role.
    private func dependents(ofOpportunity cluster: UInt64, into touched: inout Set<EntityKey>) {
        forEachTo(.opportunity, from: cluster) { account in
            touch(.accounts, EntityKey(.account, account), &touched)
            touchPersons(ofAccount: account, &touched)
        }
        touchPersons(from: .opportunityPersonRelation, to: cluster, &touched)
    }

    /// The roots whose views a link of `entity` fragments from `from` to `to` contributes to.
    private func dependents(
        ofLink entity: Cdp_Model_V1_EntityType,
        from: UInt64,
        to: UInt64,
        into touched: inout Set<EntityKey>
    ) {
        guard collecting else { return }
        switch entity {
        case .person, .accountPersonRelation:
            touch(.persons, EntityKey(.person, from), &touched)
            touch(.accounts, EntityKey(.account, to), &touched)
        case .opportunity:
            // The opportunity's accounts are part of its record in every view that shows it.
            dependents(ofOpportunity: from, into: &touched)
            touch(.accounts, EntityKey(.account, to), &touched)
            touchPersons(ofAccount: to, &touched)
        case .opportunityPersonRelation:
            touch(.persons, EntityKey(.person, from), &touched)
            touchAccounts(ofOpportunity: to, &touched)
        case .campaignMember, .marketingListMember:
            touch(.persons, EntityKey(.person, from), &touched)
        default:
            break
        }
    }

    /// Adds `key` to `touched` if its kind of root is among ``touchedRoots``.
    private func touch(_ roots: Roots, _ key: EntityKey, _ touched: inout Set<EntityKey>) {
        if touchedRoots.contains(roots) { touched.insert(key) }
    }

    private func touchAccounts(ofPerson cluster: UInt64, _ touched: inout Set<EntityKey>) {
        guard touchedRoots.contains(.accounts) else { return }
        forEachAccount(ofPerson: cluster) { touched.insert(EntityKey(.account, $0)) }
    }

    private func touchAccounts(ofOpportunity cluster: UInt64, _ touched: inout Set<EntityKey>) {
        guard touchedRoots.contains(.accounts) else { return }
        forEachTo(.opportunity, from: cluster) { touched.insert(EntityKey(.account, $0)) }
    }

    private func touchPersons(ofAccount cluster: UInt64, _ touched: inout Set<EntityKey>) {
        guard touchedRoots.contains(.persons) else { return }
        forEachPerson(ofAccount: cluster) { touched.insert(EntityKey(.person, $0)) }
    }

    private func touchPersons(from entity: Cdp_Model_V1_EntityType, to cluster: UInt64, _ touched: inout Set<EntityKey>)
    {
        guard touchedRoots.contains(.persons) else { return }
        forEachFrom(entity, to: cluster) { touched.insert(EntityKey(.person, $0)) }
    }

    // MARK: - Relations

    /// The to ends of the present links of `entity` fragments from `cluster`.
    private func to(_ entity: Cdp_Model_V1_EntityType, from cluster: UInt64) -> Set<UInt64> {
        var found: Set<UInt64> = []
        forEachTo(entity, from: cluster) { found.insert($0) }
        return found
    }

    /// The from ends of the present links of `entity` fragments to `cluster`.
    private func from(_ entity: Cdp_Model_V1_EntityType, to cluster: UInt64) -> Set<UInt64> {
        var found: Set<UInt64> = []
        forEachFrom(entity, to: cluster) { found.insert($0) }
        return found
    }

    /// Calls `body` with the to end of each present link of `entity` fragments from `cluster` (an end
    /// as many times as links lead to it).
    private func forEachTo(_ entity: Cdp_Model_V1_EntityType, from cluster: UInt64, _ body: (UInt64) -> Void) {
        let type = UInt8(truncatingIfNeeded: entity.rawValue)
        links.forEach(from: LinkTable.From(type), cluster) { slot in
            let link = links[slot]
            if link.entity == type { body(link.to) }
        }
    }

    /// Calls `body` with the from end of each present link of `entity` fragments to `cluster` (an end
    /// as many times as links lead from it).
    private func forEachFrom(_ entity: Cdp_Model_V1_EntityType, to cluster: UInt64, _ body: (UInt64) -> Void) {
        let type = UInt8(truncatingIfNeeded: entity.rawValue)
        links.forEach(to: type, cluster) { slot in body(links[slot].from) }
    }

    /// Calls `body` with each of the person's accounts (as ``accounts(ofPerson:)`` finds them), unsorted
    /// and perhaps more than once.
    private func forEachAccount(ofPerson cluster: UInt64, _ body: (UInt64) -> Void) {
        forEachTo(.person, from: cluster, body)
        forEachTo(.accountPersonRelation, from: cluster, body)
        forEachTo(.opportunityPersonRelation, from: cluster) { forEachTo(.opportunity, from: $0, body) }
    }

    /// Calls `body` with each of the account's persons (as ``persons(ofAccount:)`` finds them), unsorted
    /// and perhaps more than once.
    private func forEachPerson(ofAccount cluster: UInt64, _ body: (UInt64) -> Void) {
        forEachFrom(.person, to: cluster, body)
        forEachFrom(.accountPersonRelation, to: cluster, body)
        forEachFrom(.opportunity, to: cluster) { forEachFrom(.opportunityPersonRelation, to: $0, body) }
    }

    /// The person's links of `entity` fragments, in key order.
    private func links(
        _ entity: Cdp_Model_V1_EntityType,
        ofPerson cluster: UInt64
    ) -> [HeldLink] {
        let type = UInt8(truncatingIfNeeded: entity.rawValue)
        var found: [HeldLink] = []
        links.forEach(from: .person, cluster) { slot in
            let link = links[slot]
            if link.entity == type { found.append(link) }
        }
        guard found.count > 1 else { return found }
        // Each key built once, not once per comparison.
        return found.map { (key: $0.name.key(strings), link: $0) }.sorted { $0.key < $1.key }.map(\.link)
    }

    /// The person's accounts: through person records, account-person relations and opportunity-person
    /// relations (the opportunity's accounts). Ascending.
    public func accounts(ofPerson cluster: UInt64) -> [UInt64] {
        var accounts: Set<UInt64> = []
        forEachAccount(ofPerson: cluster) { accounts.insert($0) }
        return accounts.sorted()
    }

    /// The account's persons, through the same three paths. Ascending.
    public func persons(ofAccount cluster: UInt64) -> [UInt64] {
        var persons: Set<UInt64> = []
        forEachPerson(ofAccount: cluster) { persons.insert($0) }
        return persons.sorted()
    }

    // MARK: - Views

    /// The unified record of an entity, if it has one.
    public func record(_ entity: Cdp_Model_V1_EntityType, _ cluster: UInt64) -> Cdp_Profile_V1_UnifiedRecord? {
        unified(EntityKey(entity, cluster))
    }

    /// Whether an entity has a unified record.
    public func hasRecord(_ entity: Cdp_Model_V1_EntityType, _ cluster: UInt64) -> Bool {
        records[EntityKey(entity, cluster)]?.isPresent ?? false
    }

    private func unified(_ key: EntityKey) -> Cdp_Profile_V1_UnifiedRecord? {
        records[key]?.unified(cluster: key.cluster)
    }

    /// Whether a commit evaluated the entity's unified record as it is (see ``markRecordSaved(_:)``);
    /// false once a change replaced it.
    public func isRecordSaved(_ key: EntityKey) -> Bool { records[key]?.saved ?? false }

    /// Notes that a commit evaluated the entity's unified record as it is (and saved it where the
    /// store keeps records).
    public func markRecordSaved(_ key: EntityKey) { records.markSaved(key) }

    /// The view of a person or an account as of `asOf`; nil if it has no unified record.
    public func view(_ key: EntityKey, asOf: Date) -> EntityView? {
        switch key.entity {
        case .person: personView(key.cluster, asOf: asOf).map(EntityView.person)
        case .account: accountView(key.cluster).map(EntityView.account)
        default: nil
        }
    }

    /// An opportunity with the accounts it belongs to.
    private func opportunity(_ cluster: UInt64) -> Cdp_Profile_V1_UnifiedRecord? {
        guard var opportunity = unified(EntityKey(.opportunity, cluster)) else { return nil }
        opportunity.accountClusterIds = to(.opportunity, from: cluster).sorted()
        return opportunity
    }

    /// The person's view as profile builds it.
    public func personView(_ cluster: UInt64, asOf: Date) -> Cdp_Profile_V1_PersonView? {
        guard let person = unified(EntityKey(.person, cluster)) else { return nil }
        var view = Cdp_Profile_V1_PersonView()
        view.person = person
        view.asOf = Google_Protobuf_Timestamp(date: asOf)
        let accountClusters = accounts(ofPerson: cluster)
        view.accounts = accountClusters.compactMap { unified(EntityKey(.account, $0)) }
        let roles = links(.opportunityPersonRelation, ofPerson: cluster)
        var opportunityClusters = Set(roles.map(\.to))
        for account in accountClusters { opportunityClusters.formUnion(from(.opportunity, to: account)) }
        view.opportunities = opportunityClusters.sorted().compactMap(opportunity)
        view.opportunityRoles = roles.map { link in
            var role = Cdp_Profile_V1_OpportunityRole()
            role.opportunityClusterID = link.to
            if link.role != 0 { role.role = strings.string(link.role) }
            if link.flags.contains(.hasIsPrimary) { role.isPrimary = link.flags.contains(.isPrimary) }
            return role
        }
        view.campaigns = links(.campaignMember, ofPerson: cluster).compactMap { link in
            guard let campaign = unified(EntityKey(.campaign, link.to)) else { return nil }
            var membership = Cdp_Profile_V1_CampaignMembership()
            membership.campaign = campaign
            if link.status != 0 { membership.status = strings.string(link.status) }
            if link.flags.contains(.hasHasResponded) {
                membership.hasResponded_p = link.flags.contains(.hasResponded)
            }
            return membership
        }
        view.lists = links(.marketingListMember, ofPerson: cluster).compactMap { link in
            guard let list = unified(EntityKey(.marketingList, link.to)) else { return nil }
            var membership = Cdp_Profile_V1_ListMembership()
            membership.list = list
            return membership
        }
        view.events = events(ofPerson: cluster, asOf: asOf)
        return view
    }

    /// The person's events in the retention window before `asOf`, newest first, at most the most a
    /// view holds.
    private func events(ofPerson cluster: UInt64, asOf: Date) -> [Cdp_Profile_V1_Event] {
        guard let list = personEvents[cluster] else { return [] }
        let to = Self.milliseconds(asOf)
        let from = Self.milliseconds(
            asOf.addingTimeInterval(-Double(configuration.eventRetention.components.seconds))
        )
        // From the newest at or before `asOf` back, while within the window.
        var index = Self.firstIndex(after: to, in: list) - 1
        var taken: [Cdp_Profile_V1_Event] = []
        while index >= 0 && list[index].milliseconds >= from && taken.count < configuration.maxEventsPerView {
            taken.append(list[index].message(strings))
            index -= 1
        }
        return taken
    }

    /// When the first of the person's events dated after `asOf` comes within a view's reach (views
    /// hold no events after their time), if the person has one.
    public func nextEventTime(ofPerson cluster: UInt64, after asOf: Date) -> Date? {
        guard let list = personEvents[cluster] else { return nil }
        let index = Self.firstIndex(after: Self.milliseconds(asOf), in: list)
        guard index < list.count else { return nil }
        return Date(timeIntervalSince1970: Double(list[index].milliseconds) / 1000)
    }

    /// The account's view as profile builds it.
    public func accountView(_ cluster: UInt64) -> Cdp_Profile_V1_AccountView? {
        guard let account = unified(EntityKey(.account, cluster)) else { return nil }
        var view = Cdp_Profile_V1_AccountView()
        view.account = account
        view.opportunities = from(.opportunity, to: cluster).sorted().compactMap(opportunity)
        view.persons = persons(ofAccount: cluster).compactMap { unified(EntityKey(.person, $0)) }
        view.totals = Cdp_Profile_V1_AccountTotals(opportunities: view.opportunities, persons: view.persons.count)
        return view
    }

    // MARK: - Listing

    /// How many persons or accounts have a unified record.
    public func count(of entity: Cdp_Model_V1_EntityType) -> Int { roots(entity).count }

    /// The clusters of persons or accounts (`entity`) with a unified record in one partition (cluster
    /// modulo `partitions`), above `after`, ascending, at most `limit`.
    public func clusters(
        of entity: Cdp_Model_V1_EntityType,
        partition: Int,
        partitions: Int,
        after: UInt64,
        limit: Int
    ) -> [UInt64] {
        let all = roots(entity)
        var low = 0
        var high = all.count
        while low < high {
            let middle = (low + high) / 2
            if all[middle] <= after { low = middle + 1 } else { high = middle }
        }
        var found: [UInt64] = []
        let partitions = UInt64(max(partitions, 1))
        while low < all.count && found.count < limit {
            if all[low] % partitions == UInt64(partitions > 1 ? partition : 0) { found.append(all[low]) }
            low += 1
        }
        return found
    }

    private func roots(_ entity: Cdp_Model_V1_EntityType) -> [UInt64] {
        if let known = sortedRoots[entity] { return known }
        let found = records.presentClusters(of: entity).sorted()
        sortedRoots[entity] = found
        return found
    }

    // MARK: - Erasure

    /// What of an erased person the state holds: its record, the links from it, its events.
    public struct PersonItems: Sendable, Equatable {
        public var links: [LinkKey] = []
        public var events: [String] = []
    }

    /// Forgets a person: its record, the links from it and its events (without versions: nothing of
    /// the person is taken again). Returns what was dropped, for the store to delete.
    public func forget(person cluster: UInt64, touched: inout Set<EntityKey>) -> PersonItems {
        var dropped = PersonItems()
        dependents(of: EntityKey(.person, cluster), into: &touched)
        if records.removeValue(forKey: EntityKey(.person, cluster))?.isPresent ?? false { rootsChanged(.person) }
        var slots: [LinkTable.Slot] = []
        links.forEach(from: .person, cluster) { slots.append($0) }
        for slot in slots {
            unlink(slot, touched: &touched)
            let link = links[slot]
            dropped.links.append(LinkKey(link.entityType, link.name.key(strings)))
            links.remove(slot)
        }
        for event in personEvents.removeValue(forKey: cluster) ?? [] {
            if collidedEvents.removeValue(forKey: event.name) == nil { eventPersons[eventHash(event.name)] = nil }
            dropped.events.append(event.name.key(strings))
        }
        touched.remove(EntityKey(.person, cluster))
        return dropped
    }

    // MARK: - Helpers

    static func milliseconds(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }

    static func milliseconds(_ timestamp: Google_Protobuf_Timestamp) -> Int64 { milliseconds(timestamp.date) }
}

extension Array {
    /// Inserts `element`, growing a full array by a quarter of its count (at least 2) instead of
    /// doubling it. Events are held in one array per person, most of them of a few dozen events: grown
    /// by doubling, a third of their memory was free capacity on average.
    mutating func insertGrowingByAQuarter(_ element: Element, at index: Int) {
        if count == capacity { reserveCapacity(count + Swift.max(2, count / 4)) }
        insert(element, at: index)
    }
}

/// A state change that cannot be applied (it names nothing, or an item of the wrong type).
public struct StateChangeError: Error, CustomStringConvertible, Sendable {
    public var description: String

    init(_ description: String) { self.description = description }
}

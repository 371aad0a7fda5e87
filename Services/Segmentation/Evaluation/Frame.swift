import CDPProto
import SegmentationLanguage

/// The state of evaluating segments on one view: the view's collections, the variable slots, the
/// evaluation time, and what evaluation learns on the way (when the result can next change with
/// time, the explanation). One frame is reused view after view; it is not shared between threads.
///
/// Loading a view takes each entity's typed record out of its message once (a protobuf oneof hands
/// out copies), so that the twenty segments evaluated on the view read fields in place.
public final class Frame {
    /// The audience of the loaded view.
    public private(set) var audience: Audience = .person
    /// The root entity: the person or the account.
    var root: Element = .none
    var persons: [Cdp_Profile_V1_UnifiedRecord] = []
    var personData: [Cdp_Model_V1_Person] = []
    var accounts: [Cdp_Profile_V1_UnifiedRecord] = []
    var accountData: [Cdp_Model_V1_Account] = []
    var opportunities: [Cdp_Profile_V1_UnifiedRecord] = []
    var opportunityData: [Cdp_Model_V1_Opportunity] = []
    /// For each opportunity, the account clusters it belongs to.
    var opportunityAccounts: [[UInt64]] = []
    var opportunityRoles: [Cdp_Profile_V1_OpportunityRole] = []
    var campaigns: [Cdp_Profile_V1_CampaignMembership] = []
    var campaignData: [Cdp_Model_V1_Campaign] = []
    var lists: [Cdp_Profile_V1_ListMembership] = []
    var listData: [Cdp_Model_V1_MarketingList] = []
    var events: [Cdp_Profile_V1_Event] = []
    var eventData: [Cdp_Model_V1_ExperienceEvent] = []
    /// Variables bound by exists, forall, over and filters.
    var slots: [Element] = []
    /// The evaluation time, seconds since 1970.
    public var asOf: Double = 0
    /// The earliest time after `asOf` at which a time condition evaluated so far changes its value.
    var nextChange: Double = .infinity
    /// The segments the view's entity is in, for `inSegment`: those evaluated before on this view,
    /// and the stored memberships of the others.
    public var memberships: Set<String> = []
    /// Collected while explaining.
    var steps: [ExplanationStep] = []

    /// Creates an empty frame.
    public init() {}

    /// The cluster of the loaded view's entity.
    public var clusterID: UInt64 { cluster(of: root) }

    /// Loads a view to evaluate as of `asOf` (seconds since 1970).
    public func load(_ view: EntityView, asOf: Double) {
        switch view {
        case .person(let person): load(person: person, asOf: asOf)
        case .account(let account): load(account: account, asOf: asOf)
        }
    }

    /// Loads a person view to evaluate as of `asOf` (seconds since 1970).
    public func load(person view: Cdp_Profile_V1_PersonView, asOf: Double) {
        clear()
        audience = .person
        persons.append(view.person)
        root = .person(0)
        accounts = view.accounts
        opportunities = view.opportunities
        opportunityRoles = view.opportunityRoles
        campaigns = view.campaigns
        lists = view.lists
        events = view.events
        self.asOf = asOf
    }

    /// Loads an account view to evaluate as of `asOf`.
    public func load(account view: Cdp_Profile_V1_AccountView, asOf: Double) {
        clear()
        audience = .account
        accounts.append(view.account)
        root = .account(0)
        opportunities = view.opportunities
        persons = view.persons
        self.asOf = asOf
    }

    private func clear() {
        extracted = 0
        windowStarts.removeAll(keepingCapacity: true)
        // Kept allocated for the next view's root.
        persons.removeAll(keepingCapacity: true)
        accounts.removeAll(keepingCapacity: true)
        opportunities = []
        opportunityRoles = []
        campaigns = []
        lists = []
        events = []
        memberships = []
    }

    /// The collections whose typed records were taken out of their messages for this view.
    private var extracted: UInt16 = 0

    /// Takes the typed records of a collection out of their messages, once per view, before its
    /// fields are read: a protobuf oneof or message field hands out a copy on every access.
    @inline(__always)
    func extract(_ kind: EntityKind) {
        if extracted & Self.bit(kind) == 0 { extractOnce(kind) }
    }

    @inline(__always)
    private static func bit(_ kind: EntityKind) -> UInt16 {
        switch kind {
        case .person: 1
        case .account: 2
        case .opportunity: 4
        case .opportunityRole: 8
        case .campaignMembership, .campaign: 16
        case .listMembership: 32
        case .event: 64
        }
    }

    private func extractOnce(_ kind: EntityKind) {
        extracted |= Self.bit(kind)
        switch kind {
        case .person:
            personData.removeAll(keepingCapacity: true)
            for index in persons.indices { personData.append(persons[index].record.person) }
        case .account:
            accountData.removeAll(keepingCapacity: true)
            for index in accounts.indices { accountData.append(accounts[index].record.account) }
        case .opportunity:
            opportunityData.removeAll(keepingCapacity: true)
            opportunityAccounts.removeAll(keepingCapacity: true)
            for index in opportunities.indices {
                opportunityData.append(opportunities[index].record.opportunity)
                opportunityAccounts.append(opportunities[index].accountClusterIds)
            }
        case .campaignMembership, .campaign:
            campaignData.removeAll(keepingCapacity: true)
            for index in campaigns.indices { campaignData.append(campaigns[index].campaign.record.campaign) }
        case .listMembership:
            listData.removeAll(keepingCapacity: true)
            for index in lists.indices { listData.append(lists[index].list.record.marketingList) }
        case .event:
            eventData.removeAll(keepingCapacity: true)
            for index in events.indices { eventData.append(events[index].event) }
        case .opportunityRole:
            break
        }
    }

    /// The start of "the last N units before asOf" per (N, unit), computed once per view.
    private var windowStarts: [(count: Int, unit: TimeUnit, start: Double)] = []

    /// `asOf` moved back `count` calendar units.
    func windowStart(_ count: Int, _ unit: TimeUnit) -> Double {
        for entry in windowStarts where entry.count == count && entry.unit == unit { return entry.start }
        let start = CivilTime.adding(-count, unit, to: asOf)
        windowStarts.append((count, unit, start))
        return start
    }

    /// The cluster of an element, or 0.
    func cluster(of element: Element) -> UInt64 {
        switch element {
        case .person(let index): persons[index].clusterID
        case .account(let index): accounts[index].clusterID
        case .opportunity(let index): opportunities[index].clusterID
        case .opportunityRole(let index): opportunityRoles[index].opportunityClusterID
        case .campaignMembership(let index), .campaign(let index): campaigns[index].campaign.clusterID
        case .listMembership(let index): lists[index].list.clusterID
        case .event, .none: 0
        }
    }

    /// The view's opportunity of a cluster, or `.none`.
    func opportunity(cluster: UInt64) -> Element {
        for index in opportunities.indices where opportunities[index].clusterID == cluster {
            return .opportunity(index)
        }
        return .none
    }

    /// Notes that a time condition's value changes at `time`.
    @inline(__always)
    func changes(at time: Double) {
        if time > asOf && time < nextChange { nextChange = time }
    }
}

/// A person view or an account view.
public enum EntityView: Sendable {
    case person(Cdp_Profile_V1_PersonView)
    case account(Cdp_Profile_V1_AccountView)

    /// PERSON or ACCOUNT.
    public var entityType: Cdp_Model_V1_EntityType {
        switch self {
        case .person: .person
        case .account: .account
        }
    }

    /// The entity's cluster.
    public var cluster: UInt64 {
        switch self {
        case .person(let view): view.person.clusterID
        case .account(let view): view.account.clusterID
        }
    }

    /// The entity's unified record.
    public var record: Cdp_Profile_V1_UnifiedRecord {
        switch self {
        case .person(let view): view.person
        case .account(let view): view.account
        }
    }

    /// The audience it serves.
    public var audience: Audience {
        switch self {
        case .person: .person
        case .account: .account
        }
    }
}

/// The result of evaluating a segment on a view.
public struct Outcome: Equatable, Sendable {
    /// Whether the view's entity satisfies the definition.
    public var matched: Bool
    /// When the result can next change with the passing of time alone (seconds since 1970); nil if
    /// only a new view can change it.
    public var validUntil: Double?
}

/// A part of a definition that decided a result.
public struct ExplanationStep: Equatable, Sendable {
    /// The part, in PQL.
    public var text: String
    /// Where it is in the definition.
    public var position: SourcePosition
    /// Its value.
    public var result: String
    /// The entities that made the value.
    public var entities: [ExplainedEntity]
}

/// An entity named by an explanation.
public struct ExplainedEntity: Equatable, Sendable {
    /// Its kind.
    public var kind: EntityKind
    /// Its cluster, or 0.
    public var clusterID: UInt64
    /// Its record key.
    public var key: String
    /// A readable label.
    public var label: String
    /// The value it contributed, if any.
    public var value: String?

    init(_ element: Element, in frame: Frame, value: Value? = nil) {
        self.value = value?.text
        for kind in EntityKind.allCases { frame.extract(kind) }
        clusterID = frame.cluster(of: element)
        switch element {
        case .person(let index):
            frame.extract(.person)
            kind = .person
            key = frame.persons[index].record.key
            label = frame.personData[index].email
        case .account(let index):
            kind = .account
            key = frame.accounts[index].record.key
            label = frame.accountData[index].name
        case .opportunity(let index):
            kind = .opportunity
            key = frame.opportunities[index].record.key
            let opportunity = frame.opportunityData[index]
            label = opportunity.hasName ? opportunity.name : opportunity.opportunityID
        case .opportunityRole(let index):
            kind = .opportunityRole
            key = ""
            label = frame.opportunityRoles[index].role
        case .campaignMembership(let index):
            kind = .campaignMembership
            key = frame.campaigns[index].campaign.record.key
            label = frame.campaignData[index].name
        case .campaign(let index):
            kind = .campaign
            key = frame.campaigns[index].campaign.record.key
            label = frame.campaignData[index].name
        case .listMembership(let index):
            kind = .listMembership
            key = frame.lists[index].list.record.key
            label = frame.listData[index].name
        case .event(let index):
            kind = .event
            key = frame.events[index].key
            let event = frame.eventData[index]
            label = [
                event.eventType, event.url,
                event.hasTimestamp ? Value.format(time: event.timestamp.secondsSince1970) : "",
            ].filter { !$0.isEmpty }.joined(separator: " ")
        case .none:
            kind = .opportunity
            key = ""
            label = "(none)"
        }
    }
}

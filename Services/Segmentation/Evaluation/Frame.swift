import CDPProto
import SegmentationLanguage

/// The state of evaluating segments on one view: the view's collections, the variable slots, the
/// evaluation time, and what evaluation learns on the way (when the result can next change with
/// time, the explanation). One frame is reused view after view; it is not shared between threads.
public final class Frame {
    /// The audience of the loaded view.
    public private(set) var audience: Audience = .person
    /// The root entity: the person or the account.
    var root: Element = .none
    var accounts: [Cdp_Profile_V1_UnifiedRecord] = []
    var opportunities: [Cdp_Profile_V1_UnifiedRecord] = []
    var opportunityRoles: [Cdp_Profile_V1_OpportunityRole] = []
    var campaigns: [Cdp_Profile_V1_CampaignMembership] = []
    var lists: [Cdp_Profile_V1_ListMembership] = []
    var events: [Cdp_Profile_V1_Event] = []
    var persons: [Cdp_Profile_V1_UnifiedRecord] = []
    /// Variables bound by exists, forall, over and filters.
    var slots: [Element] = []
    /// The evaluation time, seconds since 1970.
    public var asOf: Double = 0
    /// The earliest time after `asOf` at which a time condition evaluated so far changes its value.
    var nextChange: Double = .infinity
    /// The membership of the view's entity in another segment, for `inSegment`.
    public var inSegment: (String) -> Bool = { _ in false }
    /// Collected while explaining.
    var steps: [ExplanationStep] = []

    /// Creates an empty frame.
    public init() {}

    /// The cluster of the loaded view's entity.
    public var clusterID: UInt64 { root.clusterID }

    /// Loads a person view to evaluate as of `asOf` (seconds since 1970).
    public func load(person view: Cdp_Profile_V1_PersonView, asOf: Double) {
        audience = .person
        root = .person(view.person)
        accounts = view.accounts
        opportunities = view.opportunities
        opportunityRoles = view.opportunityRoles
        campaigns = view.campaigns
        lists = view.lists
        events = view.events
        persons = []
        self.asOf = asOf
    }

    /// Loads an account view to evaluate as of `asOf`.
    public func load(account view: Cdp_Profile_V1_AccountView, asOf: Double) {
        audience = .account
        root = .account(view.account)
        accounts = []
        opportunities = view.opportunities
        opportunityRoles = []
        campaigns = []
        lists = []
        events = []
        persons = view.persons
        self.asOf = asOf
    }

    /// The view's opportunity of a cluster, or `.none`.
    func opportunity(cluster: UInt64) -> Element {
        for opportunity in opportunities where opportunity.clusterID == cluster { return .opportunity(opportunity) }
        return .none
    }

    /// Notes that a time condition's value changes at `time`.
    @inline(__always)
    func changes(at time: Double) {
        if time > asOf && time < nextChange { nextChange = time }
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

    init(_ element: Element, value: Value? = nil) {
        self.value = value?.text
        clusterID = element.clusterID
        switch element {
        case .person(let record):
            kind = .person
            key = record.record.key
            label = record.record.person.email
        case .account(let record):
            kind = .account
            key = record.record.key
            label = record.record.account.name
        case .opportunity(let record):
            kind = .opportunity
            key = record.record.key
            let opportunity = record.record.opportunity
            label = opportunity.hasName ? opportunity.name : opportunity.opportunityID
        case .opportunityRole(let role):
            kind = .opportunityRole
            key = ""
            label = role.role
        case .campaignMembership(let membership):
            kind = .campaignMembership
            key = membership.campaign.record.key
            label = membership.campaign.record.campaign.name
        case .campaign(let record):
            kind = .campaign
            key = record.record.key
            label = record.record.campaign.name
        case .listMembership(let membership):
            kind = .listMembership
            key = membership.list.record.key
            label = membership.list.record.marketingList.name
        case .event(let event):
            kind = .event
            key = event.key
            label = [
                event.event.eventType, event.event.url,
                event.event.hasTimestamp ? Value.format(time: event.event.timestamp.secondsSince1970) : "",
            ].filter { !$0.isEmpty }.joined(separator: " ")
        case .none:
            kind = .opportunity
            key = ""
            label = "(none)"
        }
    }
}

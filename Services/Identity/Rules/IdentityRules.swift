import CDPProto
import Foundation
import IdentityGraph

/// The identity graphs: one per keyed entity type (persons and accounts merge across sources; the
/// others are keyed by their source key and referenced).
public enum EntityGraph: String, CaseIterable, Sendable {
    /// Persons: merged by email, CRM id, ecid and MDM links.
    case person
    /// Accounts: merged by D-U-N-S number, CRM id and MDM links.
    case account
    /// Opportunities: merged by CRM id.
    case opportunity
    /// The other keyed entities, one cluster per source key.
    case accountPersonRelation, opportunityPersonRelation, campaign, campaignMember, marketingList
    /// Keyed by source key, like the cases above.
    case marketingListMember, event

    /// Whether records of this type are linked into clusters. Relations, members and events are not:
    /// nothing merges them, their source key is their identity, and keeping millions of events as
    /// lone nodes would only cost memory. Their references are resolved all the same.
    public var isClustered: Bool {
        switch self {
        case .person, .account, .opportunity, .campaign, .marketingList: true
        case .accountPersonRelation, .opportunityPersonRelation, .campaignMember, .marketingListMember, .event: false
        }
    }

    /// The graphs that hold clusters.
    public static let clustered: [EntityGraph] = allCases.filter(\.isClustered)

    /// The entity type of the records it holds, as the API names it.
    public var entityType: Cdp_Model_V1_EntityType {
        switch self {
        case .person: .person
        case .account: .account
        case .opportunity: .opportunity
        case .accountPersonRelation: .accountPersonRelation
        case .opportunityPersonRelation: .opportunityPersonRelation
        case .campaign: .campaign
        case .campaignMember: .campaignMember
        case .marketingList: .marketingList
        case .marketingListMember: .marketingListMember
        case .event: .event
        }
    }

    /// The graph of an entity type as the API names it; nil for none (unspecified, identity links).
    public init?(_ entityType: Cdp_Model_V1_EntityType) {
        guard let graph = Self.allCases.first(where: { $0.entityType == entityType }) else { return nil }
        self = graph
    }
}

/// The identity namespaces (ARCHITECTURE.md §4).
public enum Namespace {
    /// A record's source key, `{id}@{instance}.{type}`: its primary identity.
    public static let sourceKey = "sourceKey"
    /// An email address, trimmed and lowercased.
    public static let email = "email"
    /// A CRM id (e.g. a Salesforce Contact, Account or Opportunity id), shared across sources.
    public static let crmID = "crmId"
    /// An Experience Cloud id (a web visitor).
    public static let ecid = "ecid"
    /// A D-U-N-S number of an account.
    public static let dunsNumber = "dunsNumber"
    /// A master id from the MDM crosswalk.
    public static let mdm = "mdm"

    /// A value someone typed, as identities are stored: an email trimmed and lowercased (as ingestion
    /// stores it), any other value as given.
    public static func normalized(_ value: String, in namespace: String) -> String {
        namespace == email ? value.trimmingCharacters(in: .whitespacesAndNewlines).lowercased() : value
    }
}

/// Another entity a record names, to be resolved to its cluster in `graph`.
public struct Reference: Equatable, Sendable {
    /// What the reference is for, e.g. `account` on a person, `person` on an event.
    public var role: String
    /// The graph the referenced entity lives in.
    public var graph: EntityGraph
    /// The identities that name it, the most specific first.
    public var identities: [Identity]

    /// Creates a reference.
    public init(role: String, graph: EntityGraph, identities: [Identity]) {
        self.role = role
        self.graph = graph
        self.identities = identities
    }
}

/// What the identity service does with one source record: link `identities` (the first is the
/// record's primary one) as the record `recordKey` in `graph`, and resolve `references`.
public struct IdentityPlan: Equatable, Sendable {
    /// The graph the record is linked in.
    public var graph: EntityGraph
    /// The record's key, as ingestion stored it.
    public var recordKey: String
    /// The identities the record links, primary first (for a tombstone, those it would link: nothing is
    /// linked, but the first names the cluster the deleted record was in).
    public var identities: [Identity]
    /// The entities the record names.
    public var references: [Reference]
    /// The record is a tombstone: its links are removed.
    public var isDeletion: Bool
}

/// Which identities each kind of record contributes and which entities it names.
public enum IdentityRules {
    /// The plan for `record`; nil for a record without an entity.
    public static func plan(for record: Cdp_Model_V1_Record) -> IdentityPlan? {
        let key = Identity(Namespace.sourceKey, record.key)
        var plan: IdentityPlan
        switch record.entity {
        case .person(let person)?:
            plan = IdentityPlan(
                graph: .person,
                recordKey: record.key,
                identities: [key],
                references: [],
                isDeletion: false
            )
            if person.hasEmail { plan.identities.append(Identity(Namespace.email, person.email)) }
            if person.hasCrmID { plan.identities.append(Identity(Namespace.crmID, person.crmID)) }
            if person.hasEcid { plan.identities.append(Identity(Namespace.ecid, person.ecid)) }
            if person.hasAccountKey { plan.references.append(reference("account", .account, person.accountKey)) }
        case .account(let account)?:
            plan = IdentityPlan(
                graph: .account,
                recordKey: record.key,
                identities: [key],
                references: [],
                isDeletion: false
            )
            if account.hasDunsNumber { plan.identities.append(Identity(Namespace.dunsNumber, account.dunsNumber)) }
            if account.hasCrmID { plan.identities.append(Identity(Namespace.crmID, account.crmID)) }
            if account.hasParentAccountKey {
                plan.references.append(reference("parentAccount", .account, account.parentAccountKey))
            }
        case .opportunity(let opportunity)?:
            plan = IdentityPlan(
                graph: .opportunity,
                recordKey: record.key,
                identities: [key],
                references: [],
                isDeletion: false
            )
            if opportunity.hasCrmID { plan.identities.append(Identity(Namespace.crmID, opportunity.crmID)) }
            if opportunity.hasAccountKey {
                plan.references.append(reference("account", .account, opportunity.accountKey))
            }
        case .accountPersonRelation(let relation)?:
            plan = keyed(
                .accountPersonRelation,
                record.key,
                [
                    reference("account", .account, relation.accountKey),
                    reference("person", .person, relation.personKey),
                ]
            )
        case .opportunityPersonRelation(let relation)?:
            plan = keyed(
                .opportunityPersonRelation,
                record.key,
                [
                    reference("opportunity", .opportunity, relation.opportunityKey),
                    reference("person", .person, relation.personKey),
                ]
            )
        case .campaign?:
            plan = keyed(.campaign, record.key, [])
        case .campaignMember(let member)?:
            plan = keyed(
                .campaignMember,
                record.key,
                [
                    reference("campaign", .campaign, member.campaignKey),
                    reference("person", .person, member.personKey),
                ]
            )
        case .marketingList?:
            plan = keyed(.marketingList, record.key, [])
        case .marketingListMember(let member)?:
            plan = keyed(
                .marketingListMember,
                record.key,
                [
                    reference("list", .marketingList, member.listKey), reference("person", .person, member.personKey),
                ]
            )
        case .event(let event)?:
            // The event's person by whatever it names, most specific first.
            var person: [Identity] = []
            if event.hasPersonKey { person.append(Identity(Namespace.sourceKey, event.personKey)) }
            if event.hasEmail { person.append(Identity(Namespace.email, event.email)) }
            if event.hasEcid { person.append(Identity(Namespace.ecid, event.ecid)) }
            plan = keyed(.event, record.key, [Reference(role: "person", graph: .person, identities: person)])
        case .identityLink(let link)?:
            // A crosswalk row links the source record to its master id, in the person or account graph.
            let graph: EntityGraph = link.entityType == .person ? .person : .account
            plan = IdentityPlan(
                graph: graph,
                recordKey: record.key,
                identities: [Identity(Namespace.sourceKey, link.linkedKey), Identity(Namespace.mdm, link.masterID)],
                references: [],
                isDeletion: false
            )
        case nil:
            return nil
        }
        if record.isDeleted { plan.isDeletion = true }
        return plan
    }

    private static func keyed(_ graph: EntityGraph, _ key: String, _ references: [Reference]) -> IdentityPlan {
        IdentityPlan(
            graph: graph,
            recordKey: key,
            identities: [Identity(Namespace.sourceKey, key)],
            references: references,
            isDeletion: false
        )
    }

    private static func reference(_ role: String, _ graph: EntityGraph, _ key: String) -> Reference {
        Reference(role: role, graph: graph, identities: [Identity(Namespace.sourceKey, key)])
    }
}

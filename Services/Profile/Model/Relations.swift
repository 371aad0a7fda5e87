import CDPProto
import Foundation

/// The entity type of a record, as the API names it; nil for a record without an entity.
public func entityType(of record: Cdp_Model_V1_Record) -> Cdp_Model_V1_EntityType? {
    record.entity == nil ? nil : record.entityType
}

/// The roles identity gives the references of each kind of record (see IdentityRules).
public enum Role {
    /// A person's or opportunity's account; one side of an account-person relation.
    public static let account = "account"
    /// The person side of a relation or membership, the person of an event.
    public static let person = "person"
    /// The opportunity side of an opportunity-person relation.
    public static let opportunity = "opportunity"
    /// The campaign of a campaign member.
    public static let campaign = "campaign"
    /// The list of a marketing-list member.
    public static let list = "list"
}

/// The entity types whose fragments carry a cluster of their own (identity clusters them).
public let clusteredEntityTypes: Set<Cdp_Model_V1_EntityType> = [
    .person, .account, .opportunity, .campaign, .marketingList,
]

extension Cdp_Model_V1_Record {
    /// The type of the entity the record holds, as the API names it; `.unspecified` for a record
    /// without one.
    public var entityType: Cdp_Model_V1_EntityType {
        switch entity {
        case .person?: .person
        case .account?: .account
        case .opportunity?: .opportunity
        case .accountPersonRelation?: .accountPersonRelation
        case .opportunityPersonRelation?: .opportunityPersonRelation
        case .campaign?: .campaign
        case .campaignMember?: .campaignMember
        case .marketingList?: .marketingList
        case .marketingListMember?: .marketingListMember
        case .event?: .event
        case .identityLink?: .identityLink
        case nil: .unspecified
        }
    }
}

import CDPProto

/// The link a fragment makes in segmentation's state: a person's or opportunity's account, a person's
/// account relation, opportunity role, campaign membership or list membership.
public enum Links {
    /// The roles of the link's two ends in a fragment of `entity`: the `from` end is the fragment's own
    /// cluster when it has no role (a person's or opportunity's own record).
    public static func roles(of entity: Cdp_Model_V1_EntityType) -> (from: String?, to: String) {
        switch entity {
        case .person, .opportunity: (nil, Role.account)
        case .accountPersonRelation: (Role.person, Role.account)
        case .opportunityPersonRelation: (Role.person, Role.opportunity)
        case .campaignMember: (Role.person, Role.campaign)
        default: (Role.person, Role.list)
        }
    }

    /// The link a fragment of `entity` with `key` makes: present if the fragment is live (`cluster`
    /// is its cluster, nil when it is gone or deleted) and both ends are resolved (`references`: the
    /// cluster each role of the fragment names, resolved ones only). `record` is asked for only when
    /// the link carries a role or a status from it.
    public static func state(
        _ entity: Cdp_Model_V1_EntityType,
        key: String,
        cluster: UInt64?,
        references: [String: UInt64],
        record: () throws -> Cdp_Model_V1_Record
    ) rethrows -> Cdp_Profile_V1_LinkState {
        var link = Cdp_Profile_V1_LinkState()
        link.entityType = entity
        link.key = key
        guard let cluster else { return link }
        let roles = roles(of: entity)
        let from = roles.from.map { references[$0] ?? 0 } ?? cluster
        let to = references[roles.to] ?? 0
        guard from != 0, to != 0 else { return link }
        link.present = true
        link.fromClusterID = from
        link.toClusterID = to
        switch entity {
        case .opportunityPersonRelation:
            let relation = try record().opportunityPersonRelation
            if relation.hasRole { link.role = relation.role }
            if relation.hasIsPrimary { link.isPrimary = relation.isPrimary }
        case .campaignMember:
            let member = try record().campaignMember
            if member.hasStatus { link.status = member.status }
            if member.hasHasResponded_p { link.hasResponded_p = member.hasResponded_p }
        default:
            break
        }
        return link
    }
}

import CDPProto

extension EntityState {
    /// The state changes that make a state hold what `view` shows: the unified records of the person,
    /// its accounts, opportunities, campaigns and lists, a link for each relation, and its events, with
    /// versions from `version` on (advanced past the last one used). For loading views built elsewhere
    /// (tests, benchmarks, tools); the links take keys of their own (`view:<from>:<to>`), so changes of
    /// views of persons that share accounts or opportunities agree.
    public static func changes(
        building view: Cdp_Profile_V1_PersonView,
        version: inout UInt64
    ) -> [Cdp_Profile_V1_StateChange] {
        var changes: [Cdp_Profile_V1_StateChange] = []
        func next() -> UInt64 {
            version += 1
            return version
        }
        func entity(_ type: Cdp_Model_V1_EntityType, _ unified: Cdp_Profile_V1_UnifiedRecord) {
            var change = Cdp_Profile_V1_StateChange()
            change.version = next()
            change.entity.entityType = type
            change.entity.clusterID = unified.clusterID
            change.entity.unified = unified
            change.entity.unified.accountClusterIds = []
            changes.append(change)
        }
        func link(
            _ type: Cdp_Model_V1_EntityType,
            from: UInt64,
            to: UInt64,
            _ details: (inout Cdp_Profile_V1_LinkState) -> Void = { _ in }
        ) {
            var change = Cdp_Profile_V1_StateChange()
            change.version = next()
            change.link.entityType = type
            change.link.key = "view:\(from):\(to)"
            change.link.present = true
            change.link.fromClusterID = from
            change.link.toClusterID = to
            details(&change.link)
            changes.append(change)
        }
        let person = view.person.clusterID
        entity(.person, view.person)
        for account in view.accounts {
            entity(.account, account)
            link(.accountPersonRelation, from: person, to: account.clusterID)
        }
        for opportunity in view.opportunities {
            entity(.opportunity, opportunity)
            for account in opportunity.accountClusterIds {
                link(.opportunity, from: opportunity.clusterID, to: account)
            }
        }
        for role in view.opportunityRoles {
            link(.opportunityPersonRelation, from: person, to: role.opportunityClusterID) { link in
                if role.hasRole { link.role = role.role }
                if role.hasIsPrimary { link.isPrimary = role.isPrimary }
            }
        }
        for membership in view.campaigns {
            entity(.campaign, membership.campaign)
            link(.campaignMember, from: person, to: membership.campaign.clusterID) { link in
                if membership.hasStatus { link.status = membership.status }
                if membership.hasHasResponded_p { link.hasResponded_p = membership.hasResponded_p }
            }
        }
        for membership in view.lists {
            entity(.marketingList, membership.list)
            link(.marketingListMember, from: person, to: membership.list.clusterID)
        }
        for event in view.events {
            var change = Cdp_Profile_V1_StateChange()
            change.version = next()
            change.event.key = event.key
            change.event.personClusterID = person
            change.event.event = event.event
            changes.append(change)
        }
        return changes
    }
}

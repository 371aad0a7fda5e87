import CDPProto
import SwiftProtobuf

// The canonical fields of every entity (DESIGN.md §4). These names are the header of canonical CSV
// files and the properties of canonical NDJSON lines; native formats map their columns onto them.

extension EntitySchema where Entity == Cdp_Model_V1_Person {
    static let person = EntitySchema(
        .person,
        fields: [
            .text("personId", \.personID, kind: .identifier, required: true),
            .text("email", \.email, kind: .email),
            .text("firstName", \.firstName),
            .text("lastName", \.lastName),
            .text("jobTitle", \.jobTitle),
            CanonicalField("personType", .enumeration(["Lead", "Contact"])) { draft, value in
                if case .string(let type) = value { draft.entity.personType = type == "Lead" ? .lead : .contact }
            },
            .number("score", \.score),
            .text("country", \.country),
            .reference("accountId", \.accountKey),
            .text("crmId", \.crmID, kind: .identifier),
            .text("ecid", \.ecid, kind: .identifier),
            .boolean("emailOptOut", \.emailOptOut),
        ],
        empty: { Cdp_Model_V1_Person() },
        finish: { draft in
            draft.record.key = SourceKey.make(draft.entity.personID, in: draft.source)
            return nil
        },
        wrap: { .person($0) }
    )
}

extension EntitySchema where Entity == Cdp_Model_V1_Account {
    static let account = EntitySchema(
        .account,
        fields: [
            .text("accountId", \.accountID, kind: .identifier, required: true),
            .text("name", \.name),
            .text("domain", \.domain),
            .text("website", \.website),
            .text("industry", \.industry),
            .number("annualRevenue", \.annualRevenue),
            .integer("employees", \.employees),
            .text("country", \.country),
            .text("dunsNumber", \.dunsNumber, kind: .identifier),
            .reference("parentAccountId", \.parentAccountKey),
            .text("crmId", \.crmID, kind: .identifier),
        ],
        empty: { Cdp_Model_V1_Account() },
        finish: { draft in
            // Domains compare as host names: lower case, no scheme, no trailing dot.
            if draft.entity.hasDomain { draft.entity.domain = Normalize.domain(draft.entity.domain) }
            draft.record.key = SourceKey.make(draft.entity.accountID, in: draft.source)
            return nil
        },
        wrap: { .account($0) }
    )
}

extension EntitySchema where Entity == Cdp_Model_V1_Opportunity {
    static let opportunity = EntitySchema(
        .opportunity,
        fields: [
            .text("opportunityId", \.opportunityID, kind: .identifier, required: true),
            .reference("accountId", \.accountKey),
            .text("name", \.name),
            .text("stage", \.stage),
            .number("amount", \.amount),
            .text("currency", \.currency, kind: .currency),
            .boolean("isClosed", \.isClosed),
            .boolean("isWon", \.isWon),
            .timestamp("closeDate", \.closeDate, kind: .date),
            .text("crmId", \.crmID, kind: .identifier),
        ],
        empty: { Cdp_Model_V1_Opportunity() },
        finish: { draft in
            if draft.entity.hasIsWon, draft.entity.isWon, draft.entity.hasIsClosed, !draft.entity.isClosed {
                return FinishError(
                    field: "isWon",
                    reason: "an opportunity cannot be won (isWon=true) and open (isClosed=false)"
                )
            }
            draft.record.key = SourceKey.make(draft.entity.opportunityID, in: draft.source)
            return nil
        },
        wrap: { .opportunity($0) }
    )
}

extension EntitySchema where Entity == Cdp_Model_V1_AccountPersonRelation {
    static let accountPersonRelation = EntitySchema(
        .accountPersonRelation,
        fields: [
            .reference("accountId", \.accountKey, required: true),
            .reference("personId", \.personKey, required: true),
            .text("role", \.role),
            .boolean("isPrimary", \.isPrimary),
            .boolean("isActive", \.isActive),
        ],
        empty: { Cdp_Model_V1_AccountPersonRelation() },
        finish: { draft in
            draft.record.key = SourceKey.composite(draft.entity.accountKey, draft.entity.personKey, in: draft.source)
            return nil
        },
        wrap: { .accountPersonRelation($0) }
    )
}

extension EntitySchema where Entity == Cdp_Model_V1_OpportunityPersonRelation {
    static let opportunityPersonRelation = EntitySchema(
        .opportunityPersonRelation,
        fields: [
            .reference("opportunityId", \.opportunityKey, required: true),
            .reference("personId", \.personKey, required: true),
            .text("role", \.role),
            .boolean("isPrimary", \.isPrimary),
        ],
        empty: { Cdp_Model_V1_OpportunityPersonRelation() },
        finish: { draft in
            draft.record.key = SourceKey.composite(
                draft.entity.opportunityKey,
                draft.entity.personKey,
                in: draft.source
            )
            return nil
        },
        wrap: { .opportunityPersonRelation($0) }
    )
}

extension EntitySchema where Entity == Cdp_Model_V1_Campaign {
    static let campaign = EntitySchema(
        .campaign,
        fields: [
            .text("campaignId", \.campaignID, kind: .identifier, required: true),
            .text("name", \.name),
            .text("type", \.type),
            .text("status", \.status),
        ],
        empty: { Cdp_Model_V1_Campaign() },
        finish: { draft in
            draft.record.key = SourceKey.make(draft.entity.campaignID, in: draft.source)
            return nil
        },
        wrap: { .campaign($0) }
    )
}

extension EntitySchema where Entity == Cdp_Model_V1_CampaignMember {
    static let campaignMember = EntitySchema(
        .campaignMember,
        fields: [
            .reference("campaignId", \.campaignKey, required: true),
            .reference("personId", \.personKey, required: true),
            .text("status", \.status),
            .boolean("hasResponded", \.hasResponded_p),
        ],
        empty: { Cdp_Model_V1_CampaignMember() },
        finish: { draft in
            draft.record.key = SourceKey.composite(draft.entity.campaignKey, draft.entity.personKey, in: draft.source)
            return nil
        },
        wrap: { .campaignMember($0) }
    )
}

extension EntitySchema where Entity == Cdp_Model_V1_MarketingList {
    static let marketingList = EntitySchema(
        .marketingList,
        fields: [
            .text("listId", \.listID, kind: .identifier, required: true),
            .text("name", \.name),
        ],
        empty: { Cdp_Model_V1_MarketingList() },
        finish: { draft in
            draft.record.key = SourceKey.make(draft.entity.listID, in: draft.source)
            return nil
        },
        wrap: { .marketingList($0) }
    )
}

extension EntitySchema where Entity == Cdp_Model_V1_MarketingListMember {
    static let marketingListMember = EntitySchema(
        .marketingListMember,
        fields: [
            .reference("listId", \.listKey, required: true),
            .reference("personId", \.personKey, required: true),
        ],
        empty: { Cdp_Model_V1_MarketingListMember() },
        finish: { draft in
            draft.record.key = SourceKey.composite(draft.entity.listKey, draft.entity.personKey, in: draft.source)
            return nil
        },
        wrap: { .marketingListMember($0) }
    )
}

extension EntitySchema where Entity == Cdp_Model_V1_ExperienceEvent {
    static let event = EntitySchema(
        .event,
        fields: [
            .text("eventId", \.eventID, kind: .identifier, required: true),
            .reference("personId", \.personKey),
            .text("email", \.email, kind: .email),
            .text("ecid", \.ecid, kind: .identifier),
            .text("eventType", \.eventType, required: true),
            .timestamp("timestamp", \.timestamp, required: true),
            .text("url", \.url),
            .text("name", \.name),
        ],
        empty: { Cdp_Model_V1_ExperienceEvent() },
        finish: { draft in
            guard draft.entity.hasPersonKey || draft.entity.hasEmail || draft.entity.hasEcid else {
                return FinishError(field: "personId", reason: "an event needs its person: personId, email or ecid")
            }
            draft.record.key = SourceKey.make(draft.entity.eventID, in: draft.source)
            return nil
        },
        wrap: { .event($0) }
    )
}

extension EntitySchema where Entity == Cdp_Model_V1_IdentityLink {
    static let identityLink = EntitySchema(
        .identityLink,
        fields: [
            .text("masterId", \.masterID, kind: .identifier, required: true),
            CanonicalField("entity", .enumeration(["person", "account"]), required: true) { draft, value in
                if case .string(let entity) = value {
                    draft.entity.entityType = entity == "person" ? .person : .account
                }
            },
            CanonicalField("source", .source, required: true) { draft, value in
                if case .string(let text) = value { draft.linkedSource = SourceKey.parseSource(text) }
            },
            .text("id", \.linkedKey, kind: .identifier, required: true),
        ],
        empty: { Cdp_Model_V1_IdentityLink() },
        finish: { draft in
            guard let linkedSource = draft.linkedSource else {
                return FinishError(field: "source", reason: "missing the linked record's source")
            }
            draft.entity.linkedKey = SourceKey.make(draft.entity.linkedKey, in: linkedSource)
            draft.record.key = SourceKey.make(draft.entity.masterID + "/" + draft.entity.linkedKey, in: draft.source)
            return nil
        },
        wrap: { .identityLink($0) }
    )
}

/// Normalizations applied to values of every format.
public enum Normalize {
    /// An email as identity resolution compares it: trimmed and lowercased.
    public static func email(_ text: String) -> String {
        trim(text).lowercased()
    }

    /// A domain as a host name: lowercased, without scheme, `www.`, path or trailing dot.
    public static func domain(_ text: String) -> String {
        var host = Substring(trim(text).lowercased())
        for scheme in ["https://", "http://"] where host.hasPrefix(scheme) { host = host.dropFirst(scheme.count) }
        if let slash = host.firstIndex(of: "/") { host = host[..<slash] }
        if host.hasPrefix("www.") { host = host.dropFirst(4) }
        while host.hasSuffix(".") { host = host.dropLast() }
        return String(host)
    }

    /// `text` without leading and trailing white space (ASCII white space only: fast on the hot path).
    public static func trim(_ text: String) -> String {
        let bytes = text.utf8
        guard let first = bytes.first, let last = bytes.last, isSpace(first) || isSpace(last) else { return text }
        var start = bytes.startIndex
        var end = bytes.endIndex
        while start < end, isSpace(bytes[start]) { start = bytes.index(after: start) }
        while end > start, isSpace(bytes[bytes.index(before: end)]) { end = bytes.index(before: end) }
        return String(text[start..<end])
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }
}

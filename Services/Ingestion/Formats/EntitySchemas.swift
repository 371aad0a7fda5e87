import CDPProto
import SwiftProtobuf

// The canonical fields of every entity (ARCHITECTURE.md §4). These names are the header of canonical CSV
// files and the properties of canonical NDJSON lines; native formats map their columns onto them.

extension EntitySchema where Entity == Cdp_Model_V1_Person {
    static let person = EntitySchema(
        .person,
        fields: [
            .text("personId", { $0.personID = $1 }, kind: .identifier, required: true),
            .text("email", { $0.email = $1 }, kind: .email),
            .text("firstName", { $0.firstName = $1 }),
            .text("lastName", { $0.lastName = $1 }),
            .text("jobTitle", { $0.jobTitle = $1 }),
            CanonicalField("personType", .enumeration(["Lead", "Contact"])) { draft, value in
                if case .string(let type) = value { draft.entity.personType = type == "Lead" ? .lead : .contact }
            },
            .number("score", { $0.score = $1 }),
            .text("country", { $0.country = $1 }),
            .reference("accountId", { $0.accountKey = $1 }),
            .text("crmId", { $0.crmID = $1 }, kind: .identifier),
            .text("ecid", { $0.ecid = $1 }, kind: .identifier),
            .boolean("emailOptOut", { $0.emailOptOut = $1 }),
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
            .text("accountId", { $0.accountID = $1 }, kind: .identifier, required: true),
            .text("name", { $0.name = $1 }),
            .text("domain", { $0.domain = $1 }),
            .text("website", { $0.website = $1 }),
            .text("industry", { $0.industry = $1 }),
            .number("annualRevenue", { $0.annualRevenue = $1 }),
            .integer("employees", { $0.employees = $1 }),
            .text("country", { $0.country = $1 }),
            .text("dunsNumber", { $0.dunsNumber = $1 }, kind: .identifier),
            .reference("parentAccountId", { $0.parentAccountKey = $1 }),
            .text("crmId", { $0.crmID = $1 }, kind: .identifier),
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
            .text("opportunityId", { $0.opportunityID = $1 }, kind: .identifier, required: true),
            .reference("accountId", { $0.accountKey = $1 }),
            .text("name", { $0.name = $1 }),
            .text("stage", { $0.stage = $1 }),
            .number("amount", { $0.amount = $1 }),
            .text("currency", { $0.currency = $1 }, kind: .currency),
            .boolean("isClosed", { $0.isClosed = $1 }),
            .boolean("isWon", { $0.isWon = $1 }),
            .timestamp("closeDate", { $0.closeDate = $1 }, kind: .date),
            .text("crmId", { $0.crmID = $1 }, kind: .identifier),
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
            .reference("accountId", { $0.accountKey = $1 }, required: true),
            .reference("personId", { $0.personKey = $1 }, required: true),
            .text("role", { $0.role = $1 }),
            .boolean("isPrimary", { $0.isPrimary = $1 }),
            .boolean("isActive", { $0.isActive = $1 }),
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
            .reference("opportunityId", { $0.opportunityKey = $1 }, required: true),
            .reference("personId", { $0.personKey = $1 }, required: true),
            .text("role", { $0.role = $1 }),
            .boolean("isPrimary", { $0.isPrimary = $1 }),
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
            .text("campaignId", { $0.campaignID = $1 }, kind: .identifier, required: true),
            .text("name", { $0.name = $1 }),
            .text("type", { $0.type = $1 }),
            .text("status", { $0.status = $1 }),
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
            .reference("campaignId", { $0.campaignKey = $1 }, required: true),
            .reference("personId", { $0.personKey = $1 }, required: true),
            .text("status", { $0.status = $1 }),
            .boolean("hasResponded", { $0.hasResponded_p = $1 }),
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
            .text("listId", { $0.listID = $1 }, kind: .identifier, required: true),
            .text("name", { $0.name = $1 }),
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
            .reference("listId", { $0.listKey = $1 }, required: true),
            .reference("personId", { $0.personKey = $1 }, required: true),
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
            .text("eventId", { $0.eventID = $1 }, kind: .identifier, required: true),
            .reference("personId", { $0.personKey = $1 }),
            .text("email", { $0.email = $1 }, kind: .email),
            .text("ecid", { $0.ecid = $1 }, kind: .identifier),
            .text("eventType", { $0.eventType = $1 }, required: true),
            .timestamp("timestamp", { $0.timestamp = $1 }, required: true),
            .text("url", { $0.url = $1 }),
            .text("name", { $0.name = $1 }),
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
            .text("masterId", { $0.masterID = $1 }, kind: .identifier, required: true),
            CanonicalField("entity", .enumeration(["person", "account"]), required: true) { draft, value in
                if case .string(let entity) = value {
                    draft.entity.entityType = entity == "person" ? .person : .account
                }
            },
            CanonicalField("source", .source, required: true) { draft, value in
                if case .string(let text) = value { draft.linkedSource = SourceKey.parseSource(text) }
            },
            .text("id", { $0.linkedKey = $1 }, kind: .identifier, required: true),
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
        lowercased(trim(text))
    }

    /// `text` lowercased; without an allocation when it has no upper-case letter (most emails and domains).
    static func lowercased(_ text: String) -> String {
        for byte in text.utf8 where byte >= 0x80 || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")) {
            return text.lowercased()
        }
        return text
    }

    /// A domain as a host name: lowercased, without scheme, `www.`, path or trailing dot.
    public static func domain(_ text: String) -> String {
        let lowered = lowercased(trim(text))
        // Fast path: already a bare host name.
        if !lowered.utf8.contains(UInt8(ascii: "/")), !lowered.hasPrefix("www."), !lowered.hasSuffix(".") {
            return lowered
        }
        var host = Substring(lowered)
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

import CDPProto
import SegmentationLanguage
import SwiftProtobuf

/// How each scalar or entity field of ``Schema`` is read from the view's messages.
enum Fields {
    /// Reads one field of an element; the frame serves lookups into the view (a role's opportunity).
    typealias Reader = @Sendable (Element, Frame) -> Value

    /// An entity-valued field: the entity, or `.none`.
    typealias EntityReader = @Sendable (Element, Frame) -> Element

    /// The reader of a scalar field; nil if `Schema` has no such scalar (a checked definition never
    /// asks for one, and a test asserts every schema scalar has a reader).
    static func reader(_ kind: EntityKind, _ name: String) -> Reader? {
        switch kind {
        case .person: person(name)
        case .account: account(name)
        case .opportunity: opportunity(name)
        case .opportunityRole: opportunityRole(name)
        case .campaignMembership: campaignMembership(name)
        case .campaign: campaign(name)
        case .listMembership: listMembership(name)
        case .event: event(name)
        }
    }

    /// The reader of an entity-valued field.
    static func entityReader(_ kind: EntityKind, _ name: String) -> EntityReader? {
        switch (kind, name) {
        case (.opportunityRole, "opportunity"):
            return { element, frame in
                guard case .opportunityRole(let role) = element else { return .none }
                return frame.opportunity(cluster: role.opportunityClusterID)
            }
        case (.campaignMembership, "campaign"):
            return { element, _ in
                guard case .campaignMembership(let membership) = element else { return .none }
                return .campaign(membership.campaign)
            }
        default:
            return nil
        }
    }

    // MARK: - Per kind

    private static func string(_ present: Bool, _ value: @autoclosure () -> String) -> Value {
        present ? .string(value()) : .null
    }

    private static func number(_ present: Bool, _ value: @autoclosure () -> Double) -> Value {
        present ? .number(value()) : .null
    }

    private static func boolean(_ present: Bool, _ value: @autoclosure () -> Bool) -> Value {
        present ? .boolean(value()) : .null
    }

    private static func time(_ present: Bool, _ value: @autoclosure () -> Google_Protobuf_Timestamp) -> Value {
        present ? .time(value().secondsSince1970) : .null
    }

    /// Fields every unified record has: its key, source type and last update.
    private static func common(
        _ name: String,
        _ record: @escaping @Sendable (Element) -> Cdp_Model_V1_Record?
    )
        -> Reader?
    {
        switch name {
        case "key": { element, _ in record(element).map { .string($0.key) } ?? .null }
        case "sourceType": { element, _ in record(element).map { .string($0.source.type) } ?? .null }
        case "lastUpdated":
            { element, _ in record(element).map { time($0.hasLastUpdated, $0.lastUpdated) } ?? .null }
        default: nil
        }
    }

    private static func person(_ name: String) -> Reader? {
        let record: @Sendable (Element) -> Cdp_Model_V1_Record? = {
            if case .person(let unified) = $0 { unified.record } else { nil }
        }
        if let reader = common(name, record) { return reader }
        let field: (@Sendable (Cdp_Model_V1_Person) -> Value)? =
            switch name {
            case "personId": { .string($0.personID) }
            case "email": { string($0.hasEmail, $0.email) }
            case "firstName": { string($0.hasFirstName, $0.firstName) }
            case "lastName": { string($0.hasLastName, $0.lastName) }
            case "jobTitle": { string($0.hasJobTitle, $0.jobTitle) }
            case "personType":
                {
                    switch $0.personType {
                    case .lead: .string("Lead")
                    case .contact: .string("Contact")
                    default: .null
                    }
                }
            case "score": { number($0.hasScore, $0.score) }
            case "country": { string($0.hasCountry, $0.country) }
            case "crmId": { string($0.hasCrmID, $0.crmID) }
            case "ecid": { string($0.hasEcid, $0.ecid) }
            case "emailOptOut": { boolean($0.hasEmailOptOut, $0.emailOptOut) }
            default: nil
            }
        guard let field else { return nil }
        return { element, _ in record(element).map { field($0.person) } ?? .null }
    }

    private static func account(_ name: String) -> Reader? {
        let record: @Sendable (Element) -> Cdp_Model_V1_Record? = {
            if case .account(let unified) = $0 { unified.record } else { nil }
        }
        if let reader = common(name, record) { return reader }
        let field: (@Sendable (Cdp_Model_V1_Account) -> Value)? =
            switch name {
            case "accountId": { .string($0.accountID) }
            case "name": { string($0.hasName, $0.name) }
            case "domain": { string($0.hasDomain, $0.domain) }
            case "website": { string($0.hasWebsite, $0.website) }
            case "industry": { string($0.hasIndustry, $0.industry) }
            case "annualRevenue": { number($0.hasAnnualRevenue, $0.annualRevenue) }
            case "employees": { number($0.hasEmployees, Double($0.employees)) }
            case "country": { string($0.hasCountry, $0.country) }
            case "dunsNumber": { string($0.hasDunsNumber, $0.dunsNumber) }
            case "crmId": { string($0.hasCrmID, $0.crmID) }
            default: nil
            }
        guard let field else { return nil }
        return { element, _ in record(element).map { field($0.account) } ?? .null }
    }

    private static func opportunity(_ name: String) -> Reader? {
        let record: @Sendable (Element) -> Cdp_Model_V1_Record? = {
            if case .opportunity(let unified) = $0 { unified.record } else { nil }
        }
        if let reader = common(name, record) { return reader }
        let field: (@Sendable (Cdp_Model_V1_Opportunity) -> Value)? =
            switch name {
            case "opportunityId": { .string($0.opportunityID) }
            case "name": { string($0.hasName, $0.name) }
            case "stage": { string($0.hasStage, $0.stage) }
            case "amount": { number($0.hasAmount, $0.amount) }
            case "currency": { string($0.hasCurrency, $0.currency) }
            case "isClosed": { boolean($0.hasIsClosed, $0.isClosed) }
            case "isWon": { boolean($0.hasIsWon, $0.isWon) }
            case "closeDate": { time($0.hasCloseDate, $0.closeDate) }
            case "crmId": { string($0.hasCrmID, $0.crmID) }
            default: nil
            }
        guard let field else { return nil }
        return { element, _ in record(element).map { field($0.opportunity) } ?? .null }
    }

    private static func opportunityRole(_ name: String) -> Reader? {
        switch name {
        case "role":
            { element, _ in
                guard case .opportunityRole(let role) = element else { return .null }
                return string(role.hasRole, role.role)
            }
        case "isPrimary":
            { element, _ in
                guard case .opportunityRole(let role) = element else { return .null }
                return boolean(role.hasIsPrimary, role.isPrimary)
            }
        default: nil
        }
    }

    private static func campaignMembership(_ name: String) -> Reader? {
        switch name {
        case "status":
            { element, _ in
                guard case .campaignMembership(let membership) = element else { return .null }
                return string(membership.hasStatus, membership.status)
            }
        case "hasResponded":
            { element, _ in
                guard case .campaignMembership(let membership) = element else { return .null }
                return boolean(membership.hasHasResponded_p, membership.hasResponded_p)
            }
        default: nil
        }
    }

    private static func campaign(_ name: String) -> Reader? {
        let record: @Sendable (Element) -> Cdp_Model_V1_Record? = {
            if case .campaign(let unified) = $0 { unified.record } else { nil }
        }
        if let reader = common(name, record) { return reader }
        let field: (@Sendable (Cdp_Model_V1_Campaign) -> Value)? =
            switch name {
            case "campaignId": { .string($0.campaignID) }
            case "name": { string($0.hasName, $0.name) }
            case "type": { string($0.hasType, $0.type) }
            case "status": { string($0.hasStatus, $0.status) }
            default: nil
            }
        guard let field else { return nil }
        return { element, _ in record(element).map { field($0.campaign) } ?? .null }
    }

    private static func listMembership(_ name: String) -> Reader? {
        let record: @Sendable (Element) -> Cdp_Model_V1_Record? = {
            if case .listMembership(let membership) = $0 { membership.list.record } else { nil }
        }
        switch name {
        case "key": return { element, _ in record(element).map { .string($0.key) } ?? .null }
        case "listId": return { element, _ in record(element).map { .string($0.marketingList.listID) } ?? .null }
        case "name":
            return { element, _ in
                record(element).map { string($0.marketingList.hasName, $0.marketingList.name) } ?? .null
            }
        default: return nil
        }
    }

    private static func event(_ name: String) -> Reader? {
        let field: (@Sendable (Cdp_Profile_V1_Event) -> Value)? =
            switch name {
            case "key": { .string($0.key) }
            case "eventId": { .string($0.event.eventID) }
            case "eventType": { .string($0.event.eventType) }
            case "timestamp": { time($0.event.hasTimestamp, $0.event.timestamp) }
            case "url": { string($0.event.hasURL, $0.event.url) }
            case "name": { string($0.event.hasName, $0.event.name) }
            case "email": { string($0.event.hasEmail, $0.event.email) }
            case "ecid": { string($0.event.hasEcid, $0.event.ecid) }
            default: nil
            }
        guard let field else { return nil }
        return { element, _ in
            guard case .event(let event) = element else { return .null }
            return field(event)
        }
    }
}

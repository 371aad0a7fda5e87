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
                guard case .opportunityRole(let index) = element else { return .none }
                return frame.opportunity(cluster: frame.opportunityRoles[index].opportunityClusterID)
            }
        case (.campaignMembership, "campaign"):
            return { element, _ in
                guard case .campaignMembership(let index) = element else { return .none }
                return .campaign(index)
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
        _ record: @escaping @Sendable (Element, Frame) -> Cdp_Profile_V1_UnifiedRecord?
    ) -> Reader? {
        switch name {
        case "key": { element, frame in record(element, frame).map { .string($0.record.key) } ?? .null }
        case "sourceType": { element, frame in record(element, frame).map { .string($0.record.source.type) } ?? .null }
        case "lastUpdated":
            { element, frame in
                record(element, frame).map { time($0.record.hasLastUpdated, $0.record.lastUpdated) } ?? .null
            }
        default: nil
        }
    }

    private static func person(_ name: String) -> Reader? {
        if let reader = common(
            name,
            { element, frame in
                if case .person(let index) = element { frame.persons[index] } else { nil }
            }
        ) {
            return reader
        }
        let field: (@Sendable ([Cdp_Model_V1_Person], Int) -> Value)? =
            switch name {
            case "personId": { .string($0[$1].personID) }
            case "email": { ($0[$1].hasEmail ? .string($0[$1].email) : .null) }
            case "firstName": { ($0[$1].hasFirstName ? .string($0[$1].firstName) : .null) }
            case "lastName": { ($0[$1].hasLastName ? .string($0[$1].lastName) : .null) }
            case "jobTitle": { ($0[$1].hasJobTitle ? .string($0[$1].jobTitle) : .null) }
            case "personType":
                {
                    switch $0[$1].personType {
                    case .lead: .string("Lead")
                    case .contact: .string("Contact")
                    default: .null
                    }
                }
            case "score": { ($0[$1].hasScore ? .number($0[$1].score) : .null) }
            case "country": { ($0[$1].hasCountry ? .string($0[$1].country) : .null) }
            case "crmId": { ($0[$1].hasCrmID ? .string($0[$1].crmID) : .null) }
            case "ecid": { ($0[$1].hasEcid ? .string($0[$1].ecid) : .null) }
            case "emailOptOut": { ($0[$1].hasEmailOptOut ? .boolean($0[$1].emailOptOut) : .null) }
            default: nil
            }
        guard let field else { return nil }
        return { element, frame in
            guard case .person(let index) = element else { return .null }
            frame.extract(.person)
            return field(frame.personData, index)
        }
    }

    private static func account(_ name: String) -> Reader? {
        if let reader = common(
            name,
            { element, frame in
                if case .account(let index) = element { frame.accounts[index] } else { nil }
            }
        ) {
            return reader
        }
        let field: (@Sendable ([Cdp_Model_V1_Account], Int) -> Value)? =
            switch name {
            case "accountId": { .string($0[$1].accountID) }
            case "name": { ($0[$1].hasName ? .string($0[$1].name) : .null) }
            case "domain": { ($0[$1].hasDomain ? .string($0[$1].domain) : .null) }
            case "website": { ($0[$1].hasWebsite ? .string($0[$1].website) : .null) }
            case "industry": { ($0[$1].hasIndustry ? .string($0[$1].industry) : .null) }
            case "annualRevenue": { ($0[$1].hasAnnualRevenue ? .number($0[$1].annualRevenue) : .null) }
            case "employees": { ($0[$1].hasEmployees ? .number(Double($0[$1].employees)) : .null) }
            case "country": { ($0[$1].hasCountry ? .string($0[$1].country) : .null) }
            case "dunsNumber": { ($0[$1].hasDunsNumber ? .string($0[$1].dunsNumber) : .null) }
            case "crmId": { ($0[$1].hasCrmID ? .string($0[$1].crmID) : .null) }
            default: nil
            }
        guard let field else { return nil }
        return { element, frame in
            guard case .account(let index) = element else { return .null }
            frame.extract(.account)
            return field(frame.accountData, index)
        }
    }

    private static func opportunity(_ name: String) -> Reader? {
        if let reader = common(
            name,
            { element, frame in
                if case .opportunity(let index) = element { frame.opportunities[index] } else { nil }
            }
        ) {
            return reader
        }
        let field: (@Sendable ([Cdp_Model_V1_Opportunity], Int) -> Value)? =
            switch name {
            case "opportunityId": { .string($0[$1].opportunityID) }
            case "name": { ($0[$1].hasName ? .string($0[$1].name) : .null) }
            case "stage": { ($0[$1].hasStage ? .string($0[$1].stage) : .null) }
            case "amount": { ($0[$1].hasAmount ? .number($0[$1].amount) : .null) }
            case "currency": { ($0[$1].hasCurrency ? .string($0[$1].currency) : .null) }
            case "isClosed": { ($0[$1].hasIsClosed ? .boolean($0[$1].isClosed) : .null) }
            case "isWon": { ($0[$1].hasIsWon ? .boolean($0[$1].isWon) : .null) }
            case "closeDate": { ($0[$1].hasCloseDate ? .time($0[$1].closeDate.secondsSince1970) : .null) }
            case "crmId": { ($0[$1].hasCrmID ? .string($0[$1].crmID) : .null) }
            default: nil
            }
        guard let field else { return nil }
        return { element, frame in
            guard case .opportunity(let index) = element else { return .null }
            frame.extract(.opportunity)
            return field(frame.opportunityData, index)
        }
    }

    private static func opportunityRole(_ name: String) -> Reader? {
        switch name {
        case "role":
            { element, frame in
                guard case .opportunityRole(let index) = element else { return .null }
                return string(frame.opportunityRoles[index].hasRole, frame.opportunityRoles[index].role)
            }
        case "isPrimary":
            { element, frame in
                guard case .opportunityRole(let index) = element else { return .null }
                return boolean(frame.opportunityRoles[index].hasIsPrimary, frame.opportunityRoles[index].isPrimary)
            }
        default: nil
        }
    }

    private static func campaignMembership(_ name: String) -> Reader? {
        switch name {
        case "status":
            { element, frame in
                guard case .campaignMembership(let index) = element else { return .null }
                return string(frame.campaigns[index].hasStatus, frame.campaigns[index].status)
            }
        case "hasResponded":
            { element, frame in
                guard case .campaignMembership(let index) = element else { return .null }
                return boolean(frame.campaigns[index].hasHasResponded_p, frame.campaigns[index].hasResponded_p)
            }
        default: nil
        }
    }

    private static func campaign(_ name: String) -> Reader? {
        if let reader = common(
            name,
            { element, frame in
                if case .campaign(let index) = element { frame.campaigns[index].campaign } else { nil }
            }
        ) {
            return reader
        }
        let field: (@Sendable ([Cdp_Model_V1_Campaign], Int) -> Value)? =
            switch name {
            case "campaignId": { .string($0[$1].campaignID) }
            case "name": { ($0[$1].hasName ? .string($0[$1].name) : .null) }
            case "type": { ($0[$1].hasType ? .string($0[$1].type) : .null) }
            case "status": { ($0[$1].hasStatus ? .string($0[$1].status) : .null) }
            default: nil
            }
        guard let field else { return nil }
        return { element, frame in
            guard case .campaign(let index) = element else { return .null }
            frame.extract(.campaign)
            return field(frame.campaignData, index)
        }
    }

    private static func listMembership(_ name: String) -> Reader? {
        switch name {
        case "key":
            return { element, frame in
                guard case .listMembership(let index) = element else { return .null }
                return .string(frame.lists[index].list.record.key)
            }
        case "listId":
            return { element, frame in
                guard case .listMembership(let index) = element else { return .null }
                frame.extract(.listMembership)
                return .string(frame.listData[index].listID)
            }
        case "name":
            return { element, frame in
                guard case .listMembership(let index) = element else { return .null }
                frame.extract(.listMembership)
                return string(frame.listData[index].hasName, frame.listData[index].name)
            }
        default: return nil
        }
    }

    private static func event(_ name: String) -> Reader? {
        if name == "key" {
            return { element, frame in
                guard case .event(let index) = element else { return .null }
                return .string(frame.events[index].key)
            }
        }
        let field: (@Sendable ([Cdp_Model_V1_ExperienceEvent], Int) -> Value)? =
            switch name {
            case "eventId": { .string($0[$1].eventID) }
            case "eventType": { .string($0[$1].eventType) }
            case "timestamp": { ($0[$1].hasTimestamp ? .time($0[$1].timestamp.secondsSince1970) : .null) }
            case "url": { ($0[$1].hasURL ? .string($0[$1].url) : .null) }
            case "name": { ($0[$1].hasName ? .string($0[$1].name) : .null) }
            case "email": { ($0[$1].hasEmail ? .string($0[$1].email) : .null) }
            case "ecid": { ($0[$1].hasEcid ? .string($0[$1].ecid) : .null) }
            default: nil
            }
        guard let field else { return nil }
        return { element, frame in
            guard case .event(let index) = element else { return .null }
            frame.extract(.event)
            return field(frame.eventData, index)
        }
    }
}

/// What a segment is about: its root and the view it is evaluated on.
public enum Audience: String, Sendable, Hashable, CaseIterable {
    /// Rooted at `person` (plus `xEvent`), evaluated on person views.
    case person
    /// Rooted at `account`, evaluated on account views.
    case account
}

/// The kinds of entities a definition can reach.
public enum EntityKind: String, Sendable, Hashable, CaseIterable {
    case person, account, opportunity, opportunityRole, campaignMembership, campaign, listMembership, event
}

/// The type of a value in a definition.
public enum ValueType: Hashable, Sendable, CustomStringConvertible {
    case number, string, boolean, time
    /// The literal `null`, comparable with anything.
    case null
    /// One entity.
    case entity(EntityKind)
    /// A de-duplicated collection of entities.
    case collection(EntityKind)

    public var description: String {
        switch self {
        case .number: "a number"
        case .string: "a string"
        case .boolean: "a boolean"
        case .time: "a timestamp"
        case .null: "null"
        case .entity(let kind): "a \(kind.rawValue)"
        case .collection(let kind): "a collection of \(kind.rawValue) entities"
        }
    }

    /// Scalars: what comparisons, `in` and functions take.
    public var isScalar: Bool {
        switch self {
        case .number, .string, .boolean, .time, .null: true
        case .entity, .collection: false
        }
    }
}

/// The fields a definition can name, per entity kind, with their types: the view schema of
/// `cdp.profile.v1.PersonView` and `AccountView` as the PQL dialect sees it.
///
/// Relations (collection- and entity-valued fields) exist only in the audience whose view carries
/// them: a person view holds the person's accounts and their opportunities, an account view holds the
/// account's opportunities and persons.
public enum Schema {
    /// A field: its type and the audiences in which it can be reached.
    public struct Field: Sendable, Hashable {
        /// The field's type.
        public var type: ValueType
        /// Where it is available.
        public var audiences: Set<Audience>
    }

    static let both: Set<Audience> = [.person, .account]

    /// Every field of every kind.
    public static let fields: [EntityKind: [String: Field]] = [
        .person: scalars([
            "personId": .string, "key": .string, "email": .string, "firstName": .string, "lastName": .string,
            "jobTitle": .string, "personType": .string, "score": .number, "country": .string, "crmId": .string,
            "ecid": .string, "emailOptOut": .boolean, "lastUpdated": .time, "sourceType": .string,
        ]).merging(
            [
                "accounts": Field(type: .collection(.account), audiences: [.person]),
                "opportunities": Field(type: .collection(.opportunity), audiences: [.person]),
                "opportunityRoles": Field(type: .collection(.opportunityRole), audiences: [.person]),
                "campaigns": Field(type: .collection(.campaignMembership), audiences: [.person]),
                "lists": Field(type: .collection(.listMembership), audiences: [.person]),
            ],
            uniquingKeysWith: { first, _ in first }
        ),
        .account: scalars([
            "accountId": .string, "key": .string, "name": .string, "domain": .string, "website": .string,
            "industry": .string, "annualRevenue": .number, "employees": .number, "country": .string,
            "dunsNumber": .string, "crmId": .string, "lastUpdated": .time, "sourceType": .string,
        ]).merging(
            [
                "opportunities": Field(type: .collection(.opportunity), audiences: both),
                "persons": Field(type: .collection(.person), audiences: [.account]),
            ],
            uniquingKeysWith: { first, _ in first }
        ),
        .opportunity: scalars([
            "opportunityId": .string, "key": .string, "name": .string, "stage": .string, "amount": .number,
            "currency": .string, "isClosed": .boolean, "isWon": .boolean, "closeDate": .time, "crmId": .string,
            "lastUpdated": .time, "sourceType": .string,
        ]),
        .opportunityRole: scalars(["role": .string, "isPrimary": .boolean]).merging(
            ["opportunity": Field(type: .entity(.opportunity), audiences: [.person])],
            uniquingKeysWith: { first, _ in first }
        ),
        .campaignMembership: scalars(["status": .string, "hasResponded": .boolean]).merging(
            ["campaign": Field(type: .entity(.campaign), audiences: [.person])],
            uniquingKeysWith: { first, _ in first }
        ),
        .campaign: scalars([
            "campaignId": .string, "key": .string, "name": .string, "type": .string, "status": .string,
        ]),
        .listMembership: scalars(["listId": .string, "key": .string, "name": .string]),
        .event: scalars([
            "eventId": .string, "key": .string, "eventType": .string, "timestamp": .time, "url": .string,
            "name": .string, "email": .string, "ecid": .string,
        ]),
    ]

    private static func scalars(_ types: [String: ValueType]) -> [String: Field] {
        types.mapValues { Field(type: $0, audiences: both) }
    }

    /// The field `name` of `kind`, if there is one.
    public static func field(_ kind: EntityKind, _ name: String) -> Field? { fields[kind]?[name] }

    /// The names of `kind`'s fields reachable in `audience`, sorted: for error messages.
    public static func fieldNames(_ kind: EntityKind, in audience: Audience) -> [String] {
        (fields[kind] ?? [:]).filter { $0.value.audiences.contains(audience) }.keys.sorted()
    }
}

import CDPProto
import SwiftProtobuf

/// The canonical entities of the data model (ARCHITECTURE.md §4), by the names users write in files and
/// requests.
public enum CanonicalEntity: String, CaseIterable, Sendable {
    case person
    case account
    case opportunity
    case accountPersonRelation
    case opportunityPersonRelation
    case campaign
    case campaignMember
    case marketingList
    case marketingListMember
    case event
    case identityLink

    /// The entity named `name`, ignoring case (`Person`, `accountpersonrelation`).
    public init?(name: String) {
        let lowered = name.lowercased()
        guard let match = Self.allCases.first(where: { $0.rawValue.lowercased() == lowered }) else { return nil }
        self = match
    }

    /// The entity's type in the wire model.
    public var entityType: Cdp_Model_V1_EntityType {
        switch self {
        case .person: return .person
        case .account: return .account
        case .opportunity: return .opportunity
        case .accountPersonRelation: return .accountPersonRelation
        case .opportunityPersonRelation: return .opportunityPersonRelation
        case .campaign: return .campaign
        case .campaignMember: return .campaignMember
        case .marketingList: return .marketingList
        case .marketingListMember: return .marketingListMember
        case .event: return .event
        case .identityLink: return .identityLink
        }
    }

    /// The canonical field names of the entity, in documentation order.
    public var fieldNames: [String] { AnyEntitySchema.schema(for: self).fieldNames }
}

/// The type a canonical field's values must have; the parser converts and checks raw values by it.
public enum FieldKind: Sendable, Equatable {
    /// Any text, trimmed.
    case string
    /// An email address: trimmed, lowercased, syntax-checked.
    case email
    /// A decimal number.
    case number
    /// A whole number.
    case integer
    /// A boolean (`true`/`false`, `1`/`0`, `yes`/`no`).
    case boolean
    /// An RFC 3339 date-time.
    case timestamp
    /// An RFC 3339 date-time or a full date (`2026-03-31`).
    case date
    /// One of a fixed set of words (matched ignoring case, stored as written here).
    case enumeration([String])
    /// An ISO 4217 currency code (three letters, stored upper case).
    case currency
    /// A source written `Type:instance` (identity links).
    case source
    /// The record's id in its source, or another entity's: no control characters, at most 512 bytes.
    case identifier

    /// What a value of this kind looks like, for error messages.
    var expectation: String {
        switch self {
        case .string: return "text"
        case .email: return "an email address like name@example.com"
        case .number: return "a number like 1200 or 99.5"
        case .integer: return "a whole number"
        case .boolean: return "true or false"
        case .timestamp: return "an RFC 3339 date-time like 2026-05-01T10:00:00Z"
        case .date: return "a date like 2026-05-01 or an RFC 3339 date-time"
        case .enumeration(let words): return "one of " + words.joined(separator: ", ")
        case .currency: return "a three-letter ISO 4217 currency code like USD"
        case .source: return "a source written Type:instance, like Marketo:mkto-1"
        case .identifier: return "an id of at most 512 bytes without control characters"
        }
    }
}

/// A record being built from one input row: the record, its entity message, and the source.
public struct RecordDraft<Entity: Sendable>: Sendable {
    /// The record (key, source, lastUpdated, isDeleted, custom attributes); its entity is set last.
    public var record: Cdp_Model_V1_Record
    /// The entity message being filled.
    public var entity: Entity
    /// The source of the batch.
    public let source: Cdp_Model_V1_Source
    /// The linked record's source, for identity links (whose `source` column names another source).
    public var linkedSource: Cdp_Model_V1_Source?
}

/// One canonical field of an entity: its name (as in files), type, whether it is required, and how a
/// converted value is stored in the draft.
public struct CanonicalField<Entity: Sendable>: Sendable {
    /// The name in files and requests, e.g. `personId`.
    public let name: String
    /// The type values must have.
    public let kind: FieldKind
    /// A record without a value for it is rejected.
    public let isRequired: Bool
    let store: @Sendable (inout RecordDraft<Entity>, FieldValue) -> Void

    init(
        _ name: String,
        _ kind: FieldKind,
        required: Bool = false,
        store: @escaping @Sendable (inout RecordDraft<Entity>, FieldValue) -> Void
    ) {
        self.name = name
        self.kind = kind
        self.isRequired = required
        self.store = store
    }
}

extension CanonicalField {
    // The setters are closures rather than key paths: a key path held in a value is applied through the
    // runtime on every record; a closure is a direct store.

    /// A text-valued field (string, email, identifier, enumeration, currency), stored by `set`.
    static func text(
        _ name: String,
        _ set: @escaping @Sendable (inout Entity, String) -> Void,
        kind: FieldKind = .string,
        required: Bool = false
    ) -> Self {
        Self(name, kind, required: required) { draft, value in
            if case .string(let text) = value { set(&draft.entity, text) }
        }
    }

    /// A reference to another entity, stored by `set` as a source key: a plain id is taken to be of the
    /// batch's own source (`A1` → `A1@mkto-1.Marketo`); a value that already is a source key is kept.
    static func reference(
        _ name: String,
        _ set: @escaping @Sendable (inout Entity, String) -> Void,
        required: Bool = false
    )
        -> Self
    {
        Self(name, .identifier, required: required) { draft, value in
            if case .string(let id) = value { set(&draft.entity, SourceKey.reference(id, in: draft.source)) }
        }
    }

    static func number(_ name: String, _ set: @escaping @Sendable (inout Entity, Double) -> Void) -> Self {
        Self(name, .number) { draft, value in
            switch value {
            case .number(let number): set(&draft.entity, number)
            case .integer(let number): set(&draft.entity, Double(number))
            default: break
            }
        }
    }

    static func integer(_ name: String, _ set: @escaping @Sendable (inout Entity, Int64) -> Void) -> Self {
        Self(name, .integer) { draft, value in
            if case .integer(let number) = value { set(&draft.entity, number) }
        }
    }

    static func boolean(_ name: String, _ set: @escaping @Sendable (inout Entity, Bool) -> Void) -> Self {
        Self(name, .boolean) { draft, value in
            if case .bool(let flag) = value { set(&draft.entity, flag) }
        }
    }

    static func timestamp(
        _ name: String,
        _ set: @escaping @Sendable (inout Entity, Google_Protobuf_Timestamp) -> Void,
        kind: FieldKind = .timestamp,
        required: Bool = false
    ) -> Self {
        Self(name, kind, required: required) { draft, value in
            if case .timestamp(let time) = value { set(&draft.entity, time) }
        }
    }

    /// The fields every entity has: `lastUpdated` and `isDeleted`.
    static var common: [Self] {
        [
            Self("lastUpdated", .timestamp) { draft, value in
                if case .timestamp(let time) = value { draft.record.lastUpdated = time }
            },
            Self("isDeleted", .boolean) { draft, value in
                if case .bool(let flag) = value { draft.record.isDeleted = flag }
            },
        ]
    }
}

/// The fields of one entity and how a finished draft becomes a record.
public struct EntitySchema<Entity: Sendable>: Sendable {
    /// The entity.
    public let entity: CanonicalEntity
    /// Its fields, the common ones (`lastUpdated`, `isDeleted`) last.
    public let fields: [CanonicalField<Entity>]
    /// An empty entity message.
    let empty: @Sendable () -> Entity
    /// Checks rules across fields and sets the record key; returns the reason when the record is invalid.
    let finish: @Sendable (inout RecordDraft<Entity>) -> FinishError?
    /// Puts the entity message into the record's `entity` oneof.
    let wrap: @Sendable (Entity) -> Cdp_Model_V1_Record.OneOf_Entity

    init(
        _ entity: CanonicalEntity,
        fields: [CanonicalField<Entity>],
        empty: @escaping @Sendable () -> Entity,
        finish: @escaping @Sendable (inout RecordDraft<Entity>) -> FinishError?,
        wrap: @escaping @Sendable (Entity) -> Cdp_Model_V1_Record.OneOf_Entity
    ) {
        self.entity = entity
        self.fields = fields + CanonicalField<Entity>.common
        precondition(self.fields.count < 64, "the mapper tracks fields in a 64-bit set")
        self.empty = empty
        self.finish = finish
        self.wrap = wrap
    }

    /// The index of the field named `name` (ignoring case).
    func fieldIndex(named name: String) -> Int? {
        let lowered = name.lowercased()
        return fields.firstIndex { $0.name.lowercased() == lowered }
    }
}

/// A rule across fields that a record breaks: the field to blame (may be empty) and why.
struct FinishError: Error, Sendable {
    var field: String
    var reason: String
}

/// Builds and reads source keys `{id}@{instance}.{type}`.
public enum SourceKey {
    /// The source key of `id` in `source`.
    public static func make(_ id: String, in source: Cdp_Model_V1_Source) -> String {
        id + "@" + source.instance + "." + source.type
    }

    /// The key a reference names: `value` itself when it already is a source key of some source
    /// (`{id}@{instance}.{type}`, with a type that starts with an upper-case letter, as every source type
    /// does), otherwise `value` as an id of `source`.
    public static func reference(_ value: String, in source: Cdp_Model_V1_Source) -> String {
        isSourceKey(value) ? value : make(value, in: source)
    }

    /// Whether `value` has the shape of a source key.
    public static func isSourceKey(_ value: String) -> Bool {
        guard let at = value.utf8.lastIndex(of: UInt8(ascii: "@")), at != value.utf8.startIndex else { return false }
        let suffix = value.utf8[value.utf8.index(after: at)...]
        guard let dot = suffix.lastIndex(of: UInt8(ascii: ".")), dot != suffix.startIndex else { return false }
        let type = suffix[suffix.index(after: dot)...]
        guard let first = type.first, (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(first) else { return false }
        return true
    }

    /// The id part of `key` when it is a key of `source`, otherwise `key` itself: keeps composite keys
    /// short (`A1/P1@mkto-1.Marketo`) while staying unique across sources.
    static func localPart(of key: String, in source: Cdp_Model_V1_Source) -> String {
        let suffix = "@" + source.instance + "." + source.type
        return key.hasSuffix(suffix) ? String(key.dropLast(suffix.utf8.count)) : key
    }

    /// The key of a record named by two references, e.g. an account-person relation.
    static func composite(_ left: String, _ right: String, in source: Cdp_Model_V1_Source) -> String {
        make(localPart(of: left, in: source) + "/" + localPart(of: right, in: source), in: source)
    }

    /// Parses a source written `Type:instance`.
    public static func parseSource(_ text: String) -> Cdp_Model_V1_Source? {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2, SourceName.isValidType(String(parts[0])), SourceName.isValidInstance(String(parts[1]))
        else { return nil }
        var source = Cdp_Model_V1_Source()
        source.type = String(parts[0])
        source.instance = String(parts[1])
        return source
    }
}

/// The rules for source types and instance ids, which become part of every key.
public enum SourceName {
    /// A type: an upper-case letter, then letters, digits, `-` or `_`; at most 64 bytes.
    public static func isValidType(_ text: String) -> Bool {
        guard let first = text.utf8.first, (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(first) else { return false }
        return text.utf8.count <= 64 && text.utf8.allSatisfy { isWordByte($0) }
    }

    /// An instance: letters, digits, `-` or `_`; at most 64 bytes. (No `.` or `@`, which would make
    /// keys ambiguous.)
    public static func isValidInstance(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 64 && text.utf8.allSatisfy { isWordByte($0) }
    }

    private static func isWordByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }
}

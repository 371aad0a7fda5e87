import CDPProto
import Foundation
import SwiftProtobuf

/// How a value changes on its way from a native column to a canonical field.
public enum ValueTransform: Sendable {
    /// Taken as it is.
    case none
    /// Values in the table are replaced by their entry (matched exactly, then ignoring case); other values
    /// are handled as `otherwise` says.
    case lookup([String: String], otherwise: Otherwise)
    /// The value is a JSON object; the field takes its property of this name (Marketo's activity
    /// `attributes`). A missing property, or a value that is not a JSON object, leaves the field empty.
    case jsonProperty(String)

    /// What a lookup does with a value its table does not have.
    public enum Otherwise: Sendable {
        /// Keep the value.
        case keep
        /// Leave the field empty.
        case drop
        /// Use the template with `{}` replaced by the value (`marketo.activity.{}`).
        case template(String)
    }

    func apply(_ raw: RawValue) -> RawValue? {
        switch self {
        case .none:
            return raw
        case .lookup(let table, let otherwise):
            let text = raw.text
            if let hit = table[text] { return .string(hit) }
            let lowered = text.lowercased()
            if let hit = table.first(where: { $0.key.lowercased() == lowered })?.value { return .string(hit) }
            switch otherwise {
            case .keep: return raw
            case .drop: return nil
            case .template(let template): return .string(template.replacingOccurrences(of: "{}", with: text))
            }
        case .jsonProperty(let name):
            switch raw {
            case .string(let text), .json(let text):
                // Text that is not a JSON object has no such property: the field stays empty, as documented.
                return (try? JSONObjectParser.property(name, in: text)) ?? nil
            case .number, .bool, .null:
                return nil
            }
        }
    }
}

/// One line of a mapping table: a native column feeds a canonical field. A column may feed several
/// fields (Salesforce's `Id` is both the person's id and its CRM id).
public struct ColumnRule: Sendable {
    /// The column's name in the native file (matched ignoring case).
    public let column: String
    /// The canonical field it feeds.
    public let field: String
    /// How the value changes on the way.
    public let transform: ValueTransform

    /// Creates a rule: `column` feeds `field` through `transform`.
    public init(_ column: String, _ field: String, _ transform: ValueTransform = .none) {
        self.column = column
        self.field = field
        self.transform = transform
    }
}

/// A native object (a Salesforce object, a Marketo extract) and how its columns map onto a canonical
/// entity. Columns without a rule become custom attributes under their native name.
public struct NativeObject: Sendable {
    /// The object's name, as given in a batch's `entity` (matched ignoring case).
    public let name: String
    /// The canonical entity its rows become.
    public let entity: CanonicalEntity
    /// The column rules.
    public let rules: [ColumnRule]
    /// Canonical fields set to the same value on every row (e.g. `personType` = `Contact`).
    public let constants: [(field: String, value: String)]
    /// Native columns that are read by nothing and should not become custom attributes either.
    public let ignoredColumns: [String]

    /// Creates an object's mapping.
    public init(
        _ name: String,
        entity: CanonicalEntity,
        rules: [ColumnRule],
        constants: [(field: String, value: String)] = [],
        ignoredColumns: [String] = []
    ) {
        self.name = name
        self.entity = entity
        self.rules = rules
        self.constants = constants
        self.ignoredColumns = ignoredColumns
    }

    /// The canonical object of `entity`: every canonical field name maps onto itself.
    public static func canonical(_ entity: CanonicalEntity) -> NativeObject {
        NativeObject(entity.rawValue, entity: entity, rules: entity.fieldNames.map { ColumnRule($0, $0) })
    }
}

/// The objects of one native format.
public struct NativeFormat: Sendable {
    /// The format's name, for messages.
    public let name: String
    /// Its objects.
    public let objects: [NativeObject]

    /// The object named `name`, ignoring case.
    public func object(named name: String) -> NativeObject? {
        let lowered = name.lowercased()
        return objects.first { $0.name.lowercased() == lowered }
    }
}

/// What each input column feeds, resolved once per file header (or per NDJSON property name).
struct ColumnPlan: Sendable {
    enum Target: Sendable {
        /// The canonical field at this index of the schema.
        case field(Int, ValueTransform)
        /// A custom attribute of this name.
        case custom(String)
    }

    struct Column: Sendable {
        /// The column's name in the input, for error messages.
        let label: String
        let targets: [Target]
    }

    var columns: [Column] = []
}

/// A record mapped from one input row, or the reasons it was rejected.
public enum MappedRecord: Sendable {
    case record(Cdp_Model_V1_Record)
    case rejected([FieldError])
}

/// Why a field of a record is invalid.
public struct FieldError: Sendable, Equatable {
    /// The field as the input names it (column or property); empty for the record as a whole.
    public var field: String
    /// What was wrong and what was expected.
    public var reason: String

    /// Creates an error.
    public init(field: String, reason: String) {
        self.field = field
        self.reason = reason
    }
}

/// One cell of an input row: a column of the plan and its raw value.
struct Cell: Sendable {
    var column: Int
    var value: RawValue
}

/// Maps rows of cells onto records of one entity; a type-erased `EntityMapper`.
protocol RowMapper: Sendable {
    func map(_ cells: [Cell], plan: ColumnPlan) -> MappedRecord
}

/// Maps rows onto records of one entity: converts each cell by its field's kind, stores it, applies the
/// constants, checks required fields and cross-field rules, and builds the key.
struct EntityMapper<Entity: Sendable>: RowMapper {
    let schema: EntitySchema<Entity>
    let base: Cdp_Model_V1_Record
    let source: Cdp_Model_V1_Source
    let constants: [(field: Int, value: FieldValue)]
    let requiredFields: [Int]

    // Called through `any RowMapper`, so unspecialized; the specializations below spare the generic
    // metadata lookups that otherwise dominate the per-record cost (measured with perf).
    @_specialize(where Entity == Cdp_Model_V1_Person)
    @_specialize(where Entity == Cdp_Model_V1_Account)
    @_specialize(where Entity == Cdp_Model_V1_Opportunity)
    @_specialize(where Entity == Cdp_Model_V1_AccountPersonRelation)
    @_specialize(where Entity == Cdp_Model_V1_OpportunityPersonRelation)
    @_specialize(where Entity == Cdp_Model_V1_Campaign)
    @_specialize(where Entity == Cdp_Model_V1_CampaignMember)
    @_specialize(where Entity == Cdp_Model_V1_MarketingList)
    @_specialize(where Entity == Cdp_Model_V1_MarketingListMember)
    @_specialize(where Entity == Cdp_Model_V1_ExperienceEvent)
    @_specialize(where Entity == Cdp_Model_V1_IdentityLink)
    func map(_ cells: [Cell], plan: ColumnPlan) -> MappedRecord {
        var draft = RecordDraft(record: base, entity: schema.empty(), source: source, linkedSource: nil)
        // Fields by index as bits (schemas have fewer than 64 fields).
        var present = FieldSet()
        var invalid = FieldSet()
        var errors: [FieldError] = []
        // Elements are read in place (no copies of columns or fields, whose strings and closures would be
        // retained and released for every cell).
        for cell in cells {
            for target in plan.columns[cell.column].targets {
                switch target {
                case .custom(let name):
                    draft.record.customAttributes[name] = Self.attribute(cell.value)
                case .field(let index, let transform):
                    guard let raw = transform.apply(cell.value) else { continue }
                    switch FieldConverter.convert(raw, to: schema.fields[index].kind) {
                    case .success(nil):
                        continue
                    case .success(let value?):
                        schema.fields[index].store(&draft, value)
                        present.insert(index)
                    case .failure(let reason):
                        invalid.insert(index)
                        errors.append(FieldError(field: plan.columns[cell.column].label, reason: reason.message))
                    }
                }
            }
        }
        for (index, value) in constants where !present.contains(index) {
            schema.fields[index].store(&draft, value)
            present.insert(index)
        }
        // A field that is present but invalid already has its error.
        for index in requiredFields where !present.contains(index) && !invalid.contains(index) {
            let name = schema.fields[index].name
            errors.append(
                FieldError(
                    field: name,
                    reason: "\(name) is required for \(schema.entity.rawValue) and is missing or empty"
                        + Self.unknownFieldsHint(draft.record.customAttributes.keys, entity: schema.entity.rawValue)
                )
            )
        }
        guard errors.isEmpty else { return .rejected(errors) }
        if let failure = schema.finish(&draft) {
            return .rejected([FieldError(field: failure.field, reason: failure.reason)])
        }
        draft.record.entity = schema.wrap(draft.entity)
        return .record(draft.record)
    }

    /// For a missing required field: the record's fields this entity does not have, which were kept as
    /// custom attributes (a misspelt field name, `key` for `eventId`, is the usual reason).
    private static func unknownFieldsHint(_ names: some Collection<String>, entity: String) -> String {
        guard !names.isEmpty else { return "" }
        let listed = names.sorted().prefix(5).joined(separator: ", ") + (names.count > 5 ? ", …" : "")
        return " (fields that are not \(entity) fields, kept as custom attributes: \(listed))"
    }

    private static func attribute(_ raw: RawValue) -> Cdp_Model_V1_AttributeValue {
        var attribute = Cdp_Model_V1_AttributeValue()
        switch raw {
        case .string(let text): attribute.stringValue = text
        case .number(let number): attribute.numberValue = number
        case .bool(let flag): attribute.boolValue = flag
        case .json(let text): attribute.jsonValue = text
        case .null: break
        }
        return attribute
    }
}

/// A set of field indexes below 64, as bits.
struct FieldSet {
    private var bits: UInt64 = 0

    func contains(_ index: Int) -> Bool { bits & (1 << UInt64(index)) != 0 }

    mutating func insert(_ index: Int) { bits |= 1 << UInt64(index) }
}

/// A conversion failure's message.
struct ConversionFailure: Error {
    var message: String
}

/// Converts raw values to a field kind. Empty text and null mean "absent" (nil), not an error.
enum FieldConverter {
    static func convert(_ raw: RawValue, to kind: FieldKind) -> Result<FieldValue?, ConversionFailure> {
        if case .null = raw { return .success(nil) }
        switch kind {
        case .number:
            if case .number(let number) = raw { return .success(.number(number)) }
        case .integer:
            if case .number(let number) = raw {
                guard number.rounded() == number, abs(number) < 9.0e15 else { return failure(raw, kind) }
                return .success(.integer(Int64(number)))
            }
        case .boolean:
            if case .bool(let flag) = raw { return .success(.bool(flag)) }
        default:
            break
        }
        if case .json = raw, kind != .string { return failure(raw, kind) }
        let text = Normalize.trim(raw.text)
        if text.isEmpty { return .success(nil) }
        switch kind {
        case .string:
            return .success(.string(text))
        case .email:
            let email = Normalize.email(text)
            return FieldParsers.isEmail(email) ? .success(.string(email)) : failure(raw, kind)
        case .number:
            return FieldParsers.number(text).map { .success(.number($0)) } ?? failure(raw, kind)
        case .integer:
            return FieldParsers.integer(text).map { .success(.integer($0)) } ?? failure(raw, kind)
        case .boolean:
            return FieldParsers.bool(text).map { .success(.bool($0)) } ?? failure(raw, kind)
        case .timestamp, .date:
            return FieldParsers.timestamp(text, allowDate: kind == .date).map { .success(.timestamp($0)) }
                ?? failure(raw, kind)
        case .enumeration(let words):
            let lowered = text.lowercased()
            return words.first { $0.lowercased() == lowered }.map { .success(.string($0)) } ?? failure(raw, kind)
        case .currency:
            guard text.utf8.count == 3, text.utf8.allSatisfy({ ($0 | 0x20) >= 0x61 && ($0 | 0x20) <= 0x7A }) else {
                return failure(raw, kind)
            }
            return .success(.string(text.uppercased()))
        case .source:
            return SourceKey.parseSource(text) != nil ? .success(.string(text)) : failure(raw, kind)
        case .identifier:
            guard text.utf8.count <= 512, !text.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) else {
                return failure(raw, kind)
            }
            return .success(.string(text))
        }
    }

    private static func failure(_ raw: RawValue, _ kind: FieldKind) -> Result<FieldValue?, ConversionFailure> {
        var shown = raw.text
        if shown.utf8.count > 60 { shown = String(shown.prefix(57)) + "..." }
        return .failure(ConversionFailure(message: "expected \(kind.expectation), found \"\(shown)\""))
    }
}

/// An entity schema without its message type: what the format layer needs to plan columns and make a
/// mapper.
struct AnyEntitySchema: Sendable {
    let entity: CanonicalEntity
    let fieldNames: [String]
    let requiredFieldNames: [String]
    private let fieldIndex: @Sendable (String) -> Int?
    private let fieldKind: @Sendable (Int) -> FieldKind
    private let makeMapper: @Sendable (Cdp_Model_V1_Source, [(field: Int, value: FieldValue)]) -> any RowMapper

    init<Entity>(_ schema: EntitySchema<Entity>) {
        entity = schema.entity
        fieldNames = schema.fields.map(\.name)
        requiredFieldNames = schema.fields.filter(\.isRequired).map(\.name)
        fieldIndex = { schema.fieldIndex(named: $0) }
        fieldKind = { schema.fields[$0].kind }
        makeMapper = { source, constants in
            var base = Cdp_Model_V1_Record()
            base.source = source
            return EntityMapper(
                schema: schema,
                base: base,
                source: source,
                constants: constants,
                requiredFields: schema.fields.indices.filter { schema.fields[$0].isRequired }
            )
        }
    }

    func index(ofField name: String) -> Int? { fieldIndex(name) }
    func kind(ofField index: Int) -> FieldKind { fieldKind(index) }

    func mapper(source: Cdp_Model_V1_Source, constants: [(field: Int, value: FieldValue)]) -> any RowMapper {
        makeMapper(source, constants)
    }

    static func schema(for entity: CanonicalEntity) -> AnyEntitySchema {
        switch entity {
        case .person: return AnyEntitySchema(EntitySchema.person)
        case .account: return AnyEntitySchema(EntitySchema.account)
        case .opportunity: return AnyEntitySchema(EntitySchema.opportunity)
        case .accountPersonRelation: return AnyEntitySchema(EntitySchema.accountPersonRelation)
        case .opportunityPersonRelation: return AnyEntitySchema(EntitySchema.opportunityPersonRelation)
        case .campaign: return AnyEntitySchema(EntitySchema.campaign)
        case .campaignMember: return AnyEntitySchema(EntitySchema.campaignMember)
        case .marketingList: return AnyEntitySchema(EntitySchema.marketingList)
        case .marketingListMember: return AnyEntitySchema(EntitySchema.marketingListMember)
        case .event: return AnyEntitySchema(EntitySchema.event)
        case .identityLink: return AnyEntitySchema(EntitySchema.identityLink)
        }
    }
}

import CDPProto

/// One input record after parsing and mapping: a valid record, or why it was rejected.
public struct ParsedRecord: Sendable {
    /// The 1-based line where the record starts (0 for typed records).
    public var line: UInt64
    /// The 1-based position of the record in the batch.
    public var number: UInt64
    /// The record or its errors.
    public var result: MappedRecord
}

/// Why a whole batch cannot be read: a wrong header, bad encoding, an unknown entity.
public struct BatchFailure: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong and where, for the user.
    public var message: String

    /// Creates a failure with its message.
    public init(_ message: String) { self.message = message }

    public var description: String { message }
}

/// The largest record accepted, in bytes of input (DESIGN: 100 KB).
public let maxRecordBytes = 100 * 1024

/// Parses a batch's bytes, in pieces of any size, into mapped records: the format layer's one entry
/// point. Memory stays bounded by the longest record, whatever the file's size.
public struct BatchParser {
    private enum Reader {
        case csv(CSVReader)
        case ndjson(LineSplitter)
    }

    private let format: Cdp_Ingestion_V1_Format
    private let object: NativeObject
    private let schema: AnyEntitySchema
    private let source: Cdp_Model_V1_Source
    private var reader: Reader
    /// Set once the CSV header is read, or at once for NDJSON.
    private var plan: ColumnPlan?
    private var mapper: (any RowMapper)?
    /// For NDJSON: property name → column of the plan.
    private var columnsByName: [String: Int] = [:]
    private var recordCount: UInt64 = 0
    private var rows: [CSVReader.Row] = []
    private var lines: [LineSplitter.Line] = []
    private var cells: [Cell] = []

    /// A parser for a batch of `entity` in `format` from `source`.
    ///
    /// - Throws: `BatchFailure` when the format does not have the entity (the message lists those it has).
    public init(format: Cdp_Ingestion_V1_Format, entity: String, source: Cdp_Model_V1_Source) throws(BatchFailure) {
        self.format = format
        self.source = source
        switch format {
        case .canonicalCsv, .canonicalNdjson:
            guard let canonical = CanonicalEntity(name: entity) else {
                throw BatchFailure(
                    "unknown entity \"\(entity)\"; canonical formats take one of: "
                        + CanonicalEntity.allCases.map(\.rawValue).joined(separator: ", ")
                )
            }
            object = .canonical(canonical)
        case .salesforceCsv, .marketoCsv, .mdmCsv:
            let native: NativeFormat = format == .salesforceCsv ? .salesforce : format == .marketoCsv ? .marketo : .mdm
            let name = format == .mdmCsv && entity.isEmpty ? "identityLink" : entity
            guard let match = native.object(named: name) else {
                throw BatchFailure(
                    "unknown \(native.name) object \"\(entity)\"; it has: "
                        + native.objects.map(\.name).joined(separator: ", ")
                )
            }
            object = match
        case .unspecified, .UNRECOGNIZED:
            throw BatchFailure("the batch names no format (canonical CSV, canonical NDJSON, Salesforce, Marketo, MDM)")
        }
        schema = AnyEntitySchema.schema(for: object.entity)
        if format == .canonicalNdjson {
            reader = .ndjson(LineSplitter(maxLineBytes: maxRecordBytes))
            let plan = try Self.makePlan(columns: [], object: object, schema: schema)
            self.plan = plan
            mapper = try schema.mapper(source: source, constants: Self.constants(of: object, schema: schema))
        } else {
            reader = .csv(CSVReader(maxRowBytes: maxRecordBytes))
        }
    }

    /// The canonical entity the batch's records become.
    public var entity: CanonicalEntity { object.entity }

    /// Parses the next piece of the input, appending the records it completes to `output`.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer, into output: inout [ParsedRecord]) throws(BatchFailure) {
        switch reader {
        case .csv(var csv):
            rows.removeAll(keepingCapacity: true)
            do { try csv.read(bytes, into: &rows) } catch { throw BatchFailure(error.message) }
            reader = .csv(csv)
            try mapRows(into: &output)
        case .ndjson(var splitter):
            lines.removeAll(keepingCapacity: true)
            splitter.read(bytes, into: &lines)
            reader = .ndjson(splitter)
            mapLines(into: &output)
        }
    }

    /// Ends the input, appending the last record if the input does not end with a line break.
    ///
    /// - Throws: `BatchFailure` if the input ends inside a quoted field or is empty (no header).
    public mutating func finish(into output: inout [ParsedRecord]) throws(BatchFailure) {
        switch reader {
        case .csv(var csv):
            rows.removeAll(keepingCapacity: true)
            do { try csv.finish(into: &rows) } catch { throw BatchFailure(error.message) }
            reader = .csv(csv)
            try mapRows(into: &output)
            if plan == nil { throw BatchFailure("the file is empty: expected a header row") }
        case .ndjson(var splitter):
            lines.removeAll(keepingCapacity: true)
            splitter.finish(into: &lines)
            reader = .ndjson(splitter)
            mapLines(into: &output)
        }
    }

    private mutating func mapRows(into output: inout [ParsedRecord]) throws(BatchFailure) {
        for row in rows {
            guard let plan, let mapper else {
                guard !row.isOversized else { throw BatchFailure("line \(row.line): the header row is too long") }
                if let problem = row.problem { throw BatchFailure("line \(row.line): the header row: \(problem)") }
                let plan = try Self.makePlan(columns: row.fields, object: object, schema: schema)
                self.plan = plan
                self.mapper = try schema.mapper(source: source, constants: Self.constants(of: object, schema: schema))
                continue
            }
            recordCount += 1
            // A row that cannot be read as written is rejected whole.
            if let unreadable = Self.whyUnreadable(row, columns: plan.columns.count) {
                output.append(Self.rejected(line: row.line, number: recordCount, reason: unreadable))
                continue
            }
            cells.removeAll(keepingCapacity: true)
            for (column, text) in row.fields.enumerated() where !text.isEmpty {
                cells.append(Cell(column: column, value: .string(text)))
            }
            output.append(ParsedRecord(line: row.line, number: recordCount, result: mapper.map(cells, plan: plan)))
        }
    }

    private mutating func mapLines(into output: inout [ParsedRecord]) {
        guard var plan, let mapper else { return }
        for line in lines {
            if !line.isOversized, line.bytes.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
            recordCount += 1
            if line.isOversized {
                output.append(Self.rejected(line: line.number, number: recordCount, reason: Self.oversizedReason))
                continue
            }
            let parsed = line.bytes.withUnsafeBytes { bytes in
                Result { () throws(JSONObjectParser.Failure) in try JSONObjectParser.parse(bytes) }
            }
            guard case .success(let properties) = parsed else {
                if case .failure(let error) = parsed {
                    let reason = "not a JSON object: \(error.message) (column \(error.column))"
                    let rejected = MappedRecord.rejected([FieldError(field: "", reason: reason)])
                    output.append(ParsedRecord(line: line.number, number: recordCount, result: rejected))
                }
                continue
            }
            cells.removeAll(keepingCapacity: true)
            for (name, value) in properties {
                let column: Int
                if let known = columnsByName[name] {
                    column = known
                } else {
                    column = plan.columns.count
                    plan.columns.append(Self.column(named: name, object: object, schema: schema))
                    columnsByName[name] = column
                }
                cells.append(Cell(column: column, value: value))
            }
            output.append(ParsedRecord(line: line.number, number: recordCount, result: mapper.map(cells, plan: plan)))
        }
        self.plan = plan
    }

    private static let oversizedReason = "the record is longer than \(maxRecordBytes) bytes"

    /// Why a CSV row cannot be read as a record, if it cannot.
    private static func whyUnreadable(_ row: CSVReader.Row, columns: Int) -> String? {
        if row.isOversized { return oversizedReason }
        if let problem = row.problem { return problem }
        if row.fields.count != columns {
            return "expected \(columns) fields like the header, found \(row.fields.count)"
        }
        return nil
    }

    /// A record rejected whole, for `reason`.
    private static func rejected(line: UInt64, number: UInt64, reason: String) -> ParsedRecord {
        ParsedRecord(line: line, number: number, result: .rejected([FieldError(field: "", reason: reason)]))
    }

    /// Resolves a CSV header: every column's targets; fails on duplicate names and on missing key columns.
    private static func makePlan(
        columns: [String],
        object: NativeObject,
        schema: AnyEntitySchema
    ) throws(BatchFailure)
        -> ColumnPlan
    {
        var plan = ColumnPlan()
        var seen = Set<String>()
        for name in columns {
            let trimmed = Normalize.trim(name)
            guard !trimmed.isEmpty else {
                throw BatchFailure("line 1: column \(plan.columns.count + 1) of the header has no name")
            }
            guard seen.insert(trimmed.lowercased()).inserted else {
                throw BatchFailure("line 1: the header names column \"\(trimmed)\" twice")
            }
            plan.columns.append(column(named: trimmed, object: object, schema: schema))
        }
        if !columns.isEmpty {
            // Every required canonical field must be fed by some column (or a constant).
            let fed = Set(
                plan.columns.flatMap(\.targets).compactMap { target -> Int? in
                    if case .field(let index, _) = target { return index }
                    return nil
                }
            )
            let constants = Set(object.constants.compactMap { schema.index(ofField: $0.field) })
            for name in schema.requiredFieldNames {
                guard let index = schema.index(ofField: name), !fed.contains(index), !constants.contains(index) else {
                    continue
                }
                let feeding = object.rules.filter { $0.field == name }.map(\.column)
                throw BatchFailure(
                    "line 1: the header has no column for \(name), which \(object.entity.rawValue) requires"
                        + " (expected \(feeding.map { "\"\($0)\"" }.joined(separator: " or "))); found: "
                        + columns.joined(separator: ", ")
                )
            }
        }
        return plan
    }

    private static func column(named name: String, object: NativeObject, schema: AnyEntitySchema) -> ColumnPlan.Column {
        let lowered = name.lowercased()
        if object.ignoredColumns.contains(where: { $0.lowercased() == lowered }) {
            return ColumnPlan.Column(label: name, targets: [])
        }
        let targets: [ColumnPlan.Target] = object.rules.compactMap { rule in
            guard rule.column.lowercased() == lowered, let index = schema.index(ofField: rule.field) else { return nil }
            return .field(index, rule.transform)
        }
        return ColumnPlan.Column(label: name, targets: targets.isEmpty ? [.custom(name)] : targets)
    }

    private static func constants(
        of object: NativeObject,
        schema: AnyEntitySchema
    ) throws(BatchFailure)
        -> [(field: Int, value: FieldValue)]
    {
        var constants: [(field: Int, value: FieldValue)] = []
        for (field, text) in object.constants {
            guard let index = schema.index(ofField: field),
                case .success(let value?) = FieldConverter.convert(.string(text), to: schema.kind(ofField: index))
            else {
                throw BatchFailure("mapping \(object.name): constant \(field)=\(text) does not fit the field")
            }
            constants.append((index, value))
        }
        return constants
    }
}

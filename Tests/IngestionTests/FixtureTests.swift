import CDPProto
import Foundation
import SwiftProtobuf
import Testing

@testable import IngestionFormats

/// Every fixture under `Fixtures/` parsed with the real `BatchParser` and compared with what
/// `Fixtures/EXPECTED.md` says it must produce: the record counts, the rejected lines and the fields blamed,
/// and for each good line listed there its key, every canonical field and its custom attributes. The
/// expectations are read from the markdown at run time, so the document and the parser cannot drift apart
/// unnoticed; a line of a file section that the reader does not understand fails the suite.
@Suite("Fixtures match EXPECTED.md")
struct FixtureTests {
    @Test("A fixture produces the records EXPECTED.md lists", arguments: try ExpectedDocument.fileNames())
    func fixtureProducesTheExpectedRecords(file: String) throws {
        let expected = try ExpectedDocument.expectation(for: file)
        let context = "\(file) (EXPECTED.md line \(expected.headerLine))"
        #expect(try expected.makeParser().entity.rawValue == expected.entity, "\(context): entity")
        let output = try expected.parse()

        let rejections = output.compactMap { parsed -> (line: UInt64, errors: [FieldError])? in
            guard case .rejected(let errors) = parsed.result else { return nil }
            return (parsed.line, errors)
        }
        #expect(output.count == expected.total, "\(context): records")
        #expect(output.count - rejections.count == expected.good, "\(context): good records")
        #expect(rejections.count == expected.rejected, "\(context): rejected records")
        #expect(output.map(\.number) == (0..<output.count).map { UInt64($0) + 1 }, "\(context): record numbers")

        // Compared as sorted lists: the order in which the mapper reports a record's errors is not part of
        // the contract.
        let actualFields = Dictionary(
            rejections.map { ($0.line, $0.errors.map(\.field).sorted()) },
            uniquingKeysWith: { first, _ in first }
        )
        let reasons = rejections.map { rejection in
            "line \(rejection.line): "
                + rejection.errors.map { "\($0.field.isEmpty ? "(record)" : $0.field): \($0.reason)" }
                .joined(separator: "; ")
        }
        #expect(
            actualFields == expected.rejections.mapValues { $0.sorted() },
            "\(context): rejected lines and fields; the parser said:\n\(reasons.joined(separator: "\n"))"
        )

        let byLine = Dictionary(output.map { ($0.line, $0) }, uniquingKeysWith: { first, _ in first })
        for good in expected.goodLines {
            let place = "\(file) line \(good.line) (EXPECTED.md line \(good.documentLine))"
            guard let parsed = byLine[good.line] else {
                Issue.record("\(place): no record starts on this line")
                continue
            }
            guard case .record(let record) = parsed.result else {
                Issue.record("\(place): rejected: \(String(describing: parsed.result))")
                continue
            }
            #expect(record.key == good.key, "\(place): key")
            #expect(record.source == expected.source, "\(place): source")
            let fields = Notation.fields(of: record)
            #expect(fields == good.fields, "\(place): fields\n\(Notation.difference(fields, good.fields))")
            let custom = Notation.customAttributes(of: record)
            #expect(custom == good.custom, "\(place): custom attributes\n\(Notation.difference(custom, good.custom))")
        }
    }

    @Test(
        "Feeding a fixture in pieces gives the records of one piece",
        arguments: try ExpectedDocument.fileNames(),
        [1, 7, 4096]
    )
    func piecesGiveTheSameRecords(file: String, pieceSize: Int) throws {
        let expected = try ExpectedDocument.expectation(for: file)
        let whole = try expected.parse().map(Snapshot.init)
        let pieces = try expected.parse(pieceSize: pieceSize).map(Snapshot.init)
        let firstDifference =
            zip(pieces, whole).first { pair in pair.0 != pair.1 }
            .map { pair in "\n in pieces: \(pair.0)\n whole:     \(pair.1)" } ?? " (none in the common prefix)"
        let summary = "\(file) in pieces of \(pieceSize) bytes: \(pieces.count) records, whole: \(whole.count)"
        #expect(pieces == whole, "\(summary); first difference:\(firstDifference)")
    }

    @Test("Every fixture file has a section in EXPECTED.md")
    func everyFixtureIsDescribed() throws {
        var present = Set<String>()
        for directory in ExpectedDocument.directories {
            let url = ExpectedDocument.fixtures.appendingPathComponent(directory)
            let names = try FileManager.default.contentsOfDirectory(atPath: url.path)
            present.formUnion(names.filter { !$0.hasPrefix(".") }.map { "\(directory)/\($0)" })
        }
        let described = Set(try ExpectedDocument.fileNames())
        #expect(present.subtracting(described).sorted() == [], "fixtures without a section")
        #expect(described.subtracting(present).sorted() == [], "sections without a fixture")
    }
}

/// One parsed record in a comparable form.
private struct Snapshot: Equatable, CustomStringConvertible {
    var line: UInt64
    var number: UInt64
    var record: Cdp_Model_V1_Record?
    var errors: [FieldError]

    init(_ parsed: ParsedRecord) {
        line = parsed.line
        number = parsed.number
        switch parsed.result {
        case .record(let record):
            self.record = record
            errors = []
        case .rejected(let errors):
            record = nil
            self.errors = errors
        }
    }

    var description: String {
        let result = record.map { "\n\($0.textFormatString())" } ?? "rejected \(errors)"
        return "#\(number) line \(line): \(result)"
    }
}

// MARK: - EXPECTED.md

/// What one fixture file must produce, as a `###` section of EXPECTED.md states it.
private struct FileExpectation: Sendable {
    /// The path under `Fixtures/`, e.g. `salesforce/Account.csv`.
    var path: String
    /// The canonical entity the file's records are.
    var entity: String
    var source: Cdp_Model_V1_Source
    /// The line of EXPECTED.md with the section's heading.
    var headerLine: Int
    var total = 0
    var good = 0
    var rejected = 0
    var sawCounts = false
    /// Rejected line → the fields its errors name.
    var rejections: [UInt64: [String]] = [:]
    var goodLines: [GoodLine] = []

    struct GoodLine: Sendable {
        var line: UInt64
        var key: String
        /// Canonical field name → value in EXPECTED.md's notation (`Notation`).
        var fields: [String: String] = [:]
        var custom: [String: String] = [:]
        var hasFields = false
        var hasCustom = false
        var documentLine: Int
    }

    var directory: String { String(path.prefix { $0 != "/" }) }

    var format: Cdp_Ingestion_V1_Format {
        switch directory {
        case "salesforce": return .salesforceCsv
        case "marketo": return .marketoCsv
        case "mdm": return .mdmCsv
        default: return path.hasSuffix(".ndjson") ? .canonicalNdjson : .canonicalCsv
        }
    }

    /// The batch's `entity`: a Salesforce or Marketo file is the object its file name names (`Account`,
    /// `leads`); a canonical file and the MDM crosswalk are their entity (`persons.ndjson` is `person`).
    var batchEntity: String {
        switch format {
        case .salesforceCsv, .marketoCsv: return URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        default: return entity
        }
    }

    func makeParser() throws -> BatchParser {
        try BatchParser(format: format, entity: batchEntity, source: source)
    }

    /// The fixture's records, its bytes fed to the parser `pieceSize` bytes at a time.
    func parse(pieceSize: Int = .max) throws -> [ParsedRecord] {
        let data = try Data(contentsOf: ExpectedDocument.fixtures.appendingPathComponent(path))
        var parser = try makeParser()
        var output: [ParsedRecord] = []
        try data.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) throws in
            var start = 0
            while start < bytes.count {
                let end = start + min(pieceSize, bytes.count - start)
                try parser.feed(UnsafeRawBufferPointer(rebasing: bytes[start..<end]), into: &output)
                start = end
            }
        }
        try parser.finish(into: &output)
        return output
    }
}

/// A line of EXPECTED.md that the reader does not understand, or a section that contradicts itself.
private struct DocumentError: Error, CustomStringConvertible {
    var line: Int
    var text: String
    var problem: String

    var description: String { "EXPECTED.md line \(line): \(problem): \(text)" }
}

/// Reads the `### file` sections under `## Per file` of EXPECTED.md. A section holds, in any order, one
/// `Records: N (G good, R rejected).` line, a table of rejected lines, and items `- line N: key ...`, each
/// followed by its `  - fields: ...` and optionally `  - custom: ...`. Everything outside `## Per file` is
/// prose and is skipped.
private enum ExpectedDocument {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    static let directories = ["salesforce", "marketo", "mdm", "canonical"]

    private static let loaded = Result {
        try read(String(contentsOf: fixtures.appendingPathComponent("EXPECTED.md"), encoding: .utf8))
    }

    static func fileNames() throws -> [String] {
        try loaded.get().map(\.path)
    }

    static func expectation(for path: String) throws -> FileExpectation {
        guard let match = try loaded.get().first(where: { $0.path == path }) else {
            throw DocumentError(line: 0, text: path, problem: "no section for the file")
        }
        return match
    }

    static func read(_ document: String) throws -> [FileExpectation] {
        var files: [FileExpectation] = []
        var section: FileExpectation?
        var inPerFile = false
        for (offset, line) in document.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = offset + 1
            if line.hasPrefix("## ") || line.hasPrefix("### ") {
                if let finished = section { files.append(try checked(finished)) }
                section = nil
                if line.hasPrefix("## ") {
                    inPerFile = line == "## Per file"
                    continue
                }
            }
            guard inPerFile else { continue }
            if line.hasPrefix("### ") {
                let file = try heading(line, at: number)
                guard !files.contains(where: { $0.path == file.path }) else {
                    throw DocumentError(line: number, text: String(line), problem: "a second section for the file")
                }
                section = file
                continue
            }
            if line.isEmpty { continue }
            guard var current = section else {
                throw DocumentError(line: number, text: String(line), problem: "text before the first file section")
            }
            try read(line, at: number, into: &current)
            section = current
        }
        if let finished = section { files.append(try checked(finished)) }
        guard !files.isEmpty else {
            throw DocumentError(line: 0, text: "", problem: "no file sections under \"## Per file\"")
        }
        return files
    }

    private static func heading(_ line: Substring, at number: Int) throws -> FileExpectation {
        let pattern = #/### `(?<directory>\w+)/(?<file>[^`/]+)` — (?<entity>\w+), source `(?<source>[^`]+)`/#
        guard let match = line.wholeMatch(of: pattern), directories.contains(String(match.directory)),
            let source = SourceKey.parseSource(String(match.source))
        else {
            throw DocumentError(
                line: number,
                text: String(line),
                problem: "expected ### `directory/file` — entity, source `Type:instance`, directory one of "
                    + directories.joined(separator: ", ")
            )
        }
        return FileExpectation(
            path: "\(match.directory)/\(match.file)",
            entity: String(match.entity),
            source: source,
            headerLine: number
        )
    }

    private static func read(_ line: Substring, at number: Int, into file: inout FileExpectation) throws {
        func failure(_ problem: String) -> DocumentError {
            DocumentError(line: number, text: String(line), problem: problem)
        }
        func integer(_ text: Substring) throws -> Int {
            guard let value = Int(text) else { throw failure("not a number: \(text)") }
            return value
        }

        if let match = line.wholeMatch(of: #/Records: (\d+) \((\d+) good, (\d+) rejected\)\./#) {
            guard !file.sawCounts else { throw failure("a second Records line") }
            file.sawCounts = true
            file.total = try integer(match.1)
            file.good = try integer(match.2)
            file.rejected = try integer(match.3)
        } else if line == "| line | rejected because |" || line == "|---|---|" {
            return
        } else if let match = line.wholeMatch(of: #/\| (\d+) \| (.+) \|/#) {
            let rejectedLine = UInt64(try integer(match.1))
            guard file.rejections[rejectedLine] == nil else { throw failure("line \(rejectedLine) listed twice") }
            guard let fields = rejectedFields(match.2) else { throw failure("no `field` in a clause of the reason") }
            file.rejections[rejectedLine] = fields
        } else if let match = line.wholeMatch(of: #/- line (\d+): key `([^`]+)`/#) {
            if let last = file.goodLines.last, !last.hasFields {
                throw failure("line \(last.line) has no fields item")
            }
            let goodLine = UInt64(try integer(match.1))
            guard !file.goodLines.contains(where: { $0.line == goodLine }) else {
                throw failure("line \(goodLine) listed twice")
            }
            file.goodLines.append(
                FileExpectation.GoodLine(line: goodLine, key: String(match.2), documentLine: number)
            )
        } else if let match = line.wholeMatch(of: #/  - (fields|custom): (.+)/#) {
            guard let index = file.goodLines.indices.last else { throw failure("an item before any `- line N`") }
            guard let values = Notation.assignments(match.2) else {
                throw failure("expected `name`=value, `name`=value, ... (values as Conventions say)")
            }
            var map: [String: String] = [:]
            for (name, value) in values {
                guard map.updateValue(value, forKey: name) == nil else { throw failure("\(name) given twice") }
            }
            if match.1 == "fields" {
                guard !file.goodLines[index].hasFields else { throw failure("a second fields item") }
                // A record's isDeleted has no presence bit: false and absent are the same stored value.
                if map["isDeleted"] == "false" { map["isDeleted"] = nil }
                file.goodLines[index].fields = map
                file.goodLines[index].hasFields = true
            } else {
                guard file.goodLines[index].hasFields, !file.goodLines[index].hasCustom else {
                    throw failure("custom must follow fields, once")
                }
                file.goodLines[index].custom = map
                file.goodLines[index].hasCustom = true
            }
        } else {
            throw failure("not understood in a file section")
        }
    }

    /// The fields a reason names: the first `backticked` name of each `; `-separated clause (a record may
    /// have several errors).
    private static func rejectedFields(_ reason: Substring) -> [String]? {
        var fields: [String] = []
        for clause in reason.split(separator: "; ") {
            let parts = clause.split(separator: "`", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3, !parts[1].isEmpty else { return nil }
            fields.append(String(parts[1]))
        }
        return fields.isEmpty ? nil : fields
    }

    private static func checked(_ file: FileExpectation) throws -> FileExpectation {
        func failure(_ problem: String) -> DocumentError {
            DocumentError(line: file.headerLine, text: file.path, problem: problem)
        }
        guard file.sawCounts else { throw failure("the section has no Records line") }
        guard file.good + file.rejected == file.total else { throw failure("good + rejected != records") }
        guard file.rejections.count == file.rejected else { throw failure("the table does not list every rejection") }
        guard file.goodLines.count <= file.good else { throw failure("more good lines listed than good records") }
        if let incomplete = file.goodLines.first(where: { !$0.hasFields }) {
            throw failure("line \(incomplete.line) has no fields item")
        }
        return file
    }
}

// MARK: - Values in EXPECTED.md's notation

/// EXPECTED.md's notation for values: strings in JSON quotes (`\"`, `\\`, `\n` escapes), numbers plain
/// (no `.0` when whole), `true`/`false`, timestamps as RFC 3339 UTC (`2026-04-02T16:20:11Z`, fractional
/// seconds only when not zero), JSON attributes in backticks. Both the document's values and the records'
/// are rendered in it, so a comparison is a dictionary equality.
private enum Notation {
    /// `` `name`=value, `name`=value `` as name → value, re-rendered so escapes are written one way.
    static func assignments(_ text: Substring) -> [(name: String, value: String)]? {
        var rest = text
        var result: [(name: String, value: String)] = []
        while true {
            guard rest.first == "`" else { return nil }
            rest = rest.dropFirst()
            guard let close = rest.firstIndex(of: "`"), close != rest.startIndex else { return nil }
            let name = String(rest[..<close])
            rest = rest[rest.index(after: close)...]
            guard rest.first == "=" else { return nil }
            guard let (value, after) = value(rest.dropFirst()) else { return nil }
            result.append((name, value))
            if after.isEmpty { return result }
            guard after.hasPrefix(", ") else { return nil }
            rest = after.dropFirst(2)
        }
    }

    /// One value at the start of `text`, and what follows it.
    private static func value(_ text: Substring) -> (String, Substring)? {
        switch text.first {
        case "\""?:
            var decoded = ""
            var index = text.index(after: text.startIndex)
            while index < text.endIndex {
                let character = text[index]
                if character == "\"" { return (quoted(decoded), text[text.index(after: index)...]) }
                if character == "\\" {
                    index = text.index(after: index)
                    guard index < text.endIndex else { return nil }
                    switch text[index] {
                    case "\"": decoded.append("\"")
                    case "\\": decoded.append("\\")
                    case "n": decoded.append("\n")
                    case "r": decoded.append("\r")
                    case "t": decoded.append("\t")
                    default: return nil
                    }
                } else {
                    decoded.append(character)
                }
                index = text.index(after: index)
            }
            return nil
        case "`"?:
            let body = text.dropFirst()
            guard let close = body.firstIndex(of: "`"), close != body.startIndex else { return nil }
            return ("`\(body[..<close])`", body[body.index(after: close)...])
        default:
            let end = text.firstIndex(of: ",") ?? text.endIndex
            let token = text[..<end]
            guard !token.isEmpty, token.allSatisfy({ $0.isLetter || $0.isNumber || ".:-+".contains($0) }) else {
                return nil
            }
            return (String(token), text[end...])
        }
    }

    static func quoted(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }

    static func number(_ value: Double) -> String {
        value.rounded() == value && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }

    static func timestamp(_ time: Google_Protobuf_Timestamp) -> String {
        func padded(_ value: Int64, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        let days = time.seconds >= 0 ? time.seconds / 86_400 : (time.seconds - 86_399) / 86_400
        let secondOfDay = time.seconds - days * 86_400
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), as Values.swift does inversely.
        let shifted = days + 719_468
        let era = (shifted >= 0 ? shifted : shifted - 146_096) / 146_097
        let dayOfEra = shifted - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        var text =
            "\(padded(year, 4))-\(padded(month, 2))-\(padded(day, 2))T\(padded(secondOfDay / 3600, 2)):"
            + "\(padded(secondOfDay / 60 % 60, 2)):\(padded(secondOfDay % 60, 2))"
        if time.nanos != 0 {
            var fraction = padded(Int64(time.nanos), 9)
            while fraction.count > 3 && fraction.hasSuffix("000") { fraction.removeLast(3) }
            text += "." + fraction
        }
        return text + "Z"
    }

    /// A record's canonical fields by their names in files (`personId`, `accountId`, ...), each set field
    /// rendered; unset fields are left out. `isDeleted` appears only when true (it has no presence bit).
    static func fields(of record: Cdp_Model_V1_Record) -> [String: String] {
        var fields = Fields()
        fields.timestamp("lastUpdated", record.lastUpdated, if: record.hasLastUpdated)
        fields.bool("isDeleted", record.isDeleted, if: record.isDeleted)
        switch record.entity {
        case .person(let person)?:
            fields.id("personId", person.personID)
            fields.string("email", person.email, if: person.hasEmail)
            fields.string("firstName", person.firstName, if: person.hasFirstName)
            fields.string("lastName", person.lastName, if: person.hasLastName)
            fields.string("jobTitle", person.jobTitle, if: person.hasJobTitle)
            switch person.personType {
            case .lead: fields.id("personType", "Lead")
            case .contact: fields.id("personType", "Contact")
            case .unspecified: break
            default: fields.id("personType", "\(person.personType)")
            }
            fields.number("score", person.score, if: person.hasScore)
            fields.string("country", person.country, if: person.hasCountry)
            fields.string("accountId", person.accountKey, if: person.hasAccountKey)
            fields.string("crmId", person.crmID, if: person.hasCrmID)
            fields.string("ecid", person.ecid, if: person.hasEcid)
            fields.bool("emailOptOut", person.emailOptOut, if: person.hasEmailOptOut)
        case .account(let account)?:
            fields.id("accountId", account.accountID)
            fields.string("name", account.name, if: account.hasName)
            fields.string("domain", account.domain, if: account.hasDomain)
            fields.string("website", account.website, if: account.hasWebsite)
            fields.string("industry", account.industry, if: account.hasIndustry)
            fields.number("annualRevenue", account.annualRevenue, if: account.hasAnnualRevenue)
            fields.integer("employees", account.employees, if: account.hasEmployees)
            fields.string("country", account.country, if: account.hasCountry)
            fields.string("dunsNumber", account.dunsNumber, if: account.hasDunsNumber)
            fields.string("parentAccountId", account.parentAccountKey, if: account.hasParentAccountKey)
            fields.string("crmId", account.crmID, if: account.hasCrmID)
        case .opportunity(let opportunity)?:
            fields.id("opportunityId", opportunity.opportunityID)
            fields.string("accountId", opportunity.accountKey, if: opportunity.hasAccountKey)
            fields.string("name", opportunity.name, if: opportunity.hasName)
            fields.string("stage", opportunity.stage, if: opportunity.hasStage)
            fields.number("amount", opportunity.amount, if: opportunity.hasAmount)
            fields.string("currency", opportunity.currency, if: opportunity.hasCurrency)
            fields.bool("isClosed", opportunity.isClosed, if: opportunity.hasIsClosed)
            fields.bool("isWon", opportunity.isWon, if: opportunity.hasIsWon)
            fields.timestamp("closeDate", opportunity.closeDate, if: opportunity.hasCloseDate)
            fields.string("crmId", opportunity.crmID, if: opportunity.hasCrmID)
        case .accountPersonRelation(let relation)?:
            fields.id("accountId", relation.accountKey)
            fields.id("personId", relation.personKey)
            fields.string("role", relation.role, if: relation.hasRole)
            fields.bool("isPrimary", relation.isPrimary, if: relation.hasIsPrimary)
            fields.bool("isActive", relation.isActive, if: relation.hasIsActive)
        case .opportunityPersonRelation(let relation)?:
            fields.id("opportunityId", relation.opportunityKey)
            fields.id("personId", relation.personKey)
            fields.string("role", relation.role, if: relation.hasRole)
            fields.bool("isPrimary", relation.isPrimary, if: relation.hasIsPrimary)
        case .campaign(let campaign)?:
            fields.id("campaignId", campaign.campaignID)
            fields.string("name", campaign.name, if: campaign.hasName)
            fields.string("type", campaign.type, if: campaign.hasType)
            fields.string("status", campaign.status, if: campaign.hasStatus)
        case .campaignMember(let member)?:
            fields.id("campaignId", member.campaignKey)
            fields.id("personId", member.personKey)
            fields.string("status", member.status, if: member.hasStatus)
            fields.bool("hasResponded", member.hasResponded_p, if: member.hasHasResponded_p)
        case .marketingList(let list)?:
            fields.id("listId", list.listID)
            fields.string("name", list.name, if: list.hasName)
        case .marketingListMember(let member)?:
            fields.id("listId", member.listKey)
            fields.id("personId", member.personKey)
        case .event(let event)?:
            fields.id("eventId", event.eventID)
            fields.string("personId", event.personKey, if: event.hasPersonKey)
            fields.string("email", event.email, if: event.hasEmail)
            fields.string("ecid", event.ecid, if: event.hasEcid)
            fields.id("eventType", event.eventType)
            fields.timestamp("timestamp", event.timestamp, if: event.hasTimestamp)
            fields.string("url", event.url, if: event.hasURL)
            fields.string("name", event.name, if: event.hasName)
        case .identityLink(let link)?:
            fields.id("masterId", link.masterID)
            switch link.entityType {
            case .person: fields.id("entity", "person")
            case .account: fields.id("entity", "account")
            case .unspecified: break
            default: fields.id("entity", "\(link.entityType)")
            }
            // The schema keeps the linked source only inside the linked key {id}@{instance}.{type}.
            fields.id("source", linkedSource(of: link.linkedKey))
            fields.id("id", link.linkedKey)
        case nil:
            fields.values["(entity)"] = "none"
        }
        return fields.values
    }

    static func customAttributes(of record: Cdp_Model_V1_Record) -> [String: String] {
        record.customAttributes.mapValues { attribute in
            switch attribute.kind {
            case .stringValue(let text)?: return quoted(text)
            case .numberValue(let value)?: return number(value)
            case .boolValue(let flag)?: return flag ? "true" : "false"
            case .jsonValue(let json)?: return "`\(json)`"
            case nil: return "null"
            }
        }
    }

    /// `Type:instance` of a source key `{id}@{instance}.{type}`; empty when `key` is not one.
    private static func linkedSource(of key: String) -> String {
        guard let at = key.lastIndex(of: "@") else { return "" }
        let suffix = key[key.index(after: at)...]
        guard let dot = suffix.lastIndex(of: ".") else { return "" }
        return "\(suffix[suffix.index(after: dot)...]):\(suffix[..<dot])"
    }

    /// One line per name whose values differ, for failure messages.
    static func difference(_ actual: [String: String], _ expected: [String: String]) -> String {
        Set(actual.keys).union(expected.keys).sorted().compactMap { name in
            switch (expected[name], actual[name]) {
            case let (want?, got?) where want != got: return "  \(name): expected \(want), got \(got)"
            case let (want?, nil): return "  \(name): expected \(want), absent"
            case let (nil, got?): return "  \(name): not expected, got \(got)"
            default: return nil
            }
        }.joined(separator: "\n")
    }

    private struct Fields {
        var values: [String: String] = [:]

        /// A field without a presence bit (an id, a key, a proto3 scalar): set when not empty.
        mutating func id(_ name: String, _ value: String) {
            if !value.isEmpty { values[name] = Notation.quoted(value) }
        }

        mutating func string(_ name: String, _ value: String, if present: Bool) {
            if present { values[name] = Notation.quoted(value) }
        }

        mutating func number(_ name: String, _ value: Double, if present: Bool) {
            if present { values[name] = Notation.number(value) }
        }

        mutating func integer(_ name: String, _ value: Int64, if present: Bool) {
            if present { values[name] = String(value) }
        }

        mutating func bool(_ name: String, _ value: Bool, if present: Bool) {
            if present { values[name] = value ? "true" : "false" }
        }

        mutating func timestamp(_ name: String, _ value: Google_Protobuf_Timestamp, if present: Bool) {
            if present { values[name] = Notation.timestamp(value) }
        }
    }
}

/// A record missing a required field names the fields it has that the entity does not (kept as custom
/// attributes): usually the required one under another name.
@Suite("Missing required fields")
struct MissingFieldTests {
    @Test func theErrorNamesTheFieldsTakenAsCustomAttributes() throws {
        var source = Cdp_Model_V1_Source()
        source.type = "Web"
        source.instance = "web-1"
        var parser = try BatchParser(format: .canonicalNdjson, entity: "event", source: source)
        let text = """
            {"key":"e1","email":"ann@acme.com","type":"web.webpagedetails.pageViews","timestamp":"2026-12-05T10:00:00Z"}
            {"eventType":"web.webpagedetails.pageViews","email":"ann@acme.com","timestamp":"2026-12-05T10:00:00Z"}

            """
        var output: [ParsedRecord] = []
        try Array(text.utf8).withUnsafeBytes { try parser.feed($0, into: &output) }
        try parser.finish(into: &output)
        let reasons = output.map { parsed -> [String] in
            guard case .rejected(let errors) = parsed.result else { return [] }
            return errors.map { "\($0.field): \($0.reason)" }
        }
        let kept = " (fields that are not event fields, kept as custom attributes: key, type)"
        #expect(
            reasons[0].sorted() == [
                "eventId: eventId is required for event and is missing or empty" + kept,
                "eventType: eventType is required for event and is missing or empty" + kept,
            ]
        )
        // Without unknown fields, no hint.
        #expect(reasons[1] == ["eventId: eventId is required for event and is missing or empty"])
    }
}

import SegmentationLanguage
import Testing

/// The PQL dialect's parser: the Bodea segment, each construct, and errors with their positions.
@Suite("PQL parser")
struct ParserTests {
    static let bodea = """
        (sum O.amount over O from person.accounts.opportunities where (O.isClosed = true and O.isWon = true)) > 1000000
        and exists E from xEvent where (E.eventType = "web.webpagedetails.pageViews"
            and E.url = "https://bodea.example/new-product" and E.timestamp occurs <= 1 months before now)
        """

    /// A compact rendering of a tree, to compare shapes without positions.
    static func shape(_ expression: Expression) -> String {
        switch expression {
        case .number(let value, _): value == value.rounded() ? String(Int(value)) : String(value)
        case .string(let text, _): "\"\(text)\""
        case .boolean(let value, _): String(value)
        case .null: "null"
        case .name(let name, _): name
        case .member(let base, let field, _): shape(base) + "." + field
        case .filter(let base, let condition, _): shape(base) + "[" + shape(condition) + "]"
        case .call(let function, let arguments, _): function + "(" + arguments.map(shape).joined(separator: ", ") + ")"
        case .not(let inner, _): "not(" + shape(inner) + ")"
        case .and(let left, let right, _): "and(" + shape(left) + ", " + shape(right) + ")"
        case .or(let left, let right, _): "or(" + shape(left) + ", " + shape(right) + ")"
        case .compare(let left, let op, let right, _): "(" + shape(left) + " " + op.rawValue + " " + shape(right) + ")"
        case .isIn(let value, let list, _): shape(value) + " in [" + list.map(shape).joined(separator: ", ") + "]"
        case .occurs(let value, let condition, _):
            switch condition {
            case .withinLast(let count, let unit): shape(value) + " within \(count) \(unit.rawValue)"
            case .between(let from, let to): shape(value) + " between " + shape(from) + " and " + shape(to)
            case .last(let unit): shape(value) + " last \(unit.rawValue)"
            }
        case .exists(let variable, let collection, let condition, _):
            "exists " + variable + " in " + shape(collection) + ": " + shape(condition)
        case .forall(let variable, let collection, let condition, _):
            "forall " + variable + " in " + shape(collection) + ": " + shape(condition)
        case .aggregate(let function, let value, let variable, let collection, let condition, _):
            function.rawValue + "(" + shape(value) + " for " + variable + " in " + shape(collection)
                + (condition.map { " if " + shape($0) } ?? "") + ")"
        }
    }

    @Test func theBodeaSegment() throws {
        let tree = try Parser.parse(Self.bodea)
        #expect(
            Self.shape(tree)
                == "and((sum(O.amount for O in person.accounts.opportunities if and((O.isClosed = true), "
                + "(O.isWon = true))) > 1000000), exists E in xEvent: and(and((E.eventType = "
                + "\"web.webpagedetails.pageViews\"), (E.url = \"https://bodea.example/new-product\")), "
                + "E.timestamp within 1 months))"
        )
    }

    @Test(arguments: [
        ("a or b and not c", "or(a, and(b, not(c)))"),
        ("person.country in [\"US\", \"CA\"]", "person.country in [\"US\", \"CA\"]"),
        ("person.jobTitle.contains(\"VP\", false)", "contains(person.jobTitle, \"VP\", false)"),
        (
            "person.accounts[industry = \"Retail\"].count() >= 2",
            "(count(person.accounts[(industry = \"Retail\")]) >= 2)"
        ),
        ("forall A from person.accounts where A.employees > 10", "forall A in person.accounts: (A.employees > 10)"),
        (
            "E.timestamp occurs between date(2026, 1, 1) and date(2026, 2, 1)",
            "E.timestamp between date(2026, 1, 1) and date(2026, 2, 1)"
        ),
        ("E.timestamp occurs last week", "E.timestamp last weeks"),
        ("inSegment(\"s-1\") and not inSegment(\"s-2\")", "and(inSegment(\"s-1\"), not(inSegment(\"s-2\")))"),
        (
            "max O.amount over O from account.opportunities > 5.5",
            "(max(O.amount for O in account.opportunities) > 5.5)"
        ),
        ("person.score != null", "(person.score != null)"),
        ("person.score > -1.5 and person.score < -0", "and((person.score > -1.5), (person.score < 0))"),
    ])
    func eachConstruct(text: String, shape: String) throws {
        #expect(Self.shape(try Parser.parse(text)) == shape)
    }

    @Test(arguments: [
        ("exists E in xEvent where E.url = \"x\"", 1, 10, "'from' after the variable E", "'in'"),
        (
            "person.score >", 1, 15, "a value: a name, a number, a string, true, false, null or '('",
            "the end of the definition"
        ),
        ("a and\n  (b or c", 2, 10, "')' to close the parenthesis", "the end of the definition"),
        (
            "E.timestamp occurs <= 3 fortnights before now", 1, 25, "'days', 'weeks', 'months' or 'years'",
            "'fortnights'"
        ),
        ("person.name = \"unterminated", 1, 15, "a closing '\"' for this string", "the end of the definition"),
        ("person.score > 3 person", 1, 18, "'and', 'or' or the end of the definition", "'person'"),
        ("sum O.amount from O", 1, 14, "'over' after the value of 'sum'", "'from'"),
        ("a # b", 1, 3, "a name, a number, a string or an operator", "'#'"),
        (
            "E.timestamp occurs <= 99999999999999999999 days before now", 1, 23,
            "a whole number of days, weeks, months or years (at most 100000) after 'occurs <='",
            "the number 1e+20"
        ),
        (
            "person.score = 1 99999999999999999999", 1, 18, "'and', 'or' or the end of the definition",
            "the number 1e+20"
        ),
    ])
    func errorsSayWhereWhatWasExpectedAndWhatWasFound(
        text: String,
        line: Int,
        column: Int,
        expected: String,
        found: String
    ) {
        #expect(
            throws: SyntaxError(position: SourcePosition(line: line, column: column), expected: expected, found: found)
        ) {
            _ = try Parser.parse(text)
        }
    }
}

import SegmentationLanguage
import Testing

/// The checker: unknown names and fields and type mismatches are errors when a segment is created,
/// with the position and the problem in words.
@Suite("PQL checker")
struct CheckerTests {
    @Test(arguments: [
        (
            "person.accounts.revenue > 5", 1, 16,
            "account has no field 'revenue'; its fields are accountId, annualRevenue"
        ),
        ("person.score = \"high\"", 1, 14, "cannot compare person.score (a number) with \"high\" (a string)"),
        ("account.name = \"x\"", 1, 1, "a person audience is rooted at 'person' and 'xEvent'"),
        (
            "person.accounts.name = \"Acme\"", 1, 16,
            "person.accounts is a collection of account entities: reach its 'name'"
        ),
        ("sum O.name over O from person.opportunities > 1", 1, 5, "'sum' takes a number, but O.name is a string"),
        ("inSegment(\"nope\")", 1, 11, "no segment has the id \"nope\""),
        ("person.score", 1, 1, "a definition must be a condition (true or false), but this is a number"),
        ("exists E from xEvent where\n  E.url = 1", 2, 9, "cannot compare E.url (a string) with 1 (a number)"),
        ("E.url = \"x\"", 1, 1, "unknown name 'E': expected 'person' or 'xEvent'"),
        (
            "exists E from xEvent where E.timestamp occurs between date(2026, 2, 1) and date(2026, 1, 1)", 1, 76,
            "the end of 'occurs between' must come after its start"
        ),
        (
            "exists E from xEvent where E.timestamp > date(2026, 13, 1)", 1, 53,
            "the month of date(…) must be between 1 and 12, not 13"
        ),
        ("person.email occurs last week", 1, 1, "'occurs' takes a timestamp, but person.email is a string"),
        ("person.score < null", 1, 14, "'<' orders numbers, strings and timestamps; use = or != with null"),
        ("person.country in [\"US\", 1]", 1, 26, "person.country is a string, but 1 is a number"),
        ("person.jobTitle.contains(\"VP\", \"no\")", 1, 32, "the case-sensitivity flag of contains is true or false"),
        ("exists A from person.accounts where A.persons.count() > 1", 1, 38, "account.persons is not in person views"),
        ("person.lists.count() > person", 1, 22, "'>' compares values, but person is a person"),
        ("person.accounts[revenue > 1].count() > 0", 1, 17, "unknown name 'revenue'"),
        (
            "exists L from person.lists where L.name = \"x\" and L.listId = \"1\"", 1, 51,
            "unknown name 'L': expected 'person' or 'xEvent'; L is only known inside the condition after 'where'"
        ),
    ])
    func mistakesAreReportedWithTheirPosition(text: String, line: Int, column: Int, message: String) {
        do {
            _ = try Definition(text, audience: .person, segments: { $0 == "s1" ? .person : nil })
            Issue.record("\(text) was accepted")
        } catch {
            #expect(error.position == SourcePosition(line: line, column: column), "\(error)")
            #expect(error.message.hasPrefix(message), "\(error.message)")
        }
    }

    @Test func anAccountAudienceReachesItsOpportunitiesAndPersonsButNotEvents() throws {
        _ = try Definition(
            "exists P from account.persons where P.jobTitle.contains(\"CFO\") and account.opportunities.count() > 2",
            audience: .account
        )
        #expect(throws: DefinitionError.self) { try Definition("xEvent.count() > 0", audience: .account) }
        #expect(throws: DefinitionError.self) {
            try Definition("exists P from account.persons where P.accounts.count() > 1", audience: .account)
        }
    }

    @Test func inSegmentNeedsASegmentOfTheSameAudience() throws {
        let definition = try Definition("inSegment(\"s1\") and person.score > 1", audience: .person) { id in
            id == "s1" ? .person : id == "a1" ? .account : nil
        }
        #expect(definition.segmentReferences == ["s1"])
        #expect(!definition.dependsOnTime)
        #expect(throws: DefinitionError.self) {
            try Definition("inSegment(\"a1\")", audience: .person) { $0 == "a1" ? .account : nil }
        }
    }

    @Test func syntaxErrorsBecomeDefinitionErrors() {
        #expect(
            throws: DefinitionError(
                position: SourcePosition(line: 1, column: 10),
                message: "expected 'from' after the variable E, found 'in'"
            )
        ) {
            try Definition("exists E in xEvent where E.url = \"x\"", audience: .person)
        }
    }

    @Test func explanationsQuoteTheDefinitionNormalized() throws {
        let definition = try Definition(
            "(sum   O.amount over O from person.accounts.opportunities where (O.isWon=true))>1000000",
            audience: .person
        )
        #expect(
            definition.root.text
                == "(sum O.amount over O from person.accounts.opportunities where O.isWon = true) > 1000000"
        )
    }

    /// The normalized text parses back to the same tree: explanations quote valid PQL.
    @Test(arguments: [
        ParserTests.bodea,
        "not (person.score > 5) or person.country in [\"US\", null]",
        "a or b and not c",
        "(a or b) and c",
        "exists A from person.accounts where (A.name = \"x\" or A.industry = \"y\") and person.score > 1",
        "person.accounts[industry = \"Retail\" and employees > 5].count() >= 2",
        "(max O.amount over O from person.opportunities where O.isWon = true) > (min O.amount over O from person.opportunities)",
        "person.jobTitle.contains(\"VP\", false) and inSegment(\"s1\")",
        "E.timestamp occurs between date(2026, 1, 1) and date(2026, 2, 1) and E.timestamp occurs last week",
    ])
    func renderingRoundTrips(text: String) throws {
        let tree = try Parser.parse(text)
        let rendered = PQLText.render(tree)
        #expect(ParserTests.shape(try Parser.parse(rendered)) == ParserTests.shape(tree), "\(rendered)")
    }
}

import CDPProto
import SegmentationLanguage
import Testing

@testable import SegmentationEvaluation

/// One test per construct of the dialect, on hand-built views.
@Suite("PQL semantics")
struct SemanticsTests {
    static let twoAccounts: Cdp_Profile_V1_PersonView = {
        var view = Views.person { person in
            person.email = "ann@example.com"
            person.jobTitle = "VP Marketing"
            person.country = "DE"
        }
        view.accounts = [Views.account(10, name: "Acme", industry: "Retail"), Views.account(11, name: "Acme GmbH")]
        view.opportunities = [
            Views.opportunity(20, amount: 300, accounts: [10]),
            // Belongs to both accounts: it must count once.
            Views.opportunity(21, amount: 700, accounts: [10, 11]),
            Views.opportunity(22, amount: 5000, won: false, accounts: [11]),
            Views.opportunity(23, amount: nil, accounts: [11]),
        ]
        return view
    }()

    @Test func comparisonsWithMissingValuesAreNullSafe() throws {
        let view = Views.person()  // no score, no country
        #expect(try !Views.matches("person.score > 5", on: view))
        #expect(try !Views.matches("person.score <= 5", on: view))
        #expect(try Views.matches("not (person.score > 5)", on: view))
        #expect(try Views.matches("person.score = null", on: view))
        #expect(try !Views.matches("person.score != null", on: view))
        #expect(try Views.matches("person.country != \"US\"", on: view))
        #expect(try !Views.matches("person.country = \"US\"", on: view))
        #expect(try !Views.matches("person.emailOptOut", on: view))
        #expect(try Views.matches("person.country != \"US\"", on: Self.twoAccounts))
        #expect(try Views.matches("person.country = \"DE\"", on: Self.twoAccounts))
    }

    @Test func sumOfNothingIsZeroAndOtherAggregatesOfNothingAreNull() throws {
        let view = Views.person()
        #expect(try Views.matches("sum O.amount over O from person.opportunities = 0", on: view))
        #expect(try Views.matches("(avg O.amount over O from person.opportunities) = null", on: view))
        #expect(try Views.matches("(max O.amount over O from person.opportunities) = null", on: view))
        #expect(try !Views.matches("(min O.amount over O from person.opportunities) < 1", on: view))
    }

    @Test func aggregatesTakeEachOpportunityOnceAndSkipMissingValues() throws {
        let view = Self.twoAccounts
        // 300 + 700 (won), reached through both accounts, counted once.
        #expect(
            try Views.matches(
                "sum O.amount over O from person.accounts.opportunities where O.isWon = true = 1000",
                on: view
            )
        )
        #expect(try Views.matches("sum O.amount over O from person.accounts.opportunities = 6000", on: view))
        #expect(try Views.matches("(avg O.amount over O from person.accounts.opportunities) = 2000", on: view))
        #expect(try Views.matches("(min O.amount over O from person.opportunities) = 300", on: view))
        #expect(
            try Views.matches("(max O.amount over O from person.opportunities where O.isWon = true) = 700", on: view)
        )
        #expect(try Views.matches("person.accounts.opportunities.count() = 4", on: view))
        // Only Acme's opportunities: 20 and 21.
        #expect(try Views.matches("person.accounts[name = \"Acme\"].opportunities.count() = 2", on: view))
        #expect(
            try Views.matches(
                "exists A from person.accounts where (sum O.amount over O from A.opportunities = 5700)",
                on: view
            )
        )
    }

    @Test func countCountsElements() throws {
        #expect(try Views.matches("person.accounts.count() = 2", on: Self.twoAccounts))
        #expect(try Views.matches("person.accounts.count() = 0", on: Views.person()))
        #expect(try Views.matches("xEvent.count() = 0", on: Views.person()))
    }

    @Test func existsAndForall() throws {
        let view = Self.twoAccounts
        #expect(try Views.matches("exists A from person.accounts where A.industry = \"Retail\"", on: view))
        #expect(try !Views.matches("forall A from person.accounts where A.industry = \"Retail\"", on: view))
        #expect(try Views.matches("forall O from person.opportunities where O.isClosed = true", on: view))
        // Over nothing: exists is false, forall is true.
        #expect(try !Views.matches("exists A from person.accounts where A.name != null", on: Views.person()))
        #expect(try Views.matches("forall A from person.accounts where A.name = \"x\"", on: Views.person()))
        // Nested, with the outer variable in the inner condition.
        #expect(
            try Views.matches(
                "exists A from person.accounts where (exists O from A.opportunities where O.amount = 5000 and A.name = \"Acme GmbH\")",
                on: view
            )
        )
    }

    @Test func filtersKeepTheElementsThatSatisfyTheirCondition() throws {
        let view = Self.twoAccounts
        #expect(try Views.matches("person.accounts[industry = \"Retail\"].count() = 1", on: view))
        #expect(try Views.matches("person.opportunities[isWon = true and amount > 500].count() = 1", on: view))
        #expect(try Views.matches("person.accounts[industry = \"Manufacturing\"].count() = 0", on: view))
    }

    @Test func inTestsMembershipOfAList() throws {
        #expect(try Views.matches("person.country in [\"AT\", \"DE\"]", on: Self.twoAccounts))
        #expect(try !Views.matches("person.country in [\"US\", \"CA\"]", on: Self.twoAccounts))
        #expect(try !Views.matches("person.country in [\"US\"]", on: Views.person()))
        #expect(try Views.matches("person.country in [\"US\", null]", on: Views.person()))
    }

    @Test func stringFunctionsAreCaseSensitiveUnlessTold() throws {
        let view = Self.twoAccounts
        #expect(try Views.matches("person.jobTitle.contains(\"VP\")", on: view))
        #expect(try !Views.matches("person.jobTitle.contains(\"vp\")", on: view))
        #expect(try Views.matches("person.jobTitle.contains(\"vp\", false)", on: view))
        #expect(try Views.matches("person.jobTitle.startsWith(\"vp m\", false)", on: view))
        #expect(try Views.matches("person.email.endsWith(\"@example.com\")", on: view))
        #expect(try Views.matches("person.email.doesNotEndWith(\"@acme.com\")", on: view))
        #expect(try Views.matches("person.jobTitle.equals(\"vp marketing\", false)", on: view))
        #expect(try !Views.matches("person.jobTitle.equals(\"vp marketing\")", on: view))
        #expect(try Views.matches("person.jobTitle.notEqualTo(\"CEO\")", on: view))
        // A missing string contains nothing and "does not contain" anything.
        #expect(try !Views.matches("person.jobTitle.contains(\"VP\")", on: Views.person()))
        #expect(try Views.matches("person.jobTitle.doesNotContain(\"VP\")", on: Views.person()))
    }

    @Test func occursWithinTheLastUnitsIsRelativeToAsOfAndKnowsWhenItExpires() throws {
        var view = Views.person()
        let visit = Views.time(2026, 1, 31, 10)
        view.events = [Views.event("e1", url: "https://x.example/pricing", at: visit)]
        let pql = "exists E from xEvent where E.timestamp occurs <= 1 months before now"
        let inside = try Views.evaluate(pql, on: view, asOf: Views.time(2026, 2, 20))
        #expect(inside.matched)
        // A month back from February 28 is January 28, which still includes January 31: the visit leaves
        // the window on March 1.
        #expect(inside.validUntil == Views.time(2026, 3, 1) + 0.001)
        #expect(try Views.matches(pql, on: view, asOf: Views.time(2026, 2, 28, 23)))
        #expect(try !Views.matches(pql, on: view, asOf: Views.time(2026, 3, 1, 1)))
        // Before the event happened it does not count, and the result changes when it does.
        let before = try Views.evaluate(pql, on: view, asOf: Views.time(2026, 1, 30))
        #expect(!before.matched)
        #expect(before.validUntil == visit)

        let days = try Views.evaluate(
            "exists E from xEvent where E.timestamp occurs <= 7 days before now",
            on: view,
            asOf: Views.time(2026, 2, 3)
        )
        #expect(days.matched)
        #expect(days.validUntil == visit + 7 * 86_400 + 0.001)
        #expect(
            try !Views.matches(
                "exists E from xEvent where E.timestamp occurs <= 1 weeks before now",
                on: view,
                asOf: Views.time(2026, 2, 8)
            )
        )
    }

    @Test func occursBetweenAndOccursLastUseCalendarPeriods() throws {
        var view = Views.person()
        // Wednesday 2026-06-10.
        view.events = [Views.event("e1", url: "https://x.example/", at: Views.time(2026, 6, 10, 12))]
        let between = "exists E from xEvent where E.timestamp occurs between date(2026, 6, 1) and date(2026, 7, 1)"
        #expect(try Views.matches(between, on: view))
        #expect(try Views.evaluate(between, on: view).validUntil == nil)
        #expect(
            try !Views.matches(
                "exists E from xEvent where E.timestamp occurs between date(2026, 6, 11) and date(2026, 7, 1)",
                on: view
            )
        )

        let lastWeek = "exists E from xEvent where E.timestamp occurs last week"
        // Monday 2026-06-15: last week is June 8–14.
        let monday = try Views.evaluate(lastWeek, on: view, asOf: Views.time(2026, 6, 15, 9))
        #expect(monday.matched)
        #expect(monday.validUntil == Views.time(2026, 6, 22))
        // During the same week it is this week, not last week; it becomes last week next Monday.
        let sameWeek = try Views.evaluate(lastWeek, on: view, asOf: Views.time(2026, 6, 12))
        #expect(!sameWeek.matched)
        #expect(sameWeek.validUntil == Views.time(2026, 6, 15))
        #expect(try !Views.matches(lastWeek, on: view, asOf: Views.time(2026, 6, 22)))
        #expect(
            try Views.matches(
                "exists E from xEvent where E.timestamp occurs last month",
                on: view,
                asOf: Views.time(2026, 7, 3)
            )
        )
    }

    @Test func inSegmentReadsTheOtherSegmentsResult() throws {
        let view = Views.person()
        #expect(try Views.evaluate("inSegment(\"s1\")", on: view, memberships: ["s1"]).matched)
        #expect(try !Views.evaluate("inSegment(\"s2\")", on: view, memberships: ["s1"]).matched)
        #expect(try Views.evaluate("not inSegment(\"s2\")", on: view, memberships: ["s1"]).matched)
    }

    @Test func roleCampaignAndListFieldsReachTheirEntities() throws {
        var view = Self.twoAccounts
        var role = Cdp_Profile_V1_OpportunityRole()
        role.opportunityClusterID = 21
        role.role = "Decision Maker"
        view.opportunityRoles = [role]
        var campaign = Cdp_Profile_V1_CampaignMembership()
        campaign.campaign = Views.unified(30, key: "C1@mkto-1.Marketo") { $0.campaign.name = "Webinar" }
        campaign.hasResponded_p = true
        view.campaigns = [campaign]
        var list = Cdp_Profile_V1_ListMembership()
        list.list = Views.unified(40, key: "L1@mkto-1.Marketo") { $0.marketingList.name = "Newsletter" }
        view.lists = [list]
        #expect(
            try Views.matches(
                "exists R from person.opportunityRoles where (R.role = \"Decision Maker\" and R.opportunity.amount = 700)",
                on: view
            )
        )
        #expect(
            try Views.matches(
                "exists C from person.campaigns where (C.campaign.name = \"Webinar\" and C.hasResponded = true)",
                on: view
            )
        )
        #expect(try Views.matches("exists L from person.lists where L.name.startsWith(\"News\")", on: view))
    }

    @Test func accountAudiencesAreRootedAtTheAccount() throws {
        var view = Cdp_Profile_V1_AccountView()
        view.account = Views.account(10, name: "Acme", industry: "Retail")
        view.opportunities = [Views.opportunity(20, amount: 1_500_000, accounts: [10])]
        view.persons = [Views.person { $0.jobTitle = "CFO" }.person]
        let segment = try CompiledSegment(
            "account.industry = \"Retail\" and (sum O.amount over O from account.opportunities) > 1000000 "
                + "and exists P from account.persons where P.jobTitle = \"CFO\"",
            audience: .account
        )
        let frame = Frame()
        frame.load(account: view, asOf: Views.time(2026, 6, 1))
        #expect(segment.evaluate(in: frame).matched)
        // A person segment never matches an account view.
        frame.load(account: view, asOf: Views.time(2026, 6, 1))
        #expect(try !CompiledSegment("person.email = null", audience: .person).evaluate(in: frame).matched)
    }
}

/// Every field the checker accepts can be read from a view.
@Suite("View schema bindings")
struct SchemaBindingTests {
    @Test func everySchemaFieldHasAReader() {
        for (kind, fields) in Schema.fields {
            for (name, field) in fields {
                switch field.type {
                case .collection: continue
                case .entity: #expect(Fields.entityReader(kind, name) != nil, "\(kind).\(name)")
                default: #expect(Fields.reader(kind, name) != nil, "\(kind).\(name)")
                }
            }
        }
    }
}

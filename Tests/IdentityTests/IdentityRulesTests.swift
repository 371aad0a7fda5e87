import CDPProto
import IdentityGraph
import IdentityRules
import Testing

/// Which identities and references each kind of record yields.
@Suite("Identity rules")
struct IdentityRulesTests {
    @Test func aPersonLinksItsKeyEmailCrmIdAndEcidAndNamesItsAccount() throws {
        var record = Cdp_Model_V1_Record()
        record.key = "102@mkto-1.Marketo"
        record.person.personID = "102"
        record.person.email = "p2@townsend.com"
        record.person.crmID = "003X"
        record.person.accountKey = "A1@mkto-1.Marketo"
        let plan = try #require(IdentityRules.plan(for: record))
        #expect(plan.graph == .person)
        #expect(
            plan.identities == [
                Identity("sourceKey", "102@mkto-1.Marketo"), Identity("email", "p2@townsend.com"),
                Identity("crmId", "003X"),
            ]
        )
        #expect(
            plan.references == [
                Reference(role: "account", graph: .account, identities: [Identity("sourceKey", "A1@mkto-1.Marketo")])
            ]
        )
    }

    @Test func aCrosswalkRowLinksTheSourceRecordToItsMasterId() throws {
        var record = Cdp_Model_V1_Record()
        record.key = "M-T/A2@mkto-2.Marketo@mdm-1.MDM"
        record.identityLink.masterID = "M-T"
        record.identityLink.entityType = .account
        record.identityLink.linkedKey = "A2@mkto-2.Marketo"
        let plan = try #require(IdentityRules.plan(for: record))
        #expect(plan.graph == .account)
        #expect(plan.identities == [Identity("sourceKey", "A2@mkto-2.Marketo"), Identity("mdm", "M-T")])
    }

    @Test func anEventNamesItsPersonByEverythingItHasAndATombstoneLinksNothing() throws {
        var record = Cdp_Model_V1_Record()
        record.key = "e1@web-1.Web"
        record.event.eventID = "e1"
        record.event.email = "p2@townsend.com"
        record.event.ecid = "ecid-7"
        record.isDeleted = true
        let plan = try #require(IdentityRules.plan(for: record))
        #expect(plan.graph == .event && plan.isDeletion && plan.identities == [Identity("sourceKey", "e1@web-1.Web")])
        #expect(
            plan.references.first?.identities == [Identity("email", "p2@townsend.com"), Identity("ecid", "ecid-7")]
        )
        #expect(IdentityRules.plan(for: Cdp_Model_V1_Record()) == nil)
    }
}

import CDPProto
import Foundation
import SwiftProtobuf
import Synchronization

/// Ingestion's sequence numbers for the records tests make: increasing, in the order they are made.
private let lastSequence = Atomic<UInt64>(0)

/// The Bodea records of ARCHITECTURE.md §1 as ingestion would forward them.
public enum Bodea {
    public static func source(_ instance: String, _ type: String = "Marketo") -> Cdp_Model_V1_Source {
        var source = Cdp_Model_V1_Source()
        source.type = type
        source.instance = instance
        return source
    }

    /// `record` as ingestion forwards it, with the next sequence number (so re-sending the same value
    /// re-delivers it, and a record made later is a later arrival).
    public static func stored(_ record: Cdp_Model_V1_Record, batch: String = "b-test") -> Cdp_Identity_V1_StoredRecord {
        var stored = Cdp_Identity_V1_StoredRecord()
        stored.record = record
        // A record made later arrived later: a new version of a record made before supersedes it.
        stored.sequence = lastSequence.add(1, ordering: .relaxed).newValue
        stored.batchID = batch
        stored.version = FNV.hash(try! record.serializedBytes() as [UInt8])
        stored.ingestedAt = Google_Protobuf_Timestamp(date: Date(timeIntervalSince1970: 1_795_000_000))
        return stored
    }

    public static func person(
        _ id: String,
        _ instance: String,
        email: String,
        account: String?,
        crmID: String? = nil
    ) -> Cdp_Identity_V1_StoredRecord {
        var record = Cdp_Model_V1_Record()
        record.key = "\(id)@\(instance).Marketo"
        record.source = source(instance)
        var person = Cdp_Model_V1_Person()
        person.personID = id
        person.email = email
        if let account { person.accountKey = "\(account)@\(instance).Marketo" }
        if let crmID { person.crmID = crmID }
        record.person = person
        return stored(record)
    }

    public static func account(_ id: String, _ instance: String, name: String) -> Cdp_Identity_V1_StoredRecord {
        var record = Cdp_Model_V1_Record()
        record.key = "\(id)@\(instance).Marketo"
        record.source = source(instance)
        var account = Cdp_Model_V1_Account()
        account.accountID = id
        account.name = name
        record.account = account
        return stored(record)
    }

    public static func opportunity(
        _ id: String,
        _ instance: String,
        account: String,
        amount: Double
    )
        -> Cdp_Identity_V1_StoredRecord
    {
        var record = Cdp_Model_V1_Record()
        record.key = "\(id)@\(instance).Marketo"
        record.source = source(instance)
        var opportunity = Cdp_Model_V1_Opportunity()
        opportunity.opportunityID = id
        opportunity.accountKey = "\(account)@\(instance).Marketo"
        opportunity.amount = amount
        record.opportunity = opportunity
        return stored(record)
    }

    public static func crosswalk(master: String, linked key: String) -> Cdp_Identity_V1_StoredRecord {
        var record = Cdp_Model_V1_Record()
        record.key = "\(master)/\(key)@mdm-1.MDM"
        record.source = source("mdm-1", "MDM")
        var link = Cdp_Model_V1_IdentityLink()
        link.masterID = master
        link.entityType = .account
        link.linkedKey = key
        record.identityLink = link
        return stored(record)
    }

    public static func deleted(_ stored: Cdp_Identity_V1_StoredRecord) -> Cdp_Identity_V1_StoredRecord {
        var record = stored.record
        record.isDeleted = true
        return Self.stored(record)
    }

    public static let persons = [
        person("101", "mkto-1", email: "p1@townsend.com", account: "A1"),
        person("102", "mkto-1", email: "p2@townsend.com", account: "A1"),
        person("2102", "mkto-2", email: "p2@townsend.com", account: "A2"),
        person("2103", "mkto-2", email: "p3@townsend.com", account: "A2"),
    ]
    public static let accounts = [
        account("A1", "mkto-1", name: "Townsend"), account("A2", "mkto-2", name: "Townsend Inc."),
        opportunity("O1", "mkto-1", account: "A1", amount: 200_000),
        opportunity("O2", "mkto-2", account: "A2", amount: 900_000),
    ]
    public static let crosswalks = [
        crosswalk(master: "M-TOWNSEND", linked: "A1@mkto-1.Marketo"),
        crosswalk(master: "M-TOWNSEND", linked: "A2@mkto-2.Marketo"),
    ]
}

/// FNV-1a, as ingestion names record versions.
public enum FNV {
    public static func hash(_ bytes: [UInt8]) -> UInt64 {
        bytes.reduce(0xcbf2_9ce4_8422_2325 as UInt64) { ($0 ^ UInt64($1)) &* 0x0000_0100_0000_01B3 }
    }
}

extension Bodea {
    /// Opportunity 1 ($200k, Account 1) and Opportunity 2 ($900k, Account 2), both closed won.
    public static let wonOpportunities = [
        wonOpportunity("O1", "mkto-1", account: "A1", amount: 200_000),
        wonOpportunity("O2", "mkto-2", account: "A2", amount: 900_000),
    ]

    /// A closed-won opportunity.
    public static func wonOpportunity(
        _ id: String,
        _ instance: String,
        account: String,
        amount: Double,
        lastUpdated: Date? = nil
    ) -> Cdp_Identity_V1_StoredRecord {
        var record = opportunity(id, instance, account: account, amount: amount).record
        record.opportunity.isClosed = true
        record.opportunity.isWon = true
        if let lastUpdated { record.lastUpdated = Google_Protobuf_Timestamp(date: lastUpdated) }
        return stored(record)
    }

    /// p2's visit of the new product page, recorded by Marketo 1, at `time`.
    public static func pageVisit(at time: Date) -> Cdp_Identity_V1_StoredRecord {
        var record = Cdp_Model_V1_Record()
        record.key = "v1@mkto-1.Marketo"
        record.source = source("mkto-1")
        record.event.eventID = "v1"
        record.event.personKey = "102@mkto-1.Marketo"
        record.event.eventType = "web.webpagedetails.pageViews"
        record.event.url = "https://bodea.example/new-product"
        record.event.timestamp = Google_Protobuf_Timestamp(date: time)
        return stored(record)
    }
}

extension Bodea {
    /// A relation or membership record of `instance` (Marketo), keyed by `id`, built by `fill`.
    public static func relation(
        _ id: String,
        _ instance: String,
        _ fill: (inout Cdp_Model_V1_Record) -> Void
    )
        -> Cdp_Identity_V1_StoredRecord
    {
        var record = Cdp_Model_V1_Record()
        record.key = "\(id)@\(instance).Marketo"
        record.source = source(instance)
        fill(&record)
        return stored(record)
    }

    /// p3 is the decision maker on Opportunity 1 (of Account 1, in Marketo 1's CRM).
    public static let p3DecidesOnO1 = relation("OPR1", "mkto-1") { record in
        record.opportunityPersonRelation.opportunityKey = "O1@mkto-1.Marketo"
        record.opportunityPersonRelation.personKey = "P3@mkto-1.Marketo"
        record.opportunityPersonRelation.role = "Decision Maker"
        record.opportunityPersonRelation.isPrimary = true
    }

    /// p3 as a lead of Marketo 1 too (the relation above names this record).
    public static let p3InMarketo1 = person("P3", "mkto-1", email: "p3@townsend.com", account: nil)

    /// p1 also works with Globex (Account 3, Marketo 1), through an account-person relation.
    public static let globex = account("A3", "mkto-1", name: "Globex")
    /// The relation of p1 to Globex.
    public static let p1AtGlobex = relation("APR1", "mkto-1") { record in
        record.accountPersonRelation.accountKey = "A3@mkto-1.Marketo"
        record.accountPersonRelation.personKey = "101@mkto-1.Marketo"
        record.accountPersonRelation.role = "Advisor"
    }

    /// The webinar campaign, and p2 as a member who responded.
    public static let webinar = relation("C1", "mkto-1") { record in
        record.campaign.campaignID = "C1"
        record.campaign.name = "Webinar"
    }
    /// p2 in the webinar.
    public static let p2AtWebinar = relation("CM1", "mkto-1") { record in
        record.campaignMember.campaignKey = "C1@mkto-1.Marketo"
        record.campaignMember.personKey = "2102@mkto-2.Marketo"
        record.campaignMember.status = "Attended"
        record.campaignMember.hasResponded_p = true
    }
    /// The newsletter list, and p2 on it.
    public static let newsletter = relation("L1", "mkto-1") { record in
        record.marketingList.listID = "L1"
        record.marketingList.name = "Newsletter"
    }
    /// p2 on the newsletter.
    public static let p2OnNewsletter = relation("LM1", "mkto-1") { record in
        record.marketingListMember.listKey = "L1@mkto-1.Marketo"
        record.marketingListMember.personKey = "102@mkto-1.Marketo"
    }
}

import CDPProto
import Foundation
import SegmentationEvaluation
import SegmentationLanguage
import SwiftProtobuf

/// Hand-built views for the semantic tests: only what each test needs.
enum Views {
    static func unified(
        _ cluster: UInt64,
        key: String,
        _ fill: (inout Cdp_Model_V1_Record) -> Void
    )
        -> Cdp_Profile_V1_UnifiedRecord
    {
        var unified = Cdp_Profile_V1_UnifiedRecord()
        unified.clusterID = cluster
        unified.record.key = key
        fill(&unified.record)
        unified.fragmentKeys = [key]
        return unified
    }

    static func person(_ fill: (inout Cdp_Model_V1_Person) -> Void = { _ in }) -> Cdp_Profile_V1_PersonView {
        var view = Cdp_Profile_V1_PersonView()
        view.person = unified(1, key: "1@crm.Salesforce") { record in
            record.person.personID = "1"
            fill(&record.person)
        }
        return view
    }

    static func account(_ cluster: UInt64, name: String, industry: String? = nil) -> Cdp_Profile_V1_UnifiedRecord {
        unified(cluster, key: "A\(cluster)@crm.Salesforce") { record in
            record.account.accountID = "A\(cluster)"
            record.account.name = name
            if let industry { record.account.industry = industry }
        }
    }

    static func opportunity(
        _ cluster: UInt64,
        amount: Double?,
        won: Bool = true,
        accounts: [UInt64]
    ) -> Cdp_Profile_V1_UnifiedRecord {
        var opportunity = unified(cluster, key: "O\(cluster)@crm.Salesforce") { record in
            record.opportunity.opportunityID = "O\(cluster)"
            if let amount { record.opportunity.amount = amount }
            record.opportunity.isClosed = true
            record.opportunity.isWon = won
        }
        opportunity.accountClusterIds = accounts
        return opportunity
    }

    static func event(
        _ id: String,
        type: String = "web.webpagedetails.pageViews",
        url: String,
        at time: Double
    )
        -> Cdp_Profile_V1_Event
    {
        var event = Cdp_Profile_V1_Event()
        event.key = "\(id)@web.Web"
        event.event.eventID = id
        event.event.eventType = type
        event.event.url = url
        event.event.timestamp = Google_Protobuf_Timestamp(roundingTimeIntervalSince1970: time, rule: .toNearestOrEven)
        return event
    }

    /// Seconds since 1970 of a UTC date.
    static func time(_ year: Int, _ month: Int, _ day: Int, _ hour: Int = 0) -> Double {
        Double(CivilTime.days(year: year, month: month, day: day)) * 86_400 + Double(hour) * 3600
    }

    /// Evaluates `pql` on a person view as of `asOf`.
    static func evaluate(
        _ pql: String,
        on view: Cdp_Profile_V1_PersonView,
        asOf: Double = time(2026, 6, 15),
        memberships: Set<String> = []
    ) throws -> Outcome {
        let segment = try CompiledSegment(pql, audience: .person, segments: { _ in .person })
        let frame = Frame()
        frame.load(person: view, asOf: asOf)
        frame.memberships = memberships
        return segment.evaluate(in: frame)
    }

    static func matches(
        _ pql: String,
        on view: Cdp_Profile_V1_PersonView,
        asOf: Double = time(2026, 6, 15)
    ) throws
        -> Bool
    {
        try evaluate(pql, on: view, asOf: asOf).matched
    }
}

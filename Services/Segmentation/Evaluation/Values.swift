import CDPProto
import Foundation
import SegmentationLanguage
import SwiftProtobuf

/// One entity reachable from a view during evaluation. Payloads are the view's own messages
/// (copy-on-write storage), so binding an element to a variable copies no data.
public enum Element: Sendable {
    case person(Cdp_Profile_V1_UnifiedRecord)
    case account(Cdp_Profile_V1_UnifiedRecord)
    case opportunity(Cdp_Profile_V1_UnifiedRecord)
    case opportunityRole(Cdp_Profile_V1_OpportunityRole)
    case campaignMembership(Cdp_Profile_V1_CampaignMembership)
    case campaign(Cdp_Profile_V1_UnifiedRecord)
    case listMembership(Cdp_Profile_V1_ListMembership)
    case event(Cdp_Profile_V1_Event)
    /// Nothing: an unbound slot, or an opportunity role whose opportunity is not in the view.
    case none

    /// The unified cluster the element is, or 0.
    var clusterID: UInt64 {
        switch self {
        case .person(let record), .account(let record), .opportunity(let record), .campaign(let record):
            record.clusterID
        case .opportunityRole(let role): role.opportunityClusterID
        case .campaignMembership(let membership): membership.campaign.clusterID
        case .listMembership(let membership): membership.list.clusterID
        case .event, .none: 0
        }
    }
}

/// A value during evaluation. A missing field is `null`.
public enum Value: Equatable, Sendable {
    case null
    case number(Double)
    case string(String)
    case boolean(Bool)
    /// Seconds since 1970.
    case time(Double)

    init(_ literal: Literal) {
        switch literal {
        case .null: self = .null
        case .number(let value): self = .number(value)
        case .string(let value): self = .string(value)
        case .boolean(let value): self = .boolean(value)
        case .time(let value): self = .time(value)
        }
    }

    /// How explanations show it.
    public var text: String {
        switch self {
        case .null: "null"
        case .number(let value): Value.format(value)
        case .string(let value): "\"\(value)\""
        case .boolean(let value): String(value)
        case .time(let value): Value.format(time: value)
        }
    }

    static func format(_ number: Double) -> String {
        number == number.rounded() && abs(number) < 1e15 ? String(Int64(number)) : String(number)
    }

    static func format(time: Double) -> String {
        Date(timeIntervalSince1970: time).formatted(.iso8601)
    }
}

extension Google_Protobuf_Timestamp {
    /// Seconds since 1970, with the fraction.
    var secondsSince1970: Double { Double(seconds) + Double(nanos) / 1e9 }
}

import CDPProto
import Foundation
import SegmentationLanguage
import SwiftProtobuf

/// One entity reachable from a view during evaluation: its kind and its index in the frame's
/// collections (a campaign shares its membership's index). Plain integers, so binding an element to a
/// variable costs no reference counting.
public enum Element: Sendable, Equatable {
    case person(Int)
    case account(Int)
    case opportunity(Int)
    case opportunityRole(Int)
    case campaignMembership(Int)
    case campaign(Int)
    case listMembership(Int)
    case event(Int)
    /// Nothing: an unbound slot, or an opportunity role whose opportunity is not in the view.
    case none
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

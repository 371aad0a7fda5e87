import Foundation
import SwiftProtobuf

/// A point in time given on a command line: RFC 3339 (`2026-05-01T00:00:00Z`, `2026-05-01T02:00:00+02:00`,
/// with or without fractions of a second) or a date (`2026-05-01`, midnight UTC).
public struct TimeArgument: Sendable, Equatable, CustomStringConvertible {
    /// The instant.
    public var date: Date

    /// Parses `text`; nil if it is neither form.
    public init?(_ text: String) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let withFraction = ISO8601DateFormatter()
        withFraction.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let plain = ISO8601DateFormatter()
        plain.formatOptions = [.withInternetDateTime]
        let day = ISO8601DateFormatter()
        day.formatOptions = [.withFullDate]
        day.timeZone = TimeZone(identifier: "UTC")
        let isDay = trimmed.count == 10
        guard
            let date = isDay ? day.date(from: trimmed) : (plain.date(from: trimmed) ?? withFraction.date(from: trimmed))
        else { return nil }
        self.date = date
    }

    /// The instant as a protobuf timestamp.
    public var timestamp: Google_Protobuf_Timestamp { Google_Protobuf_Timestamp(date: date) }

    public var description: String { Self.format(date) }

    /// `date` in RFC 3339, UTC, whole seconds (`2026-05-01T00:00:00Z`).
    public static func format(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }
}

import CDPProto
import CivilDate
import SwiftProtobuf

/// A value as the input format gave it, before it is checked against a field's type.
///
/// CSV gives only strings; NDJSON also gives numbers, booleans, null and nested JSON.
public enum RawValue: Sendable, Equatable {
    case string(String)
    case number(Double)
    case bool(Bool)
    case null
    /// A JSON object or array, as its text.
    case json(String)

    /// The value as text, the way a user wrote it (for messages and string fields).
    var text: String {
        switch self {
        case .string(let value): return value
        case .number(let value): return FieldParsers.format(value)
        case .bool(let value): return value ? "true" : "false"
        case .null: return "null"
        case .json(let value): return value
        }
    }
}

/// A value converted to a canonical field's type.
public enum FieldValue: Sendable, Equatable {
    case string(String)
    case number(Double)
    case integer(Int64)
    case bool(Bool)
    case timestamp(Google_Protobuf_Timestamp)
}

/// Parsers for the scalar types of canonical fields. Each returns nil when the text is not of the type;
/// the caller words the error.
public enum FieldParsers {
    /// A decimal number: optional sign, digits, optional fraction and exponent (`1200`, `-3.5`, `1e6`).
    /// Thousands separators, currency signs, `NaN` and infinities are rejected.
    public static func number(_ text: String) -> Double? {
        var sawDigit = false
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): sawDigit = true
            case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"): break
            default: return nil
            }
        }
        guard sawDigit, let value = Double(text), value.isFinite else { return nil }
        return value
    }

    /// A whole number; `12.0` is accepted, `12.5` is not.
    public static func integer(_ text: String) -> Int64? {
        if let value = Int64(text) { return value }
        guard let value = number(text), value.rounded() == value, abs(value) < 9.0e15 else { return nil }
        return Int64(value)
    }

    /// `true`/`false`, `1`/`0`, `yes`/`no`, `y`/`n`, case-insensitive.
    public static func bool(_ text: String) -> Bool? {
        // The spellings exports use, without lowercasing (an allocation per value) first.
        switch text {
        case "true", "1": return true
        case "false", "0": return false
        default: break
        }
        switch text.lowercased() {
        case "true", "1", "yes", "y", "t": return true
        case "false", "0", "no", "n", "f": return false
        default: return nil
        }
    }

    /// An RFC 3339 date-time (`2026-05-01T10:00:00Z`, `2026-05-01T12:00:00.250+02:00`). Also accepted,
    /// because the exports of the systems we read write them: a space instead of `T`, a basic-format
    /// offset (`+0000`, Salesforce), `Z+0000` (Marketo assets), and, when `allowDate` is set, a full date alone (`2026-05-01`,
    /// taken as midnight UTC).
    public static func timestamp(_ text: String, allowDate: Bool = false) -> Google_Protobuf_Timestamp? {
        var parser = TimestampParser(Array(text.utf8))
        return parser.parse(allowDate: allowDate)
    }

    /// Whether `text` is a plausible email address: one `@`, a non-empty local part without spaces,
    /// a domain with a dot, no empty labels, at most 254 bytes. Expects trimmed, lowercased input.
    public static func isEmail(_ text: String) -> Bool {
        let bytes = text.utf8
        guard bytes.count <= 254, let at = bytes.firstIndex(of: UInt8(ascii: "@")) else { return false }
        let local = bytes[..<at]
        let domain = bytes[bytes.index(after: at)...]
        guard !local.isEmpty, local.count <= 64, !domain.isEmpty else { return false }
        for byte in bytes where byte <= 0x20 || byte == 0x7F || byte == UInt8(ascii: ",") || byte == UInt8(ascii: ";") {
            return false
        }
        guard !domain.contains(UInt8(ascii: "@")) else { return false }
        var labels = 0
        var labelLength = 0
        for byte in domain {
            if byte == UInt8(ascii: ".") {
                guard labelLength > 0 else { return false }
                labels += 1
                labelLength = 0
            } else {
                labelLength += 1
            }
        }
        return labelLength > 0 && labels >= 1
    }

    /// Formats a double without a trailing `.0` for whole numbers.
    static func format(_ value: Double) -> String {
        if value.rounded() == value, abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }
}

/// A small RFC 3339 parser over bytes (Foundation's formatters are slow and locale-sensitive).
private struct TimestampParser {
    private let bytes: [UInt8]
    private var index = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func parse(allowDate: Bool) -> Google_Protobuf_Timestamp? {
        guard let year = digits(4), expect("-"), let month = digits(2), expect("-"), let day = digits(2) else {
            return nil
        }
        guard (1...12).contains(month),
            (1...Int64(CivilDate.daysInMonth(year: Int(year), month: Int(month)))).contains(day)
        else { return nil }
        let days = Int64(CivilDate.days(year: Int(year), month: Int(month), day: Int(day)))
        if index == bytes.count {
            return allowDate ? Google_Protobuf_Timestamp(seconds: days * 86_400, nanos: 0) : nil
        }
        guard index < bytes.count,
            bytes[index] == UInt8(ascii: "T") || bytes[index] == UInt8(ascii: "t")
                || bytes[index] == UInt8(ascii: " ")
        else { return nil }
        index += 1
        guard let hour = digits(2), expect(":"), let minute = digits(2), expect(":"), let second = digits(2),
            hour < 24, minute < 60, second <= 60
        else { return nil }
        var nanos: Int32 = 0
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            var scale: Int32 = 100_000_000
            var count = 0
            while index < bytes.count, let digit = digit(bytes[index]) {
                nanos += Int32(digit) * scale
                scale /= 10
                count += 1
                index += 1
            }
            guard count > 0 else { return nil }
        }
        guard index < bytes.count else { return nil }
        var offsetSeconds: Int64 = 0
        switch bytes[index] {
        case UInt8(ascii: "Z"), UInt8(ascii: "z"):
            index += 1
            // Marketo's asset API writes `...Z+0000`: a zero offset after the Z says nothing more.
            if bytes.count - index == 5, bytes[index...].elementsEqual("+0000".utf8) { index += 5 }
        case UInt8(ascii: "+"), UInt8(ascii: "-"):
            let sign: Int64 = bytes[index] == UInt8(ascii: "-") ? -1 : 1
            index += 1
            guard let offsetHours = digits(2) else { return nil }
            if index < bytes.count, bytes[index] == UInt8(ascii: ":") { index += 1 }
            guard let offsetMinutes = digits(2), offsetHours < 24, offsetMinutes < 60 else { return nil }
            offsetSeconds = sign * (offsetHours * 3600 + offsetMinutes * 60)
        default:
            return nil
        }
        guard index == bytes.count else { return nil }
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + min(second, 59) - offsetSeconds
        return Google_Protobuf_Timestamp(seconds: seconds, nanos: nanos)
    }

    private func digit(_ byte: UInt8) -> Int64? {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) ? Int64(byte - UInt8(ascii: "0")) : nil
    }

    private mutating func digits(_ count: Int) -> Int64? {
        guard index + count <= bytes.count else { return nil }
        var value: Int64 = 0
        for _ in 0..<count {
            guard let digit = digit(bytes[index]) else { return nil }
            value = value * 10 + digit
            index += 1
        }
        return value
    }

    private mutating func expect(_ character: Unicode.Scalar) -> Bool {
        guard index < bytes.count, bytes[index] == UInt8(ascii: character) else { return false }
        index += 1
        return true
    }

}

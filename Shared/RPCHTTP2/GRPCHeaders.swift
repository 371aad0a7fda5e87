import RPCCore

/// gRPC's HTTP/2 header conventions: timeouts, status message encoding, reserved names.
enum GRPCHeaders {
    /// Headers that belong to HTTP/2 or gRPC itself and never appear in ``Metadata``.
    static func isReserved(_ name: String) -> Bool {
        if name.hasPrefix(":") { return true }
        switch name {
        case "content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "grpc-status",
            "grpc-message", "grpc-status-details-bin", "content-length", "user-agent", "connection",
            "keep-alive", "transfer-encoding", "upgrade", "host", "accept-encoding":
            return true
        default:
            return false
        }
    }

    /// Parses `grpc-timeout` (`1*8DIGIT unit`, unit one of H M S m u n).
    static func parseTimeout(_ value: String) -> Duration? {
        let bytes = Array(value.utf8)
        guard (2...9).contains(bytes.count), let unit = bytes.last else { return nil }
        var amount: Int64 = 0
        for digit in bytes.dropLast() {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(digit) else { return nil }
            amount = amount * 10 + Int64(digit - UInt8(ascii: "0"))
        }
        switch unit {
        case UInt8(ascii: "H"): return .seconds(amount * 3600)
        case UInt8(ascii: "M"): return .seconds(amount * 60)
        case UInt8(ascii: "S"): return .seconds(amount)
        case UInt8(ascii: "m"): return .milliseconds(amount)
        case UInt8(ascii: "u"): return .microseconds(amount)
        case UInt8(ascii: "n"): return .nanoseconds(amount)
        default: return nil
        }
    }

    /// Formats a timeout with the finest unit that fits in 8 digits.
    static func formatTimeout(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let nanos = max(0, seconds) * 1_000_000_000 + max(0, attoseconds) / 1_000_000_000
        let limit: Int64 = 99_999_999
        if nanos <= limit { return "\(nanos)n" }
        if nanos / 1000 <= limit { return "\(nanos / 1000)u" }
        if nanos / 1_000_000 <= limit { return "\(nanos / 1_000_000)m" }
        if nanos / 1_000_000_000 <= limit { return "\(nanos / 1_000_000_000)S" }
        return "\(min(limit, nanos / 60_000_000_000))M"
    }

    /// Percent-encodes a status message as `grpc-message` requires: bytes outside 0x20–0x7E and
    /// `%` itself become `%XX` of the UTF-8 encoding.
    static func percentEncode(_ message: String) -> String {
        var out = [UInt8]()
        out.reserveCapacity(message.utf8.count)
        let hex = Array("0123456789ABCDEF".utf8)
        for byte in message.utf8 {
            if byte >= 0x20 && byte <= 0x7E && byte != UInt8(ascii: "%") {
                out.append(byte)
            } else {
                out.append(UInt8(ascii: "%"))
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0x0F)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes a percent-encoded `grpc-message`; malformed escapes are kept as they are.
    static func percentDecode(_ value: String) -> String {
        let bytes = Array(value.utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "%"), index + 2 < bytes.count,
                let high = hexValue(bytes[index + 1]), let low = hexValue(bytes[index + 2])
            {
                out.append(high << 4 | low)
                index += 3
            } else {
                out.append(bytes[index])
                index += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// Whether a `content-type` is gRPC's (`application/grpc`, optionally `+proto` or `;params`).
    static func isGRPCContentType(_ value: String) -> Bool {
        guard value.hasPrefix("application/grpc") else { return false }
        let rest = value.dropFirst("application/grpc".count)
        return rest.isEmpty || rest.first == "+" || rest.first == ";"
    }

    /// The message encodings this implementation accepts, as advertised in `grpc-accept-encoding`.
    static let acceptedEncodings = "gzip,identity"
}

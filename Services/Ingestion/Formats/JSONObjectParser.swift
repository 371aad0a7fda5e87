/// Parses one JSON object (an NDJSON line) into its top-level properties, in order.
///
/// Scalar values become `RawValue`s; nested objects and arrays are kept as their JSON text (they become
/// JSON custom attributes). Strict RFC 8259 syntax; the error says what was expected at which column.
enum JSONObjectParser {
    struct Failure: Error, Equatable {
        /// The 1-based byte column in the line.
        var column: Int
        var message: String
    }

    /// The properties of the object in `bytes`.
    static func parse(_ bytes: UnsafeRawBufferPointer) throws(Failure) -> [(String, RawValue)] {
        var parser = Parser(bytes: bytes)
        return try parser.parseTopLevelObject()
    }

    /// The property `name` of the JSON object `text`, if it has one.
    static func property(_ name: String, in text: String) throws(Failure) -> RawValue? {
        var copy = text
        let parsed = copy.withUTF8 { buffer in
            Result { () throws(Failure) in try parse(UnsafeRawBufferPointer(buffer)) }
        }
        return try parsed.get().first { $0.0 == name }?.1
    }

    private struct Parser {
        let bytes: UnsafeRawBufferPointer
        var index = 0

        mutating func parseTopLevelObject() throws(Failure) -> [(String, RawValue)] {
            skipSpace()
            guard peek() == UInt8(ascii: "{") else { throw failure("expected '{' to start a JSON object") }
            index += 1
            var properties: [(String, RawValue)] = []
            skipSpace()
            if peek() == UInt8(ascii: "}") {
                index += 1
            } else {
                while true {
                    skipSpace()
                    guard peek() == UInt8(ascii: "\"") else {
                        throw failure("expected a property name in double quotes")
                    }
                    let name = try parseString()
                    skipSpace()
                    guard peek() == UInt8(ascii: ":") else { throw failure("expected ':' after property \"\(name)\"") }
                    index += 1
                    skipSpace()
                    properties.append((name, try parseValue()))
                    skipSpace()
                    if peek() == UInt8(ascii: ",") {
                        index += 1
                        continue
                    }
                    guard peek() == UInt8(ascii: "}") else { throw failure("expected ',' or '}' after a value") }
                    index += 1
                    break
                }
            }
            skipSpace()
            guard index == bytes.count else { throw failure("unexpected text after the object") }
            return properties
        }

        private mutating func parseValue() throws(Failure) -> RawValue {
            guard let byte = peek() else { throw failure("expected a value, found the end of the line") }
            switch byte {
            case UInt8(ascii: "\""):
                return .string(try parseString())
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                let start = index
                try skipNested()
                return .json(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self))
            case UInt8(ascii: "t"):
                try expectWord("true")
                return .bool(true)
            case UInt8(ascii: "f"):
                try expectWord("false")
                return .bool(false)
            case UInt8(ascii: "n"):
                try expectWord("null")
                return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                return try parseNumber()
            default:
                throw failure("expected a value (string, number, true, false, null, object or array)")
            }
        }

        private mutating func parseString() throws(Failure) -> String {
            index += 1  // the opening quote
            let start = index
            // Fast path: no escapes.
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\"") {
                    let slice = UnsafeRawBufferPointer(rebasing: bytes[start..<index])
                    index += 1
                    guard let text = UTF8Text.string(slice) else {
                        throw Failure(column: start + 1, message: "the string is not valid UTF-8")
                    }
                    return text
                }
                if byte == UInt8(ascii: "\\") { break }
                if byte < 0x20 { throw failure("a control character inside a string must be escaped") }
                index += 1
            }
            var buffer = Array(UnsafeRawBufferPointer(rebasing: bytes[start..<index]))
            while index < bytes.count {
                let byte = bytes[index]
                index += 1
                switch byte {
                case UInt8(ascii: "\""):
                    guard let text = UTF8Text.string(buffer) else {
                        throw Failure(column: start + 1, message: "the string is not valid UTF-8")
                    }
                    return text
                case UInt8(ascii: "\\"):
                    guard let escape = peek() else { break }
                    index += 1
                    switch escape {
                    case UInt8(ascii: "\""): buffer.append(0x22)
                    case UInt8(ascii: "\\"): buffer.append(0x5C)
                    case UInt8(ascii: "/"): buffer.append(0x2F)
                    case UInt8(ascii: "b"): buffer.append(0x08)
                    case UInt8(ascii: "f"): buffer.append(0x0C)
                    case UInt8(ascii: "n"): buffer.append(0x0A)
                    case UInt8(ascii: "r"): buffer.append(0x0D)
                    case UInt8(ascii: "t"): buffer.append(0x09)
                    case UInt8(ascii: "u"):
                        var scalar = try parseHex4()
                        if (0xD800...0xDBFF).contains(scalar) {
                            guard peek() == UInt8(ascii: "\\"), index + 1 < bytes.count,
                                bytes[index + 1] == UInt8(ascii: "u")
                            else { throw failure("a \\u escape of a high surrogate must be followed by a low one") }
                            index += 2
                            let low = try parseHex4()
                            guard (0xDC00...0xDFFF).contains(low) else { throw failure("invalid low surrogate") }
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        }
                        guard let unicode = Unicode.Scalar(scalar) else { throw failure("invalid \\u escape") }
                        buffer.append(contentsOf: Array(String(Character(unicode)).utf8))
                    default:
                        throw failure("invalid escape \\\(Character(Unicode.Scalar(escape)))")
                    }
                default:
                    if byte < 0x20 { throw failure("a control character inside a string must be escaped") }
                    buffer.append(byte)
                }
            }
            throw Failure(column: start, message: "a string is never closed")
        }

        private mutating func parseHex4() throws(Failure) -> UInt32 {
            guard index + 4 <= bytes.count else { throw failure("expected four hex digits after \\u") }
            var value: UInt32 = 0
            for _ in 0..<4 {
                let byte = bytes[index]
                let digit: UInt8
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
                default: throw failure("expected four hex digits after \\u")
                }
                value = value << 4 | UInt32(digit)
                index += 1
            }
            return value
        }

        private mutating func parseNumber() throws(Failure) -> RawValue {
            let start = index
            if peek() == UInt8(ascii: "-") { index += 1 }
            guard let first = peek(), isDigit(first) else { throw failure("expected a digit") }
            if first == UInt8(ascii: "0") {
                index += 1
            } else {
                while let byte = peek(), isDigit(byte) { index += 1 }
            }
            if peek() == UInt8(ascii: ".") {
                index += 1
                guard let byte = peek(), isDigit(byte) else { throw failure("expected a digit after '.'") }
                while let byte = peek(), isDigit(byte) { index += 1 }
            }
            if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
                index += 1
                if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { index += 1 }
                guard let byte = peek(), isDigit(byte) else { throw failure("expected a digit in the exponent") }
                while let byte = peek(), isDigit(byte) { index += 1 }
            }
            let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
            // Integers beyond a double's exact range (ids like 12345678901234567890) keep their digits:
            // as text they still convert to numbers where a field wants one.
            if index - start > 15,
                !text.utf8.contains(where: { $0 == UInt8(ascii: ".") || $0 | 0x20 == UInt8(ascii: "e") })
            {
                return .string(text)
            }
            guard let value = Double(text), value.isFinite else {
                throw Failure(column: start + 1, message: "the number \(text) is out of range")
            }
            return .number(value)
        }

        /// Skips a nested object or array, strings included, checking only that brackets balance.
        private mutating func skipNested() throws(Failure) {
            var depth = 0
            while index < bytes.count {
                let byte = bytes[index]
                switch byte {
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    depth += 1
                    index += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    depth -= 1
                    index += 1
                    if depth == 0 { return }
                case UInt8(ascii: "\""):
                    _ = try parseString()
                default:
                    index += 1
                }
            }
            throw failure("a nested object or array is never closed")
        }

        private mutating func expectWord(_ word: StaticString) throws(Failure) {
            let count = word.utf8CodeUnitCount
            guard index + count <= bytes.count else { throw failure("expected \(word)") }
            for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] {
                throw failure("expected \(word)")
            }
            index += count
        }

        private func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

        private func peek() -> UInt8? { index < bytes.count ? bytes[index] : nil }

        private mutating func skipSpace() {
            while let byte = peek(), byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D { index += 1 }
        }

        private func failure(_ message: String) -> Failure { Failure(column: index + 1, message: message) }
    }
}

/// Splits a byte stream into NDJSON lines (LF or CRLF), in pieces of any size, each line at most
/// `maxLineBytes` long (longer ones are reported, not kept).
struct LineSplitter {
    struct Line {
        var number: UInt64
        var bytes: [UInt8]
        var isOversized: Bool
    }

    private let maxLineBytes: Int
    private var buffer: [UInt8] = []
    private var length = 0
    private var lineNumber: UInt64 = 1
    private var oversized = false
    private var bomBytesSeen = 0
    private var checkedByteOrderMark = false
    private static let byteOrderMark: [UInt8] = [0xEF, 0xBB, 0xBF]

    init(maxLineBytes: Int) { self.maxLineBytes = maxLineBytes }

    mutating func read(_ bytes: UnsafeRawBufferPointer, into lines: inout [Line]) {
        var start = 0
        // A UTF-8 byte-order mark before the first line is not part of it (it may arrive split).
        if !checkedByteOrderMark {
            while bomBytesSeen < 3, start < bytes.count, bytes[start] == Self.byteOrderMark[bomBytesSeen] {
                bomBytesSeen += 1
                start += 1
            }
            guard bomBytesSeen == 3 || start < bytes.count else { return }  // all may still be a BOM
            checkedByteOrderMark = true
            if bomBytesSeen < 3 {
                // Not a BOM after all: those bytes are text.
                let seen = bomBytesSeen
                Self.byteOrderMark.withUnsafeBytes { take(UnsafeRawBufferPointer(rebasing: $0[0..<seen])) }
            }
        }
        while start < bytes.count {
            guard let newline = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) else {
                take(UnsafeRawBufferPointer(rebasing: bytes[start...]))
                return
            }
            take(UnsafeRawBufferPointer(rebasing: bytes[start..<newline]))
            emit(into: &lines)
            start = newline + 1
        }
    }

    mutating func finish(into lines: inout [Line]) {
        if length > 0 { emit(into: &lines) }
    }

    private mutating func take(_ piece: UnsafeRawBufferPointer) {
        length += piece.count
        if length > maxLineBytes {
            oversized = true
            buffer.removeAll(keepingCapacity: true)
        } else {
            buffer.append(contentsOf: piece)
        }
    }

    private mutating func emit(into lines: inout [Line]) {
        if buffer.last == UInt8(ascii: "\r") { buffer.removeLast() }
        lines.append(Line(number: lineNumber, bytes: buffer, isOversized: oversized))
        buffer.removeAll(keepingCapacity: true)
        length = 0
        oversized = false
        lineNumber += 1
    }
}

/// Strings from bytes that must be UTF-8, fast for the common all-ASCII case.
enum UTF8Text {
    /// The text of `bytes`, or nil if they are not valid UTF-8.
    ///
    /// `String(validating:as:)` is generic and, called per field, its metadata lookups showed in perf;
    /// ASCII (most fields) needs no validation, so it takes the specialized decoding path.
    @inline(__always)
    static func string(_ bytes: some Collection<UInt8>) -> String? {
        var high: UInt8 = 0
        for byte in bytes { high |= byte }
        if high < 0x80 { return String(decoding: bytes, as: UTF8.self) }
        return String(validating: bytes, as: UTF8.self)
    }
}

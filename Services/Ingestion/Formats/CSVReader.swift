/// A streaming RFC 4180 CSV reader: bytes go in, in pieces of any size (a split may fall anywhere, even
/// inside a quoted field or a CRLF), rows come out. Memory is bounded by the longest row, not the file.
///
/// Accepts `,` separators, `"` quoting with `""` escapes, LF or CRLF line ends, line breaks inside quoted
/// fields, and a UTF-8 byte-order mark at the start. Fields come out as `String`s; bytes that are not
/// UTF-8 make the whole input unreadable (`CSVReader.Failure`). Text after a quoted field's closing
/// quote (`"abc"def`) makes its row malformed (``Row/problem``): it is how a quote left unclosed, or
/// written once inside a quoted field, shows, and reading on would take the next line into the field.
struct CSVReader {
    /// One row: its fields and the 1-based physical line where it starts.
    struct Row {
        var line: UInt64
        var fields: [String]
        /// The row was longer than the limit; its fields are empty.
        var isOversized: Bool
        /// Why the row cannot be read as written (its fields are as read, for no use), if it cannot.
        var problem: String? = nil
    }

    /// The input cannot be read as CSV at all.
    struct Failure: Error {
        var line: UInt64
        var message: String
    }

    private enum State {
        case fieldStart
        case unquoted
        case quoted
        /// A quote inside a quoted field: either the end of the field or the first half of `""`.
        case quoteInQuoted
        /// A CR outside quotes: the row ends here whether or not an LF follows.
        case afterCarriageReturn
    }

    private let maxRowBytes: Int
    private var state = State.fieldStart
    private var field: [UInt8] = []
    private var fields: [String] = []
    private var rowBytes = 0
    private var line: UInt64 = 1
    private var rowLine: UInt64 = 1
    private var atStart = true
    private var bomBytesSeen = 0
    private var oversized = false
    /// Whether the current row has any content (a lone line break is an empty row, skipped).
    private var rowStarted = false
    /// The line on which the current quoted field opened.
    private var quoteLine: UInt64 = 1
    /// Why the current row is malformed, if it is.
    private var problem: String?

    init(maxRowBytes: Int) {
        self.maxRowBytes = maxRowBytes
        field.reserveCapacity(256)
    }

    /// Reads `bytes`, appending every completed row to `rows`.
    mutating func read(_ bytes: UnsafeRawBufferPointer, into rows: inout [Row]) throws(Failure) {
        var index = 0
        let count = bytes.count
        if atStart {
            // Skip a UTF-8 BOM (EF BB BF), which may itself arrive split across pieces.
            let bom: [UInt8] = [0xEF, 0xBB, 0xBF]
            while index < count, bomBytesSeen < 3, bytes[index] == bom[bomBytesSeen] {
                bomBytesSeen += 1
                index += 1
            }
            if bomBytesSeen == 3 {
                atStart = false
            } else if index < count {
                atStart = false
                if bomBytesSeen > 0 {
                    // Not a BOM after all (text starting with, say, U+FF25): read those bytes as data.
                    let seen = Array(bom[0..<bomBytesSeen])
                    var failure: Failure?
                    seen.withUnsafeBytes { bytes in
                        do throws(Failure) { try read(bytes, into: &rows) } catch { failure = error }
                    }
                    if let failure { throw failure }
                }
            } else {
                return  // Everything so far may be the start of a BOM: wait for more.
            }
        }
        while index < count {
            let byte = bytes[index]
            index += 1
            switch state {
            case .fieldStart:
                switch byte {
                case UInt8(ascii: "\""):
                    rowStarted = true
                    quoteLine = line
                    state = .quoted
                case UInt8(ascii: ","):
                    rowStarted = true
                    try endField()
                case UInt8(ascii: "\n"):
                    try endRow(into: &rows)
                    line += 1
                case UInt8(ascii: "\r"):
                    state = .afterCarriageReturn
                default:
                    rowStarted = true
                    index = appendRun(from: index - 1, of: bytes, inQuotes: false)
                    state = .unquoted
                }
            case .unquoted:
                if try !endFieldOrRow(at: byte, into: &rows) {
                    index = appendRun(from: index - 1, of: bytes, inQuotes: false)
                }
            case .quoted:
                if byte == UInt8(ascii: "\"") {
                    state = .quoteInQuoted
                } else if byte == UInt8(ascii: "\n") {
                    line += 1
                    append(byte)
                } else {
                    index = appendRun(from: index - 1, of: bytes, inQuotes: true)
                }
            case .quoteInQuoted:
                if byte == UInt8(ascii: "\"") {
                    append(byte)
                    state = .quoted
                } else if try !endFieldOrRow(at: byte, into: &rows) {
                    // `"abc"def`: the row is malformed; read on to its end as unquoted text.
                    if problem == nil { problem = textAfterClosingQuote(byte) }
                    append(byte)
                    state = .unquoted
                }
            case .afterCarriageReturn:
                try endRow(into: &rows)
                line += 1
                state = .fieldStart
                if byte != UInt8(ascii: "\n") {
                    // A bare CR ends the row; this byte starts the next one.
                    index -= 1
                }
            }
        }
    }

    /// Ends the input: a last row without a line break is returned; an open quote is a failure.
    mutating func finish(into rows: inout [Row]) throws(Failure) {
        switch state {
        case .quoted:
            throw Failure(line: rowLine, message: "a quoted field opened on line \(rowLine) is never closed")
        case .afterCarriageReturn, .unquoted, .quoteInQuoted:
            try endRow(into: &rows)
        case .fieldStart:
            if rowStarted { try endRow(into: &rows) }
        }
        state = .fieldStart
    }

    /// What is wrong with a row where `byte` follows a quoted field's closing quote.
    private func textAfterClosingQuote(_ byte: UInt8) -> String {
        let shown = byte >= 0x20 && byte < 0x7F ? "`\(Character(Unicode.Scalar(byte)))`" : "a byte \(byte)"
        let rule = "a quote inside a quoted field is written twice (\"\")"
        guard quoteLine == line else {
            return "the quoted field opened on line \(quoteLine) closes on line \(line), where \(shown) follows its "
                + "closing quote: is a closing quote missing on line \(quoteLine)? (\(rule))"
        }
        return "\(shown) follows the closing quote of a quoted field on line \(line) (\(rule))"
    }

    /// Handles a separator or line break after a field's text; false if `byte` is neither.
    @inline(__always)
    private mutating func endFieldOrRow(at byte: UInt8, into rows: inout [Row]) throws(Failure) -> Bool {
        switch byte {
        case UInt8(ascii: ","):
            try endField()
            state = .fieldStart
        case UInt8(ascii: "\n"):
            try endRow(into: &rows)
            line += 1
            state = .fieldStart
        case UInt8(ascii: "\r"):
            state = .afterCarriageReturn
        default:
            return false
        }
        return true
    }

    /// Appends the run of ordinary bytes that starts at `start` (bytes that neither end the field nor
    /// need a look: no separator, quote or line break) in one copy; returns the index after the run.
    /// Copying runs rather than bytes one by one halves the reader's cost (measured with perf).
    @inline(__always)
    private mutating func appendRun(from start: Int, of bytes: UnsafeRawBufferPointer, inQuotes: Bool) -> Int {
        var end = start
        if inQuotes {
            while end < bytes.count, bytes[end] != UInt8(ascii: "\""), bytes[end] != UInt8(ascii: "\n") { end += 1 }
        } else {
            while end < bytes.count {
                let byte = bytes[end]
                if byte == UInt8(ascii: ",") || byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") { break }
                end += 1
            }
        }
        rowBytes += end - start
        if rowBytes > maxRowBytes {
            oversized = true
        } else {
            field.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
        }
        return end
    }

    @inline(__always)
    private mutating func append(_ byte: UInt8) {
        rowBytes += 1
        if rowBytes > maxRowBytes {
            oversized = true
            return
        }
        field.append(byte)
    }

    private mutating func endField() throws(Failure) {
        rowBytes += 1
        if !oversized {
            guard let text = UTF8Text.string(field) else {
                throw Failure(line: line, message: "line \(line) is not valid UTF-8 (field \(fields.count + 1))")
            }
            fields.append(text)
        }
        field.removeAll(keepingCapacity: true)
    }

    private mutating func endRow(into rows: inout [Row]) throws(Failure) {
        if rowStarted || !field.isEmpty || !fields.isEmpty {
            try endField()
            rows.append(
                Row(line: rowLine, fields: oversized ? [] : fields, isOversized: oversized, problem: problem)
            )
        }
        fields.removeAll(keepingCapacity: true)
        rowBytes = 0
        oversized = false
        problem = nil
        rowStarted = false
        rowLine = line + 1
    }
}

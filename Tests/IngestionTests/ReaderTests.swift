import Foundation
import Testing

@testable import IngestionFormats

/// The streaming CSV reader and NDJSON line handling: quoting, line numbers, splits, failures.
@Suite("Readers")
struct ReaderTests {
    private func readCSV(_ text: String, pieceSize: Int = .max, maxRowBytes: Int = 1 << 20) throws -> [CSVReader.Row] {
        var reader = CSVReader(maxRowBytes: maxRowBytes)
        var rows: [CSVReader.Row] = []
        let bytes = Array(text.utf8)
        var start = 0
        while start < bytes.count {
            let end = min(bytes.count, start + pieceSize)
            try bytes[start..<end].withUnsafeBytes { try reader.read($0, into: &rows) }
            start = end
        }
        try reader.finish(into: &rows)
        return rows
    }

    @Test func quotedFieldsEscapesAndLineNumbers() throws {
        let text = "a,b,c\r\n1,\"x, y\",\"say \"\"hi\"\"\"\n2,\"multi\nline\",z\n\n3,,\"\"\n4,last,no-newline"
        let rows = try readCSV(text)
        #expect(
            rows.map(\.fields) == [
                ["a", "b", "c"], ["1", "x, y", "say \"hi\""], ["2", "multi\nline", "z"], ["3", "", ""],
                ["4", "last", "no-newline"],
            ]
        )
        // Row 3 spans lines 3-4; the blank line 5 is skipped.
        #expect(rows.map(\.line) == [1, 2, 3, 6, 7])
    }

    @Test(arguments: [1, 2, 3, 5, 64])
    func anySplitGivesTheSameRows(pieceSize: Int) throws {
        let text = "\u{FEFF}id,name\r\n1,\"Townsend, Inc.\"\r\n2,\"line\r\nbreak\"\r\n3,M\u{E9}xico\r\n"
        let whole = try readCSV(text)
        let pieces = try readCSV(text, pieceSize: pieceSize)
        #expect(pieces.map(\.fields) == whole.map(\.fields))
        #expect(pieces.map(\.line) == whole.map(\.line))
        #expect(whole.first?.fields == ["id", "name"], "the byte-order mark is not part of the first column")
        #expect(whole.last?.fields == ["3", "México"])
    }

    @Test func textThatStartsLikeAByteOrderMarkIsText() throws {
        // U+FF25 (full-width E) is EF BC A5: its first byte is the BOM's.
        let rows = try readCSV("\u{FF25}mail,id\nx,1\n", pieceSize: 1)
        #expect(rows.first?.fields == ["\u{FF25}mail", "id"])
    }

    @Test(arguments: [1, 2, 100])
    func ndjsonSkipsAByteOrderMarkAndKeepsLongIntegersExact(pieceSize: Int) throws {
        var splitter = LineSplitter(maxLineBytes: 1024)
        var lines: [LineSplitter.Line] = []
        let bytes = Array("\u{FEFF}{\"id\":12345678901234567890,\"n\":12}\n{\"id\":2}\n".utf8)
        var start = 0
        while start < bytes.count {
            let end = min(bytes.count, start + pieceSize)
            bytes[start..<end].withUnsafeBytes { splitter.read($0, into: &lines) }
            start = end
        }
        splitter.finish(into: &lines)
        #expect(lines.count == 2)
        let first = try lines[0].bytes.withUnsafeBytes { try JSONObjectParser.parse($0) }
        #expect(first.map(\.1) == [.string("12345678901234567890"), .number(12)])
    }

    @Test func anUnclosedQuoteFailsWithItsLine() throws {
        #expect {
            _ = try readCSV("id,name\n1,ok\n2,\"never closed\n3,x\n")
        } throws: { error in
            (error as? CSVReader.Failure)?.message == "a quoted field opened on line 3 is never closed"
        }
    }

    @Test func invalidUTF8FailsWithItsLine() throws {
        var reader = CSVReader(maxRowBytes: 1024)
        var rows: [CSVReader.Row] = []
        let bytes: [UInt8] = Array("id,name\n1,".utf8) + [0xC3, 0x28] + Array("\n".utf8)
        #expect {
            try bytes.withUnsafeBytes { try reader.read($0, into: &rows) }
        } throws: { error in
            (error as? CSVReader.Failure)?.message == "line 2 is not valid UTF-8 (field 2)"
        }
    }

    @Test func oversizedRowsAreFlaggedAndTheNextRowIsRead() throws {
        let rows = try readCSV("id,v\n1,\(String(repeating: "x", count: 100))\n2,ok\n", maxRowBytes: 50)
        #expect(rows.count == 3)
        #expect(rows[1].isOversized && rows[1].line == 2)
        #expect(rows[2].fields == ["2", "ok"] && !rows[2].isOversized)
    }

    @Test func textAfterAClosingQuoteMakesTheRowMalformedAndSaysWhere() throws {
        // Line 3's JSON lost its closing `}"`: its quote runs on to line 4 and closes there, before `{`.
        let text = "id,attributes\n1,\"{\"\"a\"\":1}\"\n2,\"{\"\"a\"\":2\n3,\"{\"\"a\"\":3}\"\n4,\"x\"y\n5,ok\n"
        let rows = try readCSV(text)
        #expect(rows.map(\.line) == [1, 2, 3, 5, 6])
        #expect(rows.map { $0.problem == nil } == [true, true, false, false, true])
        #expect(
            rows[2].problem
                == "the quoted field opened on line 3 closes on line 4, where `{` follows its closing quote: is a "
                + "closing quote missing on line 3? (a quote inside a quoted field is written twice (\"\"))"
        )
        #expect(
            rows[3].problem
                == "`y` follows the closing quote of a quoted field on line 5 (a quote inside a quoted field is "
                + "written twice (\"\"))"
        )
        #expect(rows[4].fields == ["5", "ok"])
    }

    @Test func jsonObjectsKeepTypesAndNestedText() throws {
        let line =
            #"{"id":"e1","n":-1.5e2,"ok":true,"none":null,"nested":{"a":[1,"}"]},"esc":"tab\tq\"\u00e9\ud83d\ude00"}"#
        var copy = line
        let properties = try copy.withUTF8 { try JSONObjectParser.parse(UnsafeRawBufferPointer($0)) }
        #expect(properties.map(\.0) == ["id", "n", "ok", "none", "nested", "esc"])
        #expect(properties[0].1 == .string("e1"))
        #expect(properties[1].1 == .number(-150))
        #expect(properties[2].1 == .bool(true))
        #expect(properties[3].1 == .null)
        #expect(properties[4].1 == .json(#"{"a":[1,"}"]}"#))
        #expect(properties[5].1 == .string("tab\tq\"é😀"))
    }

    @Test(arguments: [
        (#"{"a":1,}"#, 8), (#"{"a" 1}"#, 6), (#"["a"]"#, 1), (#"{"a":01}"#, 7), (#"{"a":1} x"#, 9), (#"{"a":tru}"#, 6),
    ])
    func badJSONSaysWhere(line: String, column: Int) throws {
        var copy = line
        #expect {
            try copy.withUTF8 { _ = try JSONObjectParser.parse(UnsafeRawBufferPointer($0)) }
        } throws: { error in
            (error as? JSONObjectParser.Failure)?.column == column
        }
    }
}

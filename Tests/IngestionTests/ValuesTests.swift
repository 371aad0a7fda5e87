import CDPProto
import SwiftProtobuf
import Testing

@testable import IngestionFormats

@Suite("Field value parsers")
struct ValuesTests {
    @Test(arguments: [
        ("2026-05-01T10:00:00Z", 1_777_629_600, 0),
        ("2026-05-01T12:00:00.250+02:00", 1_777_629_600, 250_000_000),
        ("2026-05-01T10:00:00.000+0000", 1_777_629_600, 0),
        ("2026-05-01 10:00:00Z", 1_777_629_600, 0),
        ("1970-01-01T00:00:00Z", 0, 0),
        ("2024-02-29T00:00:00Z", 1_709_164_800, 0),
    ])
    func timestampsParse(text: String, seconds: Int64, nanos: Int32) throws {
        let timestamp = try #require(FieldParsers.timestamp(text))
        #expect(timestamp.seconds == seconds)
        #expect(timestamp.nanos == nanos)
    }

    @Test(arguments: [
        "2026-05-01", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-05-01T10:00:00", "yesterday", "",
    ])
    func badTimestampsAreRejected(text: String) {
        #expect(FieldParsers.timestamp(text) == nil)
    }

    @Test func datesAreAcceptedWhereAllowed() throws {
        let date = try #require(FieldParsers.timestamp("2026-03-31", allowDate: true))
        #expect(date.seconds == 1_774_915_200)
    }

    @Test(arguments: ["p1@townsend.com", "a.b+c@sub.example.co.uk"])
    func emailsAreAccepted(text: String) { #expect(FieldParsers.isEmail(text)) }

    @Test(arguments: [
        "p1townsend.com", "p1@", "@townsend.com", "p1@townsend", "p1@@townsend.com", "p 1@townsend.com",
        "p1@townsend..com",
    ])
    func badEmailsAreRejected(text: String) { #expect(!FieldParsers.isEmail(text)) }

    @Test func numbersAndBooleans() {
        #expect(FieldParsers.number("200000") == 200_000)
        #expect(FieldParsers.number("-3.5e2") == -350)
        #expect(FieldParsers.number("1,000") == nil)
        #expect(FieldParsers.number("$5") == nil)
        #expect(FieldParsers.number("nan") == nil)
        #expect(FieldParsers.integer("12.0") == 12)
        #expect(FieldParsers.integer("12.5") == nil)
        #expect(FieldParsers.bool("TRUE") == true)
        #expect(FieldParsers.bool("0") == false)
        #expect(FieldParsers.bool("maybe") == nil)
    }
}

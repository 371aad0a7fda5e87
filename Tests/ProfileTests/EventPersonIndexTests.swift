import CDPProto
import Foundation
import GRDB
import PipelineSupport
import SwiftProtobuf
import TestSupport
import Testing

@testable import ProfileStore

/// Events by person (``EventPersonIndex``): whatever happened since, and however many events were folded
/// into the index table, a person's events are the live events of their records.
@Suite("Events by person")
struct EventPersonIndexTests {
    /// A seeded random world: events added, sent again (another time, another person), deleted; person
    /// records changing email (merging into another person and splitting off again); the store reopened.
    /// After every step, each person's events (view, privacy data) are the model's, and the state
    /// changes name each live event's person as it is now. Folds every 2 and 7 events, and never.
    @Test(arguments: [2, 7, 1_000_000])
    func everyPersonHasTheEventsOfTheirRecords(batch: Int) async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/profile.sqlite"
        let configuration = SQLiteProfileStore.Configuration(eventIndexBatch: batch)
        var store = try SQLiteProfileStore(path: path, configuration: configuration)
        var pipeline = try ProfilePipeline(profile: store)
        var random = SeededRandom(state: UInt64(batch))

        // Eight persons of one instance, six of another with emails of their own until they take one
        // of the first eight's (a merge) and give it back (a split).
        let keys = (0..<8).map { "P\($0)" } + (0..<6).map { "Q\($0)" }
        var emails: [String: String] = [:]
        for id in keys {
            emails[id] = "\(id.lowercased())@example.com"
            try await pipeline.ingest([Self.person(id, email: emails[id]!)])
        }
        /// The live events: key → person record and time.
        var events: [String: (person: String, at: Int)] = [:]
        var next = 0
        /// The person each event was last sent with by the state changes (0: gone).
        var sentPerson: [String: UInt64] = [:]

        for step in 0..<160 {
            let roll = random.below(100)
            if roll < 55 || events.isEmpty {
                next += 1
                let key = "e\(next)@web-1.Web"
                events[key] = (keys[random.below(keys.count)], random.below(1000))
                try await pipeline.ingest([Self.event(key, events[key]!)])
            } else if roll < 65 {
                let key = events.keys.sorted()[random.below(events.count)]
                events[key] = (keys[random.below(keys.count)], random.below(1000))
                try await pipeline.ingest([Self.event(key, events[key]!)])
            } else if roll < 75 {
                let key = events.keys.sorted()[random.below(events.count)]
                try await pipeline.ingest([Bodea.deleted(Self.event(key, events[key]!))])
                events[key] = nil
            } else if roll < 95 {
                let id = "Q\(random.below(6))"
                let joins = random.below(2) == 0
                emails[id] = joins ? "p\(random.below(8))@example.com" : "\(id.lowercased())@example.com"
                try await pipeline.ingest([Self.person(id, email: emails[id]!)])
            } else {
                store = try SQLiteProfileStore(path: path, configuration: configuration)
                pipeline = pipeline.feeding(store)
            }

            let chunk = try store.takeStateChanges(limit: 1_000_000)
            for change in try chunk.changes {
                guard case .event = change.item else { continue }
                sentPerson[change.event.key] = change.event.hasEvent ? change.event.personClusterID : 0
            }
            try store.markSent(chunk)

            for email in Set(emails.values) {
                let cluster = try #require(try store.cluster(of: .person, named: identity("email", email)))
                let expected = events.filter { emails[$0.value.person] == email }
                    .sorted { ($0.value.at, $1.key) > ($1.value.at, $0.key) }.map(\.key)
                let shown = try store.events(person: cluster, from: .distantPast, to: .distantFuture, limit: 10_000)
                #expect(shown.map(\.key) == expected, "step \(step), batch \(batch): \(email)'s events")
                #expect(try store.personData(cluster: cluster).events.sorted() == expected.sorted())
                for key in expected {
                    #expect(sentPerson[key] == cluster, "step \(step): \(key) was sent with its person")
                }
            }
            for (key, person) in sentPerson where events[key] == nil {
                #expect(person == 0, "step \(step): deleted \(key) was sent as gone")
            }
        }
        let limited = try store.events(
            person: try #require(try store.cluster(of: .person, named: identity("email", "p0@example.com"))),
            from: Self.time(200),
            to: Self.time(800),
            limit: 2
        )
        let expected = events.filter {
            emails[$0.value.person] == "p0@example.com" && (200...800).contains($0.value.at)
        }
        .sorted { ($0.value.at, $1.key) > ($1.value.at, $0.key) }.prefix(2).map(\.key)
        #expect(limited.map(\.key) == expected, "a window and a limit")
    }

    /// A store of version 6 (events indexed by person in `events` itself) keeps every person's events.
    @Test func theEventsOfAnOlderStoreAreFoundByPerson() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/profile.sqlite"
        let queue = try DatabaseQueue(path: path)
        try SQLiteProfileStore.migrator.migrate(queue, upTo: "v6: the mark log")
        try queue.write { db in
            for (position, person, minute) in [(1, 7, 10), (2, 8, 20), (3, 7, 30)] {
                try db.execute(
                    sql: """
                        INSERT INTO events (rowid, key, person_cluster, ref_namespace, ref_value, timestamp, record)
                        VALUES (?, ?, ?, 'email', 'x', ?, ?)
                        """,
                    arguments: [
                        position, "e\(position)", person, SQLiteProfileStore.milliseconds(Self.time(minute)),
                        try Self.event("e\(position)", ("P0", minute)).record.serializedBytes() as Data,
                    ]
                )
            }
            try db.execute(sql: "UPDATE counters SET value = 3 WHERE name IN ('event_log_end', 'event_log_sent')")
        }
        try queue.close()
        let store = try SQLiteProfileStore(path: path)
        let shown = try store.events(person: 7, from: .distantPast, to: .distantFuture, limit: 10)
        #expect(shown.map(\.key) == ["e3", "e1"])
        #expect(try store.personData(cluster: 8).events == ["e2"])
    }

    /// A new directory for a test's database; the test removes it.
    static func temporaryDirectory() throws -> String {
        let directory = NSTemporaryDirectory() + "profile-events-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory
    }

    static func time(_ minute: Int) -> Date { Date(timeIntervalSince1970: 1_790_000_000 + Double(minute) * 60) }

    static func person(_ id: String, email: String) -> Cdp_Identity_V1_StoredRecord {
        Bodea.person(id, id.hasPrefix("P") ? "mkto-1" : "mkto-2", email: email, account: nil)
    }

    static func event(_ key: String, _ event: (person: String, at: Int)) -> Cdp_Identity_V1_StoredRecord {
        var record = Cdp_Model_V1_Record()
        record.key = key
        record.source = Bodea.source("web-1", "Web")
        record.event.eventID = key
        record.event.personKey = "\(event.person)@\(event.person.hasPrefix("P") ? "mkto-1" : "mkto-2").Marketo"
        record.event.eventType = "web.webpagedetails.pageViews"
        record.event.url = "https://bodea.example/\(key)"
        record.event.timestamp = Google_Protobuf_Timestamp(date: time(event.at))
        return Bodea.stored(record)
    }
}

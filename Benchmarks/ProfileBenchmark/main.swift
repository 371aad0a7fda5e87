// Profile benchmark (release build):
//
//   swift run -c release profile-benchmark [persons] [seed]
//
// Feeds a SQLiteProfileStore in a temporary directory with identity's stream, as identity would send it
// (annotated records with cluster ids, in calls of 1,000 updates), for a synthetic B2B dataset scaled
// from `persons` (default 100,000): persons appear in one or two sources (two fragments per person
// cluster for half of them), one account per 5 persons (a fifth of the persons count, each account in
// two sources), 2.5 opportunities per account... scaled as the issue's 1M / 200k / 500k / 5M: accounts
// = persons / 5, opportunities = persons / 2, events = persons × 5. Prints fragments/s, events/s, the
// state changes each phase leaves taken for segmentation as the relay takes them (chunks of 500,
// encoded, marked sent), view builds/s, lookup p50/p99 (identity → person view), the time to decode
// identity's calls (whole, and as the service reads them: records kept as bytes, of an event only what
// the store indexes; untimed in the other figures) and peak RSS.
import BenchmarkSupport
import CDPProto
import Foundation
import ProfileStore
import SwiftProtobuf

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

func peakRSS() -> String {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
        let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") })
    else { return "?" }
    return line.dropFirst("VmHWM:".count).trimmingCharacters(in: .whitespaces)
}

let arguments = CommandLine.arguments.dropFirst()
let persons = arguments.first.flatMap { Int($0) } ?? 100_000
let seed = arguments.dropFirst().first.flatMap { UInt64($0) } ?? 42
let accounts = max(persons / 5, 1)
let opportunities = max(persons / 2, 1)
let events = persons * 5
nonisolated(unsafe) var random = SplitMix64(state: seed)
let instances = ["mkto-1", "mkto-2"]
let now = Date()

// Cluster ids as identity would give them: persons 1..P, accounts, opportunities in their own ranges.
nonisolated(unsafe) var sequence: UInt64 = 0
func update(
    _ record: Cdp_Model_V1_Record,
    cluster: UInt64,
    references: [(String, Cdp_Model_V1_EntityType, UInt64, String)]
)
    -> Cdp_Profile_V1_IdentityUpdate
{
    sequence += 1
    var annotated = Cdp_Profile_V1_AnnotatedRecord()
    // Identity names the graph of a clustered record (of an event: none).
    if cluster != 0 { annotated.entityType = record.entityType }
    annotated.stored.record = record
    annotated.stored.version = sequence
    annotated.stored.batchID = "b"
    annotated.stored.ingestedAt = Google_Protobuf_Timestamp(date: now)
    annotated.clusterID = cluster
    for (role, entity, target, key) in references {
        var reference = Cdp_Profile_V1_ResolvedReference()
        reference.role = role
        reference.entityType = entity
        reference.clusterID = target
        reference.identity.namespace = "sourceKey"
        reference.identity.value = key
        annotated.references.append(reference)
    }
    var update = Cdp_Profile_V1_IdentityUpdate()
    update.sequence = sequence
    update.record = annotated
    return update
}

func record(_ key: String, _ instance: String, lastUpdated: Date) -> Cdp_Model_V1_Record {
    var record = Cdp_Model_V1_Record()
    record.key = key
    record.source.type = "Marketo"
    record.source.instance = instance
    record.lastUpdated = Google_Protobuf_Timestamp(date: lastUpdated)
    return record
}

var fragmentUpdates: [Cdp_Profile_V1_IdentityUpdate] = []
for account in 0..<accounts {
    for instance in instances {
        var account_ = record(
            "A\(account)@\(instance).Marketo",
            instance,
            lastUpdated: now.addingTimeInterval(-Double(random.below(86_400_000)))
        )
        account_.account.accountID = "A\(account)"
        account_.account.name = "Company \(account)"
        account_.account.annualRevenue = Double(random.below(100_000_000))
        fragmentUpdates.append(update(account_, cluster: UInt64(1_000_000_000 + account), references: []))
    }
}
for opportunity in 0..<opportunities {
    let account = random.below(accounts)
    let instance = instances[random.below(2)]
    var opportunity_ = record("O\(opportunity)@\(instance).Marketo", instance, lastUpdated: now)
    opportunity_.opportunity.opportunityID = "O\(opportunity)"
    opportunity_.opportunity.amount = Double(random.below(1_000_000))
    opportunity_.opportunity.isClosed = random.below(2) == 0
    opportunity_.opportunity.isWon = opportunity_.opportunity.isClosed && random.below(2) == 0
    fragmentUpdates.append(
        update(
            opportunity_,
            cluster: UInt64(2_000_000_000 + opportunity),
            references: [("account", .account, UInt64(1_000_000_000 + account), "A\(account)@\(instance).Marketo")]
        )
    )
}
var personFragments = 0
for person in 0..<persons {
    let account = person % accounts
    for (index, instance) in instances.enumerated() where index == 0 || person % 2 == 0 {
        var person_ = record(
            "P\(person)@\(instance).Marketo",
            instance,
            lastUpdated: now.addingTimeInterval(-Double(index))
        )
        person_.person.personID = "P\(person)"
        person_.person.email = "person\(person)@company\(account).example"
        person_.person.jobTitle = index == 0 ? "Director" : "VP"
        person_.person.accountKey = "A\(account)@\(instance).Marketo"
        fragmentUpdates.append(
            update(
                person_,
                cluster: UInt64(person + 1),
                references: [("account", .account, UInt64(1_000_000_000 + account), "A\(account)@\(instance).Marketo")]
            )
        )
        personFragments += 1
    }
}
/// The events of `range`, generated when applied (5 per person: kept in memory at once they would not fit).
func eventUpdates(_ range: Range<Int>) -> [Cdp_Profile_V1_IdentityUpdate] {
    range.map { event in
        let person = random.below(persons)
        var event_ = record("E\(event)@web-1.Web", "web-1", lastUpdated: now)
        event_.source.type = "Web"
        event_.event.eventID = "E\(event)"
        event_.event.personKey = "P\(person)@mkto-1.Marketo"
        event_.event.eventType = "web.webpagedetails.pageViews"
        event_.event.url = "https://bodea.example/page/\(random.below(500))"
        event_.event.timestamp = Google_Protobuf_Timestamp(
            date: now.addingTimeInterval(-Double(random.below(365 * 86_400)))
        )
        return update(
            event_,
            cluster: 0,
            references: [("person", .person, UInt64(person + 1), "P\(person)@mkto-1.Marketo")]
        )
    }
}

let directory = NSTemporaryDirectory() + "profile-benchmark-\(UUID().uuidString)"
try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(atPath: directory) }
let store = try SQLiteProfileStore(path: directory + "/profile.sqlite")
let clock = ContinuousClock()
print(
    "profile-benchmark: \(personFragments) person fragments of \(persons) persons, \(accounts * 2) account fragments, "
        + "\(opportunities) opportunities, \(events) events, seed \(seed)"
)
/// Applies `updates` in calls of 1,000, read as the service reads identity's calls before the clock
/// starts (see `decodingTime`): only the store's work is timed.
func applyAll(_ updates: [Cdp_Profile_V1_IdentityUpdate]) throws -> Duration {
    var elapsed = Duration.zero
    for start in stride(from: 0, to: updates.count, by: 1000) {
        let call = try updates[start..<min(start + 1000, updates.count)].map(ReceivedUpdate.init)
        elapsed += try clock.measure { _ = try store.apply(call) }
    }
    return elapsed
}
/// Decoding identity's calls of `updates` (1,000 updates each, serialized before the clock starts):
/// whole, as the generated method would, and as the service reads them (each record's
/// `cdp.model.v1.Record` kept as bytes, of an event only what the store indexes decoded).
func decodingTime(_ updates: [Cdp_Profile_V1_IdentityUpdate]) throws -> (whole: Duration, asServed: Duration) {
    var calls: [Data] = []
    for start in stride(from: 0, to: updates.count, by: 1000) {
        var request = Cdp_Profile_V1_AcceptIdentityUpdatesRequest()
        request.updates = Array(updates[start..<min(start + 1000, updates.count)])
        calls.append(try request.serializedBytes())
    }
    let whole = try clock.measure {
        for call in calls { _ = try Cdp_Profile_V1_AcceptIdentityUpdatesRequest(serializedBytes: call) }
    }
    let asServed = try clock.measure {
        for call in calls {
            let request = try Cdp_Profile_V1_AcceptIdentityUpdatesRequestStoredBytes(serializedBytes: call)
            _ = try request.updates.map(ReceivedUpdate.init)
        }
    }
    return (whole, asServed)
}
func printDecoding(_ label: String, _ updates: [Cdp_Profile_V1_IdentityUpdate]) throws {
    let (whole, asServed) = try decodingTime(updates)
    let perUpdate = { (duration: Duration) in String(format: "%.2f", seconds(duration) * 1e6 / Double(updates.count)) }
    print("  decoding \(label) whole \(perUpdate(whole)) µs per update, as served \(perUpdate(asServed)) µs")
}
/// Takes every pending state change as the relay does (chunks of 500, encoded for the wire, marked
/// sent), timed.
func drainStateChanges(_ label: String) throws {
    var count = 0
    var bytes = 0
    let elapsed = try clock.measure {
        while true {
            let chunk = try store.takeStateChanges(limit: 500)
            if chunk.isEmpty { break }
            // Taken already encoded for the wire.
            for change in chunk.serialized { bytes += change.count }
            count += chunk.serialized.count
            try store.markSent(chunk)
        }
    }
    print(
        "  \(label) \(count) taken, encoded and marked sent in \(String(format: "%.1f", seconds(elapsed))) s: "
            + "\(Int(Double(count) / seconds(elapsed)))/s, \(bytes / max(count, 1)) bytes each"
    )
}
let fragmentTime = try applyAll(fragmentUpdates)
print(
    "  fragments             \(fragmentUpdates.count) in \(String(format: "%.1f", seconds(fragmentTime))) s: \(Int(Double(fragmentUpdates.count) / seconds(fragmentTime)))/s"
)
try drainStateChanges("state changes ")
var eventTime = Duration.zero
for start in stride(from: 0, to: events, by: 1000) {
    let chunk = try eventUpdates(start..<min(start + 1000, events)).map(ReceivedUpdate.init)
    eventTime += try clock.measure { _ = try store.apply(chunk) }
}
print(
    "  events                \(events) in \(String(format: "%.1f", seconds(eventTime))) s: \(Int(Double(events) / seconds(eventTime)))/s"
)
let pending = try store.outboxStatus().pending
print("  changes pending       \(pending)")
try drainStateChanges("state changes ")

var latencies: [Duration] = []
let samples = min(2000, persons)
let lookups = try clock.measure {
    for _ in 0..<samples {
        let person = random.below(persons)
        var identity = Cdp_Identity_V1_IdentityValue()
        identity.namespace = "email"
        identity.value = "person\(person)@company\(person % accounts).example"
        let start = clock.now
        guard let cluster = try store.cluster(of: .person, named: identity),
            try store.personView(cluster: cluster, asOf: now) != nil
        else { fatalError("person \(person) not found") }
        latencies.append(clock.now - start)
    }
}
latencies.sort()
print(
    "  lookup + view build   \(Int(Double(samples) / seconds(lookups)))/s; p50 "
        + String(format: "%.2f", seconds(latencies[samples / 2]) * 1000) + " ms, p99 "
        + String(format: "%.2f", seconds(latencies[samples * 99 / 100]) * 1000) + " ms"
)
var views = 0
let scan = try clock.measure {
    var after: UInt64 = 0
    while views < 20_000 {
        let page = try store.clusters(of: .person, partition: 0, partitions: 1, after: after, limit: 500)
        guard let last = page.last else { break }
        for cluster in page where try store.personView(cluster: cluster, asOf: now) != nil { views += 1 }
        after = last
    }
}
print("  view builds (scan)    \(Int(Double(views) / seconds(scan)))/s over \(views) persons")
try printDecoding("fragments:", fragmentUpdates)
try printDecoding("events:   ", eventUpdates(0..<min(events, 100_000)))
print("  peak RSS              \(peakRSS())")

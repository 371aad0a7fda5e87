// Identity benchmark, two modes (release build):
//
//   swift run -c release identity-benchmark graph  [records] [seed]
//       Links synthetic person records in the in-memory graph alone and prints links/s, records/s, the
//       resulting clusters and the peak RSS. The graph's change journal is drained every 1,000 records,
//       as the service does once per call (timed with the linking), and saved untimed, as a store
//       would; at the end a graph is restored from that state (what a restart does), which must give
//       every record the same cluster, and the heap it takes is printed (the graph's memory).
//   swift run -c release identity-benchmark engine [records] [seed]
//       Sends the same people, as stored person records, through the identity engine with its SQLite
//       store in a temporary directory, in calls of 1,000 records as ingestion forwards them: planning,
//       linking, reference resolution (each person names its company's account), the store commit and
//       the outbox for profile. Then reopens the store and times the reload.
//
// The data: people who each appear in one to three sources (a source key per source), with an email
// shared by all their records (the link between sources), a CRM id on about half of them and a web
// visitor id on a third; about 1 % of records carry a placeholder email ("unknown") that must not
// link them. Emails share 20,000 company domains, one account per company and source.
import BenchmarkSupport
import CDPProto
import Foundation
import IdentityGraph
import IdentityRules
import IdentityService
import IdentityStore
import NIOPosix
import SwiftProtobuf

/// One synthetic person record.
struct SyntheticPerson {
    var id: String
    var instance: String
    var email: String
    var crmID: String?
    var ecid: String?
    var company: Int

    var key: String { "\(id)@\(instance).Marketo" }
    var identities: [Identity] {
        var identities = [Identity("sourceKey", key), Identity("email", email)]
        if let crmID { identities.append(Identity("crmId", crmID)) }
        if let ecid { identities.append(Identity("ecid", ecid)) }
        return identities
    }
}

let companies = 20_000
let instances = ["mkto-1", "mkto-2", "sf-1"]

func generate(records target: Int, seed: UInt64) -> (records: [SyntheticPerson], people: Int) {
    var random = SplitMix64(state: seed)
    var records: [SyntheticPerson] = []
    records.reserveCapacity(target)
    var person = 0
    while records.count < target {
        person += 1
        let appearances = 1 + random.below(3)
        let company = person % companies
        let email = random.below(100) == 0 ? "unknown" : "person\(person)@company\(company).example"
        let crmID = random.below(2) == 0 ? "003\(person)" : nil
        let ecid = random.below(3) == 0 ? "ecid-\(person)" : nil
        for appearance in 0..<appearances where records.count < target {
            records.append(
                SyntheticPerson(
                    id: "\(person)-\(appearance)",
                    instance: instances[appearance],
                    email: email,
                    crmID: appearance == 0 ? crmID : nil,
                    ecid: appearance == appearances - 1 ? ecid : nil,
                    company: company
                )
            )
        }
    }
    return (records, person)
}

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

func peakRSS() -> String {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
        let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") })
    else { return "?" }
    return line.dropFirst("VmHWM:".count).trimmingCharacters(in: .whitespaces)
}

/// Bytes this process caused to be written to storage (`write_bytes` of /proc/self/io).
func writtenBytes() -> UInt64 {
    guard let io = try? String(contentsOfFile: "/proc/self/io", encoding: .utf8),
        let line = io.split(separator: "\n").first(where: { $0.hasPrefix("write_bytes:") })
    else { return 0 }
    return UInt64(line.dropFirst("write_bytes:".count).trimmingCharacters(in: .whitespaces)) ?? 0
}

func format(_ value: Double) -> String { String(format: "%.2f", value) }

let arguments = CommandLine.arguments.dropFirst()
let mode = arguments.first ?? "graph"
guard mode == "graph" || mode == "engine" else {
    print("usage: identity-benchmark [graph|engine] [records] [seed]")
    exit(2)
}
let targetRecords = arguments.dropFirst().first.flatMap { Int($0) } ?? 1_000_000
let seed = arguments.dropFirst(2).first.flatMap { UInt64($0) } ?? 42
let (records, people) = generate(records: targetRecords, seed: seed)
let links = records.reduce(0) { $0 + $1.identities.count }
let clock = ContinuousClock()
print(
    "identity-benchmark \(mode): \(records.count) records of \(people) people, \(links) identities (links), seed \(seed)"
)

if mode == "graph" {
    let identities = records.map(\.identities)
    var graph = IdentityGraph(configuration: .init(uniqueNamespaces: ["crmId"]))
    var merges = 0
    var conflicts = 0
    // What a store would hold after applying the drained journal; filled between timed calls, since
    // writing it down is the store's work, not the graph's.
    var savedIdentities: [(sequence: UInt64, identity: Identity)] = []
    var savedRecords: [String: (version: UInt64, identities: [UInt64])] = [:]
    func save(_ changes: [GraphChange]) {
        for change in changes {
            switch change {
            case .identityAdded(let sequence, let identity): savedIdentities.append((sequence, identity))
            case .recordLinked(let key, let version, let identities): savedRecords[key] = (version, identities)
            case .recordUnlinked(let key): savedRecords[key] = nil
            case .identityRemoved: fatalError("the benchmark removes no identity")
            }
        }
    }
    var elapsed = Duration.zero
    for start in stride(from: 0, to: records.count, by: 1000) {
        var changes: [GraphChange] = []
        // One call's worth: 1,000 records linked, then the journal drained.
        elapsed += clock.measure {
            for index in start..<min(start + 1000, records.count) {
                let outcome = graph.upsert(record: records[index].key, version: 1, identities: identities[index])
                merges += outcome.events.count
                conflicts += outcome.conflicts.count
            }
            changes = graph.takeChanges()
        }
        save(changes)
    }
    var again = 0
    let redelivery = clock.measure {
        for (index, record) in records.prefix(100_000).enumerated()
        where graph.upsert(record: record.key, version: 1, identities: identities[index]).unchanged {
            again += 1
        }
    }
    var clusters = Set<ClusterID>()
    for record in identities {
        if let cluster = graph.cluster(of: record[0]) { clusters.insert(cluster) }
    }

    // A restart: the graph rebuilt from the saved state.
    let state = GraphState(
        identities: savedIdentities,
        records: savedRecords.map { ($0.key, $0.value.version, $0.value.identities) },
        nextSequence: UInt64(savedIdentities.count + 1)
    )
    var restored = IdentityGraph(configuration: graph.configuration)
    let heapBeforeRestore = Heap.bytesInUse()
    let restore = clock.measure { restored = IdentityGraph(configuration: graph.configuration, restoring: state) }
    // What the restored graph holds (the state it was built from is held apart, before and after).
    let graphBytes = Heap.bytesInUse() - heapBeforeRestore
    var differing = 0
    for record in identities where restored.cluster(of: record[0]) != graph.cluster(of: record[0]) {
        differing += 1
    }

    print("  linked in             \(format(seconds(elapsed))) s")
    print("  links/s               \(Int(Double(links) / seconds(elapsed)))")
    print("  records/s             \(Int(Double(records.count) / seconds(elapsed)))")
    print("  identities in graph   \(graph.identityCount)")
    print("  clusters (of records) \(clusters.count)")
    print("  merges                \(merges)")
    print("  conflicts             \(conflicts)")
    print("  re-delivery           \(again) of 100000 unchanged, \(Int(100_000 / seconds(redelivery))) records/s")
    print("  restored in           \(format(seconds(restore))) s, \(differing) records in a different cluster")
    print(
        "  graph's heap          \(graphBytes / 1_048_576) MiB, \(graphBytes / max(graph.recordCount, 1)) bytes per record"
    )
    print("  peak RSS              \(peakRSS())")
} else {
    func stored(_ person: SyntheticPerson, sequence: UInt64) -> Cdp_Identity_V1_StoredRecord {
        var record = Cdp_Model_V1_Record()
        record.key = person.key
        record.source.type = "Marketo"
        record.source.instance = person.instance
        record.person.personID = person.id
        record.person.email = person.email
        if let crmID = person.crmID { record.person.crmID = crmID }
        if let ecid = person.ecid { record.person.ecid = ecid }
        record.person.accountKey = "C\(person.company)@\(person.instance).Marketo"
        var stored = Cdp_Identity_V1_StoredRecord()
        stored.sequence = sequence
        stored.batchID = "b-\(sequence / 5000)"
        stored.version = sequence
        stored.ingestedAt = Google_Protobuf_Timestamp(date: Date())
        stored.record = record
        return stored
    }
    let calls = try stride(from: 0, to: records.count, by: 1000).map { start in
        // Serialized here, as ingestion sends them (identity passes those bytes on to profile).
        try (start..<min(start + 1000, records.count)).map {
            try IdentityEngine.ReceivedRecord(stored(records[$0], sequence: UInt64($0 + 1)))
        }
    }
    let directory = NSTemporaryDirectory() + "identity-benchmark-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let path = directory + "/identity.sqlite"
    let loop = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    var latencies: [Duration] = []
    let elapsed: Duration
    do {
        let store = try SQLiteIdentityStore(path: path)
        let engine = try IdentityEngine(store: store, loop: loop.next())
        let start = clock.now
        for call in calls {
            let callStart = clock.now
            _ = try await engine.accept(call)
            latencies.append(clock.now - callStart)
        }
        elapsed = clock.now - start
        let status = try store.outboxStatus()
        print("  accepted in           \(format(seconds(elapsed))) s, \(calls.count) calls of up to 1,000 records")
        print("  records/s             \(Int(Double(records.count) / seconds(elapsed)))")
        print("  links/s               \(Int(Double(links) / seconds(elapsed)))")
        latencies.sort()
        let p50 = latencies[latencies.count / 2]
        let p99 = latencies[min(latencies.count - 1, latencies.count * 99 / 100)]
        print("  call p50 / p99        \(format(seconds(p50) * 1000)) / \(format(seconds(p99) * 1000)) ms")
        print("  outbox updates        \(status.pending)")
        let counts = await engine.counts()
        print(
            "  person identities     \(counts[.person]?.identities ?? 0), account identities \(counts[.account]?.identities ?? 0)"
        )
    }
    let size = (try? FileManager.default.subpathsOfDirectory(atPath: directory))?.reduce(UInt64(0)) { total, name in
        let attributes = try? FileManager.default.attributesOfItem(atPath: directory + "/" + name)
        return total + ((attributes?[.size] as? NSNumber)?.uint64Value ?? 0)
    }
    print("  database              \((size ?? 0) >> 20) MiB, \(writtenBytes() >> 20) MiB written to disk")
    let reload = try clock.measure {
        _ = try IdentityEngine(store: try SQLiteIdentityStore(path: path), loop: loop.next())
    }
    print("  reloaded in           \(format(seconds(reload))) s")
    print("  peak RSS              \(peakRSS())")
    try await loop.shutdownGracefully()
}

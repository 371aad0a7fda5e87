// Identity graph benchmark: links synthetic person records in-process and prints links/s, records/s,
// the resulting clusters and the peak RSS. The graph's change journal is drained every 1,000 records,
// as the service does once per request, and replayed at the end into a restored graph (what a restart
// does), which must give every record the same cluster.
//
// Usage: swift run -c release identity-graph-benchmark [records] [seed]
//
// The data: people who each appear in one to three sources (a source key per source), with an email
// shared by all their records (the link between sources), a CRM id on about half of them and a web
// visitor id on a third; about 1 % of records carry a placeholder email ("unknown") that must not
// link them. 2–4 identities per record.
import Foundation
import IdentityGraph

struct Generator {
    var state: UInt64

    mutating func next() -> UInt64 {
        // SplitMix64: deterministic for a seed, fast.
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

let arguments = CommandLine.arguments
let targetRecords = arguments.count > 1 ? Int(arguments[1]) ?? 1_000_000 : 1_000_000
let seed = arguments.count > 2 ? UInt64(arguments[2]) ?? 42 : 42
let sources = ["mkto-1.Marketo", "mkto-2.Marketo", "sf-1.Salesforce"]

var random = Generator(state: seed)
var records: [(key: String, identities: [Identity])] = []
records.reserveCapacity(targetRecords)
var person = 0
while records.count < targetRecords {
    person += 1
    let appearances = 1 + random.below(3)
    let email = random.below(100) == 0 ? "unknown" : "person\(person)@company\(person % 20_000).example"
    let crmID = random.below(2) == 0 ? "003\(person)" : nil
    let ecid = random.below(3) == 0 ? "ecid-\(person)" : nil
    for appearance in 0..<appearances where records.count < targetRecords {
        let key = "\(person)-\(appearance)@\(sources[appearance])"
        var identities = [Identity("sourceKey", key), Identity("email", email)]
        if let crmID, appearance == 0 { identities.append(Identity("crmId", crmID)) }
        if let ecid, appearance == appearances - 1 { identities.append(Identity("ecid", ecid)) }
        records.append((key, identities))
    }
}
let links = records.reduce(0) { $0 + $1.identities.count }

var graph = IdentityGraph(configuration: .init(uniqueNamespaces: ["crmId"]))
let clock = ContinuousClock()
var merges = 0
var conflicts = 0
var journal: [GraphChange] = []
let elapsed = clock.measure {
    for (index, record) in records.enumerated() {
        let outcome = graph.upsert(record: record.key, version: 1, identities: record.identities)
        merges += outcome.events.count
        conflicts += outcome.conflicts.count
        if index % 1000 == 999 { journal += graph.takeChanges() }
    }
    journal += graph.takeChanges()
}
var again = 0
let redelivery = clock.measure {
    for record in records.prefix(100_000)
    where graph.upsert(record: record.key, version: 1, identities: record.identities).unchanged {
        again += 1
    }
}

var clusters = Set<ClusterID>()
for record in records {
    if let cluster = graph.cluster(of: record.identities[0]) { clusters.insert(cluster) }
}

// A restart: the state a store would hold after applying the journal, then the graph rebuilt from it.
var savedIdentities: [(sequence: UInt64, identity: Identity)] = []
var savedRecords: [String: (version: UInt64, identities: [UInt64])] = [:]
for change in journal {
    switch change {
    case .identityAdded(let sequence, let identity): savedIdentities.append((sequence, identity))
    case .recordLinked(let key, let version, let identities): savedRecords[key] = (version, identities)
    case .recordUnlinked(let key): savedRecords[key] = nil
    case .identityRemoved: fatalError("the benchmark removes no identity")
    }
}
let state = GraphState(
    identities: savedIdentities,
    records: savedRecords.map { ($0.key, $0.value.version, $0.value.identities) },
    nextSequence: UInt64(savedIdentities.count + 1)
)
var restored = IdentityGraph(configuration: graph.configuration)
let restore = clock.measure { restored = IdentityGraph(configuration: graph.configuration, restoring: state) }
var differing = 0
for record in records where restored.cluster(of: record.identities[0]) != graph.cluster(of: record.identities[0]) {
    differing += 1
}

func peakRSS() -> String {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
        let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") })
    else { return "?" }
    return line.dropFirst("VmHWM:".count).trimmingCharacters(in: .whitespaces)
}

let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
let restoreSeconds = Double(restore.components.seconds) + Double(restore.components.attoseconds) / 1e18
let redeliverySeconds = Double(redelivery.components.seconds) + Double(redelivery.components.attoseconds) / 1e18
print(
    "identity-graph-benchmark: \(records.count) records of \(person) people, \(links) identities (links), seed \(seed)"
)
print("  linked in             \(String(format: "%.2f", seconds)) s")
print("  links/s               \(Int(Double(links) / seconds))")
print("  records/s             \(Int(Double(records.count) / seconds))")
print("  identities in graph   \(graph.identityCount)")
print("  clusters (of records) \(clusters.count)")
print("  merges                \(merges)")
print("  conflicts             \(conflicts)")
print("  re-delivery           \(again) of 100000 unchanged, \(Int(100_000 / redeliverySeconds)) records/s")
print(
    "  restored in           \(String(format: "%.2f", restoreSeconds)) s, \(differing) records in a different cluster"
)
print("  peak RSS              \(peakRSS())")

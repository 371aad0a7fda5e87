// destination-benchmark: intake and delivery throughput of the destination service's engine, and the
// latency from a membership change's acknowledgement to its delivery.
//
//   swift run -c release destination-benchmark [persons] [seed]
//
// 1. Intake: `persons` realized memberships of one segment (default 200,000; unified person records
//    with names, titles and a custom attribute), through `DestinationEngine.accept` in calls of 500
//    changes, as segmentation's relay sends them; into a SQLite file on disk.
// 2. Backfill: the segment activated at once to a FILE destination (incremental CSV, two mapped
//    attributes) and to a WEBHOOK whose receiver is in process and answers 204 at once (so the figure
//    is our cost: planning, signing, JSON, bookkeeping); time until both queues are empty.
// 3. Streaming: 2,000 changes (1,000 members leave, each then comes back), one per `accept` call, each
//    awaited until the webhook receiver has it; latency from the call to the receiver, p50 and p99.
//
// Marketo is not measured: its own limits (100 calls per 20 s, 300 records per call, two calls per
// batch of adds) cap one instance at 750 adds/s whatever the client does.
import BenchmarkSupport
import CDPProto
import DestinationConnectors
import DestinationService
import DestinationStore
import Foundation
import Logging
import NIOPosix
import Synchronization

/// A webhook receiver in process: answers 204 and notes when each member arrived.
final class InstantReceiver: HTTPTransport {
    let arrived = Mutex<[UInt64: ContinuousClock.Instant]>([:])
    let requests = Atomic<Int>(0)

    func send(_ request: HTTPRequestData) async throws -> HTTPResponseData {
        requests.add(1, ordering: .relaxed)
        let now = ContinuousClock.now
        if let body = request.body,
            let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
            let members = object["members"] as? [[String: Any]]
        {
            arrived.withLock { arrived in
                for member in members {
                    if let cluster = member["cluster"] as? NSNumber { arrived[cluster.uint64Value] = now }
                }
            }
        }
        return HTTPResponseData(status: 204)
    }
}

func person(_ cluster: UInt64, _ random: inout SplitMix64) -> Cdp_Profile_V1_UnifiedRecord {
    var unified = Cdp_Profile_V1_UnifiedRecord()
    unified.clusterID = cluster
    unified.record.key = "L\(cluster)@mkto-1.Marketo"
    unified.record.person.email = "person\(cluster)@company\(random.below(40_000)).example"
    unified.record.person.firstName = "First\(cluster)"
    unified.record.person.lastName = "Last\(random.below(100_000))"
    unified.record.person.jobTitle = ["VP Marketing", "CFO", "Engineer", "Analyst"][random.below(4)]
    unified.record.person.emailOptOut = random.below(50) == 0
    var attribute = Cdp_Model_V1_AttributeValue()
    attribute.stringValue = ["gold", "silver", "bronze"][random.below(3)]
    unified.record.customAttributes["tier"] = attribute
    unified.fragmentKeys = [unified.record.key]
    return unified
}

func change(
    _ sequence: UInt64,
    _ record: Cdp_Profile_V1_UnifiedRecord,
    realized: Bool,
    version: UInt64
)
    -> Cdp_Destination_V1_MembershipChange
{
    var change = Cdp_Destination_V1_MembershipChange()
    change.sequence = sequence
    change.segmentID = "s1"
    change.entityType = .person
    change.clusterID = record.clusterID
    change.realized = realized
    change.version = version
    change.record = record
    return change
}

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

func percentile(_ sorted: [Duration], _ fraction: Double) -> Duration {
    sorted[min(sorted.count - 1, Int(Double(sorted.count) * fraction))]
}

let arguments = CommandLine.arguments
let persons = arguments.count > 1 ? Int(arguments[1]) ?? 200_000 : 200_000
let seed = arguments.count > 2 ? UInt64(arguments[2]) ?? 7 : 7
let directory = FileManager.default.temporaryDirectory.appendingPathComponent("destination-benchmark-\(getpid())").path
try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(atPath: directory) }

var random = SplitMix64(state: seed)
let records = (1...UInt64(persons)).map { person($0, &random) }
let receiver = InstantReceiver()
let engine = DestinationEngine(
    store: try SQLiteDestinationStore(path: directory + "/destination.sqlite"),
    loop: MultiThreadedEventLoopGroup.singleton.next(),
    transport: receiver
)
let clock = ContinuousClock()
print("destination-benchmark: \(persons) persons, seed \(seed), release build: \(!_isDebugAssertConfiguration())")

// 1. Intake.
var sequence: UInt64 = 0
let intake = try await clock.measure {
    for start in stride(from: 0, to: records.count, by: 500) {
        let changes = records[start..<min(start + 500, records.count)].map { record in
            sequence += 1
            return change(sequence, record, realized: true, version: 1)
        }
        _ = try await engine.accept(sender: "segmentation", changes)
    }
}
print(String(format: "intake: %.1f s, %.0f changes/s", seconds(intake), Double(persons) / seconds(intake)))

// 2. Backfill to a file and a webhook.
let file = try await engine.createDestination(
    type: .file,
    name: "file",
    settings: ["directory": directory + "/exports", "format": "csv"]
)
let webhook = try await engine.createDestination(
    type: .webhook,
    name: "webhook",
    settings: [
        "url": "https://hooks.example/cdp", "secret": "benchmark", "batch_size": "1000", "calls_per_minute": "60000",
    ]
)
var logger = Logger(label: "destination-benchmark")
logger.logLevel = .warning
let workers = DeliveryWorkers(engine: engine, idlePoll: .milliseconds(5), logger: logger)
try await withThrowingTaskGroup(of: Void.self) { group in
    group.addTask { try await workers.run() }
    let backfillStart = clock.now
    var done: [String: Duration] = [:]
    for destination in [file, webhook] {
        _ = try await engine.activate(
            segment: "s1",
            destination: destination.id,
            identity: .email,
            attributes: ["First Name": "firstName", "Tier": "tier"]
        )
    }
    workers.wake()
    while done.count < 2 {
        for destination in [file, webhook] where done[destination.id] == nil {
            if try await engine.pending(destination.id).count == 0 { done[destination.id] = clock.now - backfillStart }
        }
        try await Task.sleep(for: .milliseconds(100))
    }
    let suppressed = try await engine.runs(destination: file.id, before: 0, limit: 10_000).reduce(0) {
        $0 + Int($1.1.suppressed)
    }
    for (name, destination) in [("file (incremental CSV)", file), ("webhook (in-process receiver)", webhook)] {
        let elapsed = done[destination.id]!
        print(
            String(
                format: "backfill to %@: %.1f s, %.0f members/s (both destinations at once)",
                name,
                seconds(elapsed),
                Double(persons) / seconds(elapsed)
            )
        )
    }
    print(
        "  opted-out persons suppressed: \(suppressed); webhook requests: \(receiver.requests.load(ordering: .relaxed))"
    )

    // 3. Streaming: one change per call, each awaited at the receiver.
    var latencies: [Duration] = []
    for index in 0..<2_000 {
        // Each member leaves (even index), then comes back (odd index): both are sent.
        let record = records[(index / 2 * 97) % records.count]
        guard !record.record.person.emailOptOut else { continue }
        sequence += 1
        let version = UInt64(2 + index % 2)
        let realized = index % 2 == 1
        let before = receiver.arrived.withLock { $0[record.clusterID] }
        let sent = clock.now
        _ = try await engine.accept(
            sender: "segmentation",
            [change(sequence, record, realized: realized, version: version)]
        )
        workers.wake()
        while receiver.arrived.withLock({ $0[record.clusterID] }) == before {
            try await Task.sleep(for: .microseconds(200))
        }
        latencies.append(receiver.arrived.withLock { $0[record.clusterID]! } - sent)
    }
    latencies.sort()
    print(
        String(
            format: "streaming (%d changes, one per call, to the webhook): p50 %.2f ms, p99 %.2f ms",
            latencies.count,
            seconds(percentile(latencies, 0.5)) * 1000,
            seconds(percentile(latencies, 0.99)) * 1000
        )
    )
    group.cancelAll()
}

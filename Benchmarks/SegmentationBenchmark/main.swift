// segmentation-benchmark: evaluation throughput and streaming latency of the segmentation service's
// engine over synthetic person views.
//
//   swift run -c release segmentation-benchmark [views] [seed] [core|state]
//   swift run -c release segmentation-benchmark load SEGMENTATION_DATABASE
//
// With `core`, only the first measure runs (for profilers). With `state`, only the memory the state
// takes: every view's changes applied to an `EntityState`, resident memory before and after. With
// `load`, the state a segmentation service saved (its `segmentation.sqlite`, e.g. from
// `pipeline_benchmark.py --keep-data`) is loaded several times: its person, account and opportunity
// records alone, its links alone, its events alone, then all of it; the heap each took, and the time;
// then every person's and account's view built from it, twice.
//
// 1. Core evaluation: `views` generated person views (default 1,000,000; accounts, opportunities,
//    roles, campaigns, lists, events over a year) evaluated against 20 segments of varied shapes, on one
//    thread and on every core. Generation is not timed.
// 2. Loading and batch through the engine: 100,000 of the views as state changes (unified records,
//    links, events) through `SegmentationEngine.acceptStateChanges` in calls of about 500 changes (each
//    touched person evaluated against the 20 streaming segments, state and memberships committed to
//    SQLite); then a batch job's path over that state, twice: `SegmentationEngine.evaluateBatch` in
//    chunks of 500 (views built from the state, evaluation, the SQLite commit of memberships).
// 3. Streaming: 20,000 new events of loaded persons through `acceptStateChanges`, one event per call as
//    profile's relay can send them, with the 20 segments streaming; latency per call, p50 and p99.
import BenchmarkSupport
import CDPProto
import Foundation
import NIOPosix
import SegmentationEvaluation
import SegmentationLanguage
import SegmentationService
import SegmentationState
import SegmentationStore
import SwiftProtobuf

/// Generates person views shaped like the platform's: 1–3 accounts from a shared pool, their
/// opportunities, roles on some, campaign and list memberships, and page views over the last year.
struct ViewGenerator {
    static let asOf = Double(CivilTime.days(year: 2026, month: 11, day: 1)) * 86_400
    static let industries = ["Retail", "Manufacturing", "Software", "Finance", "Healthcare", "Energy"]
    static let countries = ["US", "DE", "FR", "GB", "CA", "JP", "BR", "IN"]
    static let titles = ["VP Marketing", "CFO", "Engineer", "Director of IT", "Analyst", "CEO", "Buyer"]
    static let urls = [
        "https://bodea.example/new-product", "https://bodea.example/pricing", "https://bodea.example/",
        "https://bodea.example/docs", "https://bodea.example/blog/launch",
    ]
    static let stages = ["Prospecting", "Negotiation", "Closed Won", "Closed Lost"]

    let persons: Int
    let seed: UInt64

    var accountCount: Int { max(1, persons / 5) }

    func account(_ id: Int) -> Cdp_Profile_V1_UnifiedRecord {
        var random = SplitMix64(state: seed &+ UInt64(id) &* 7919)
        var unified = Cdp_Profile_V1_UnifiedRecord()
        unified.clusterID = UInt64(id) + 1
        unified.record.key = "A\(id)@crm.Salesforce"
        unified.record.account.accountID = "A\(id)"
        unified.record.account.name = "Company \(id)"
        unified.record.account.industry = Self.industries[random.below(Self.industries.count)]
        unified.record.account.employees = Int64(10 + random.below(50_000))
        unified.record.account.annualRevenue = Double(random.below(500)) * 1_000_000
        unified.record.account.country = Self.countries[random.below(Self.countries.count)]
        unified.fragmentKeys = [unified.record.key]
        return unified
    }

    /// An account's opportunities: 2–3 on average (500k for 200k accounts).
    func opportunities(of account: Int) -> [Cdp_Profile_V1_UnifiedRecord] {
        var random = SplitMix64(state: seed &+ UInt64(account) &* 104_729)
        return (0..<(1 + random.below(4))).map { index in
            let id = account * 8 + index
            var unified = Cdp_Profile_V1_UnifiedRecord()
            unified.clusterID = UInt64(id) + 1
            unified.record.key = "O\(id)@crm.Salesforce"
            unified.record.opportunity.opportunityID = "O\(id)"
            unified.record.opportunity.amount = Double(5 + random.below(400)) * 1000
            let stage = Self.stages[random.below(Self.stages.count)]
            unified.record.opportunity.stage = stage
            unified.record.opportunity.isClosed = stage.hasPrefix("Closed")
            unified.record.opportunity.isWon = stage == "Closed Won"
            unified.record.opportunity.closeDate = Google_Protobuf_Timestamp(
                seconds: Int64(Self.asOf) - Int64(random.below(365 * 86_400)),
                nanos: 0
            )
            unified.accountClusterIds = [UInt64(account) + 1]
            return unified
        }
    }

    func view(_ id: Int) -> Cdp_Profile_V1_PersonView {
        var random = SplitMix64(state: seed &+ UInt64(id) &* 1_000_003)
        var view = Cdp_Profile_V1_PersonView()
        view.person.clusterID = UInt64(id) + 1
        view.person.record.key = "P\(id)@mkto-1.Marketo"
        view.person.record.person.personID = "P\(id)"
        view.person.record.person.email = "person\(id)@company\(id % accountCount).example"
        view.person.record.person.jobTitle = Self.titles[random.below(Self.titles.count)]
        view.person.record.person.country = Self.countries[random.below(Self.countries.count)]
        if random.chance(70) { view.person.record.person.score = Double(random.below(100)) }
        view.person.record.person.emailOptOut = random.chance(5)
        var accounts: [Int] = [id % accountCount]
        for _ in 0..<random.below(3) { accounts.append(random.below(accountCount)) }
        for account in Set(accounts).sorted() {
            view.accounts.append(self.account(account))
            view.opportunities += opportunities(of: account)
        }
        for opportunity in view.opportunities where random.chance(15) {
            var role = Cdp_Profile_V1_OpportunityRole()
            role.opportunityClusterID = opportunity.clusterID
            role.role = random.chance(50) ? "Decision Maker" : "Influencer"
            role.isPrimary = random.chance(30)
            view.opportunityRoles.append(role)
        }
        for campaign in 0..<random.below(3) {
            var membership = Cdp_Profile_V1_CampaignMembership()
            membership.campaign.clusterID = UInt64(campaign + 1)
            membership.campaign.record.key = "C\(campaign)@mkto-1.Marketo"
            membership.campaign.record.campaign.name = ["Webinar", "Trade show", "Newsletter"][campaign]
            membership.status = random.chance(50) ? "Attended" : "Registered"
            membership.hasResponded_p = random.chance(40)
            view.campaigns.append(membership)
        }
        if random.chance(30) {
            var list = Cdp_Profile_V1_ListMembership()
            list.list.clusterID = 1
            list.list.record.key = "L1@mkto-1.Marketo"
            list.list.record.marketingList.name = "Customers"
            view.lists.append(list)
        }
        // 5 events on average, newest first, over the last year.
        let times = (0..<random.below(11)).map { _ in Self.asOf - Double(random.below(365 * 86_400)) }.sorted(by: >)
        for (index, time) in times.enumerated() {
            var event = Cdp_Profile_V1_Event()
            event.key = "E\(id)-\(index)@web.Web"
            event.event.eventID = "E\(id)-\(index)"
            event.event.eventType = random.chance(80) ? "web.webpagedetails.pageViews" : "web.formFilledOut"
            event.event.url = Self.urls[random.below(Self.urls.count)]
            event.event.timestamp = Google_Protobuf_Timestamp(seconds: Int64(time), nanos: 0)
            view.events.append(event)
        }
        return view
    }
}

/// 20 segments of varied shapes; the 20th names the first with inSegment.
let definitions: [String] = [
    Benchmark.bodea,
    "person.country = \"US\" and person.score >= 50",
    "person.jobTitle.contains(\"vp\", false) or person.jobTitle.startsWith(\"Director\")",
    "person.country in [\"DE\", \"FR\", \"GB\"] and not person.emailOptOut",
    "exists A from person.accounts where (A.industry = \"Software\" and A.employees > 1000)",
    "(sum O.amount over O from person.accounts.opportunities where O.isWon = true) > 500000",
    "person.accounts.opportunities[isClosed = false].count() >= 3",
    "exists E from xEvent where (E.url = \"https://bodea.example/pricing\" and E.timestamp occurs <= 30 days before now)",
    "xEvent[eventType = \"web.formFilledOut\"].count() >= 2",
    "exists E from xEvent where E.timestamp occurs last week",
    "exists E from xEvent where E.timestamp occurs between date(2026, 1, 1) and date(2026, 4, 1)",
    "exists R from person.opportunityRoles where (R.role = \"Decision Maker\" and R.opportunity.amount > 200000)",
    "exists C from person.campaigns where (C.campaign.name = \"Webinar\" and C.hasResponded = true)",
    "exists L from person.lists where L.name = \"Customers\"",
    "forall A from person.accounts where A.country = \"US\"",
    "(max O.amount over O from person.opportunities) > 350000",
    "(avg A.annualRevenue over A from person.accounts) > 200000000",
    "person.score = null and person.accounts.count() > 1",
    "exists O from person.opportunities where (O.closeDate occurs <= 3 months before now and O.isWon = true)",
    "inSegment(\"s1\") or (person.score > 90 and exists E from xEvent where E.timestamp occurs <= 7 days before now)",
]

enum Benchmark {
    static let bodea = """
        (sum O.amount over O from person.accounts.opportunities where (O.isClosed = true and O.isWon = true)) > 1000000
        and exists E from xEvent where (E.eventType = "web.webpagedetails.pageViews"
            and E.url = "https://bodea.example/new-product" and E.timestamp occurs <= 1 months before now)
        """

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    static func percentile(_ sorted: [Double], _ p: Double) -> Double {
        sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
    }

    /// Whether a change of a view is the first to carry its item: what several persons share (an
    /// account, its opportunities and their account links, a campaign, a list) is sent once, as
    /// profile sends an item once per change, not once per person that shows it.
    static func firstShowing(_ change: Cdp_Profile_V1_StateChange, shared: inout Set<UInt64>) -> Bool {
        switch change.item {
        case .entity(let entity) where entity.entityType != .person:
            return shared.insert(UInt64(entity.entityType.rawValue) << 56 | entity.clusterID).inserted
        case .link(let link) where link.entityType == .opportunity:
            // One account link per opportunity.
            return shared.insert(UInt64(0xFF) << 56 | link.fromClusterID).inserted
        default:
            return true
        }
    }

    /// The process's resident memory in bytes, from /proc.
    static func residentBytes() -> Int {
        guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = statm.split(separator: " ")
        return fields.count > 1 ? (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
    }
}

let arguments = CommandLine.arguments

/// Says what is wrong (and how the program is called) on standard error, and stops.
func refuse(_ problem: String) -> Never {
    FileHandle.standardError.write(
        Data(
            ("segmentation-benchmark: \(problem)\n"
                + "usage: segmentation-benchmark [views] [seed] [core|state]\n"
                + "       segmentation-benchmark load SEGMENTATION_DATABASE (a service's segmentation.sqlite)\n").utf8
        )
    )
    exit(2)
}

if arguments.count > 1 && arguments[1] == "load" {
    guard arguments.count == 3 else { refuse("load takes one argument, the database") }
    let store: SQLiteSegmentationStore
    do {
        store = try SQLiteSegmentationStore(readingSavedStateAt: arguments[2])
    } catch {
        refuse("\(error)")
    }
    /// The saved changes `takes` admits, loaded into a new state, with the heap and time it took.
    func load(_ takes: (Cdp_Profile_V1_StateChange) -> Bool) throws -> EntityState {
        let heapBefore = Heap.bytesInUse()
        let started = ContinuousClock.now
        let state = EntityState()
        var count = 0
        try state.load { apply in
            try store.forEachStateChange { change in
                guard takes(change) else { return }
                try apply(change)
                count += 1
            }
        }
        let took = ContinuousClock.now - started
        let heap = Double(Heap.bytesInUse() - heapBefore)
        print(
            "\(count) changes, "
                + String(
                    format: "%.0f MB of heap, %.0f bytes each, loaded in %.1f s",
                    heap / 1e6,
                    heap / Double(max(count, 1)),
                    Benchmark.seconds(took)
                )
        )
        return state
    }
    func records(of type: Cdp_Model_V1_EntityType) -> (Cdp_Profile_V1_StateChange) -> Bool {
        { change in if case .entity(let entity) = change.item { entity.entityType == type } else { false } }
    }
    let kinds: [(name: String, takes: (Cdp_Profile_V1_StateChange) -> Bool)] = [
        ("person records", records(of: .person)),
        ("account records", records(of: .account)),
        ("opportunity records", records(of: .opportunity)),
        ("links", { if case .link = $0.item { true } else { false } }),
        ("events", { if case .event = $0.item { true } else { false } }),
    ]
    print("segmentation-benchmark: the state saved in \(arguments[2])")
    for kind in kinds {
        print("\(kind.name): ", terminator: "")
        // Each kind's state is freed before the next is loaded.
        _ = try load(kind.takes)
    }
    print("all: ", terminator: "")
    let state = try load { _ in true }
    // Every person's and account's view built from the state, as a batch job builds them, twice.
    let asOf = Date()
    for entity in [Cdp_Model_V1_EntityType.person, .account] {
        let clusters = state.clusters(of: entity, partition: 0, partitions: 1, after: 0, limit: .max)
        for run in 1...2 {
            let started = ContinuousClock.now
            var items = 0
            for cluster in clusters {
                switch state.view(EntityState.EntityKey(entity, cluster), asOf: asOf) {
                case .person(let view)?: items += view.accounts.count + view.opportunities.count + view.events.count
                case .account(let view)?: items += view.persons.count + view.opportunities.count
                case nil: break
                }
            }
            let took = Benchmark.seconds(ContinuousClock.now - started)
            print(
                "\(entity == .person ? "person" : "account") views, run \(run): \(clusters.count) in "
                    + String(
                        format: "%.2f s, %.0f views/s (%d items shown)",
                        took,
                        Double(clusters.count) / took,
                        items
                    )
            )
        }
    }
    exit(0)
}
if arguments.count > 4 { refuse("too many arguments") }
if arguments.count > 1, Int(arguments[1]).map({ $0 > 0 }) != true {
    refuse("views must be a positive number, not \(arguments[1])")
}
if arguments.count > 2, UInt64(arguments[2]) == nil { refuse("seed must be a number, not \(arguments[2])") }
if arguments.count > 3, !["core", "state"].contains(arguments[3]) {
    refuse("the mode is core or state, not \(arguments[3])")
}
let viewCount = arguments.count > 1 ? Int(arguments[1])! : 1_000_000
let seed = arguments.count > 2 ? UInt64(arguments[2])! : 42
let generator = ViewGenerator(persons: viewCount, seed: seed)
let clock = ContinuousClock()

// The 20 segments, compiled.
var audiences: [String: Audience] = [:]
var compiled: [CompiledSegment] = []
for (index, pql) in definitions.enumerated() {
    compiled.append(try CompiledSegment(pql, audience: .person) { audiences[$0] })
    audiences["s\(index + 1)"] = .person
}
let segmentIDs = compiled.indices.map { "s\($0 + 1)" }
print("segmentation-benchmark: \(viewCount) person views, \(compiled.count) segments, seed \(seed)")

if arguments.count > 3 && arguments[3] == "state" {
    // The memory the state takes: each view's changes generated and applied, then dropped.
    let state = EntityState()
    var version: UInt64 = 0
    var shared: Set<UInt64> = []
    var counts = (changes: 0, events: 0, records: 0, links: 0)
    let before = Benchmark.residentBytes()
    var touched: Set<EntityState.EntityKey> = []
    for index in 0..<viewCount {
        for change in EntityState.changes(building: generator.view(index), version: &version)
        where Benchmark.firstShowing(change, shared: &shared) {
            try state.apply(change, touched: &touched)
            touched.removeAll(keepingCapacity: true)
            counts.changes += 1
            switch change.item {
            case .event: counts.events += 1
            case .entity: counts.records += 1
            case .link: counts.links += 1
            case nil: break
            }
        }
    }
    let grown = Double(Benchmark.residentBytes() - before)
    print(
        "state: \(counts.changes) changes (\(counts.records) unified records, \(counts.links) links, "
            + "\(counts.events) events) "
            + String(
                format: "took %.0f MB of resident memory, %.0f bytes per change",
                grown / 1e6,
                grown / Double(counts.changes)
            )
    )
    exit(0)
}

// 1. Core evaluation, one thread: generate a chunk (untimed), evaluate it (timed).
do {
    let frame = Frame()
    var matches = [Int](repeating: 0, count: compiled.count)
    var evaluation = Duration.zero
    var generation = Duration.zero
    let chunk = 10_000
    var events = 0
    var opportunities = 0
    for start in stride(from: 0, to: viewCount, by: chunk) {
        var views: [Cdp_Profile_V1_PersonView] = []
        generation += clock.measure {
            views = (start..<min(viewCount, start + chunk)).map(generator.view)
        }
        events += views.reduce(0) { $0 + $1.events.count }
        opportunities += views.reduce(0) { $0 + $1.opportunities.count }
        evaluation += clock.measure {
            for view in views {
                frame.load(person: view, asOf: ViewGenerator.asOf)
                frame.memberships = []
                for (index, segment) in compiled.enumerated() where segment.evaluate(in: frame).matched {
                    matches[index] += 1
                    frame.memberships.insert(segmentIDs[index])
                }
            }
        }
    }
    let seconds = Benchmark.seconds(evaluation)
    print(
        "generated \(viewCount) views (\(events) events, \(opportunities) opportunity entries) in "
            + String(format: "%.1f s (not timed below)", Benchmark.seconds(generation))
    )
    print(
        String(
            format: "core evaluation, 1 thread: %.2f s, %.0f views/s (%.0f segment evaluations/s)",
            seconds,
            Double(viewCount) / seconds,
            Double(viewCount * compiled.count) / seconds
        )
    )
    print(
        "members per segment: " + matches.enumerated().map { "s\($0.offset + 1)=\($0.element)" }.joined(separator: " ")
    )
}

if arguments.count > 3 && arguments[3] == "core" {
    // For profilers: the same 20,000 views evaluated ten times, so evaluation dominates the profile.
    let views = (0..<20_000).map(generator.view)
    let frame = Frame()
    for _ in 0..<10 {
        for view in views {
            frame.load(person: view, asOf: ViewGenerator.asOf)
            for segment in compiled { _ = segment.evaluate(in: frame) }
        }
    }
    exit(0)
}

// 1b. Core evaluation on every core: the views of one chunk split between threads.
do {
    let threads = ProcessInfo.processInfo.activeProcessorCount
    let total = min(viewCount, 200_000)
    let views = (0..<total).map(generator.view)
    let segments = compiled
    let elapsed = clock.measure {
        DispatchQueue.concurrentPerform(iterations: threads) { thread in
            let frame = Frame()
            var index = thread
            while index < views.count {
                frame.load(person: views[index], asOf: ViewGenerator.asOf)
                for segment in segments { _ = segment.evaluate(in: frame) }
                index += threads
            }
        }
    }
    print(
        String(
            format: "core evaluation, %d threads: %.0f views/s (%d views)",
            threads,
            Double(total) / Benchmark.seconds(elapsed),
            total
        )
    )
}

// 2 and 3 go through the engine with a store in a temporary file.
let directory = FileManager.default.temporaryDirectory.appendingPathComponent("segmentation-benchmark-\(getpid())")
try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(at: directory) }
let loop = MultiThreadedEventLoopGroup(numberOfThreads: 1)
let now = Date(timeIntervalSince1970: ViewGenerator.asOf)
let store = try SQLiteSegmentationStore(path: directory.appendingPathComponent("segmentation.sqlite").path)
let engine = try SegmentationEngine(store: store, loop: loop.next()) { now }
var ids: [String] = []
for (index, pql) in definitions.enumerated() {
    ids.append(
        try await engine.createSegment(name: "segment \(index + 1)", pql: pql, entityType: .person, mode: .streaming).id
    )
}

// 2. Loading the state (the streaming segments realize their members as the changes arrive), then
// batch over it twice: nothing changes, so both runs measure building views, evaluating and
// committing unchanged results.
let loaded = min(viewCount, 100_000)
var version: UInt64 = 0
do {
    var elapsed = Duration.zero
    var changeCount = 0
    var pending: [Cdp_Profile_V1_StateChange] = []
    var shared: Set<UInt64> = []
    for index in 0..<loaded {
        pending += EntityState.changes(building: generator.view(index), version: &version).filter {
            Benchmark.firstShowing($0, shared: &shared)
        }
        if pending.count >= 500 || index == loaded - 1 {
            // Serialized untimed, as profile sends them (the service logs those bytes as they came).
            let chunk = try pending.map(ReceivedStateChange.init)
            changeCount += chunk.count
            elapsed += try await clock.measure { _ = try await engine.acceptStateChanges(chunk) }
            pending.removeAll(keepingCapacity: true)
        }
    }
    print(
        "engine load (state changes applied, touched persons evaluated, SQLite commit): "
            + String(
                format: "%.0f changes/s, %.0f persons/s",
                Double(changeCount) / Benchmark.seconds(elapsed),
                Double(loaded) / Benchmark.seconds(elapsed)
            )
            + " (\(changeCount) changes, \(loaded) persons)"
    )
}
for run in ["first run", "second run"] {
    var elapsed = Duration.zero
    var realized = 0
    var evaluated = 0
    var after: UInt64 = 0
    while true {
        let asOf = now
        let from = after
        var chunk: (clusters: [UInt64], transitions: Transitions) = ([], Transitions())
        elapsed += try await clock.measure {
            chunk = try await engine.evaluateBatch(
                .person,
                segments: ids,
                asOf: asOf,
                partition: 0,
                partitions: 1,
                after: from,
                limit: 500
            )
        }
        // Each call commits the chunk before; the last, which evaluates nothing, commits the last.
        realized += chunk.transitions.realized
        guard let last = chunk.clusters.last else { break }
        after = last
        evaluated += chunk.clusters.count
    }
    print(
        "engine batch, \(run) (views from the state, evaluation + SQLite commit, chunks of 500): "
            + String(format: "%.0f views/s", Double(evaluated) / Benchmark.seconds(elapsed))
            + " (\(evaluated) views, \(realized) memberships realized)"
    )
}

// 3. Streaming: one new event per AcceptStateChanges call, for loaded persons.
do {
    let total = min(loaded, 20_000)
    var latencies: [Double] = []
    latencies.reserveCapacity(total)
    for index in 0..<total {
        var change = Cdp_Profile_V1_StateChange()
        version += 1
        change.version = version
        change.event.key = "E-stream-\(index)"
        change.event.personClusterID = generator.view(index).person.clusterID
        change.event.event.eventType = "web.webpagedetails.pageViews"
        change.event.event.url = ViewGenerator.urls[index % ViewGenerator.urls.count]
        change.event.event.timestamp = Google_Protobuf_Timestamp(
            date: Date(timeIntervalSince1970: ViewGenerator.asOf - 60)
        )
        let single = [try ReceivedStateChange(change)]
        let elapsed = try await clock.measure { _ = try await engine.acceptStateChanges(single) }
        latencies.append(Benchmark.seconds(elapsed) * 1000)
    }
    latencies.sort()
    print(
        String(
            format: "streaming, 1 event per call, %d segments: p50 %.3f ms, p99 %.3f ms, max %.3f ms (%d events)",
            ids.count,
            Benchmark.percentile(latencies, 0.5),
            Benchmark.percentile(latencies, 0.99),
            latencies.last ?? 0,
            total
        )
    )
    let status = try await engine.status()
    print("outbox: \(status.pending) membership changes; re-checks scheduled: \(status.rechecks)")
}
try await loop.shutdownGracefully()

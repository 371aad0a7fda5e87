import CDPProto
import DestinationConnectors
import DestinationService
import DestinationStore
import Foundation
import Logging
import NIOPosix
import RPCCore
import Synchronization
import Testing

/// The destination service's engine and delivery workers with file exports and fake connectors:
/// intake, backfill, adds and removes, consent, isolation, retries and restarts.
@Suite("Destination delivery")
struct DeliveryTests {
    static let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    static func person(_ cluster: UInt64, _ email: String, optedOut: Bool = false) -> Cdp_Profile_V1_UnifiedRecord {
        var record = Cdp_Profile_V1_UnifiedRecord()
        record.clusterID = cluster
        record.record.key = "\(cluster)@mkto-1.Marketo"
        record.record.person.personID = "\(cluster)"
        record.record.person.email = email
        record.record.person.firstName = "P\(cluster)"
        if optedOut { record.record.person.emailOptOut = true }
        return record
    }

    static func change(
        _ sequence: UInt64,
        _ segment: String,
        _ record: Cdp_Profile_V1_UnifiedRecord,
        realized: Bool,
        version: UInt64
    ) -> Cdp_Destination_V1_MembershipChange {
        var change = Cdp_Destination_V1_MembershipChange()
        change.sequence = sequence
        change.segmentID = segment
        change.entityType = .person
        change.clusterID = record.clusterID
        change.realized = realized
        change.version = version
        change.record = record
        return change
    }

    static func temporaryDirectory() throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("destination-\(UUID())")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url.path
    }

    /// The export files of a directory, oldest first, as text.
    static func files(_ directory: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory).filter { !$0.hasPrefix(".") }.sorted().map {
            try String(contentsOfFile: directory + "/" + $0, encoding: .utf8)
        }
    }

    /// An engine on the shared loop whose connectors reach APIs through `transport`.
    static func engine(_ store: SQLiteDestinationStore, transport: any HTTPTransport = FakeHTTP()) -> DestinationEngine
    {
        DestinationEngine(store: store, loop: MultiThreadedEventLoopGroup.singleton.next(), transport: transport)
    }

    /// Runs the workers while `body` runs.
    static func withWorkers(
        _ engine: DestinationEngine,
        connector: (@Sendable (DestinationRecord) throws -> any Connector)? = nil,
        body: (DeliveryWorkers) async throws -> Void
    ) async throws {
        let workers =
            connector.map {
                DeliveryWorkers(
                    engine: engine,
                    backoff: Backoff(initial: .milliseconds(5), maximum: .milliseconds(20)),
                    idlePoll: .milliseconds(10),
                    logger: logger,
                    connector: $0
                )
            }
            ?? DeliveryWorkers(
                engine: engine,
                backoff: Backoff(initial: .milliseconds(5), maximum: .milliseconds(20)),
                idlePoll: .milliseconds(10),
                logger: logger
            )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await workers.run() }
            defer { group.cancelAll() }
            try await body(workers)
        }
    }

    /// Waits until `condition` holds (or a few seconds pass).
    static func eventually(_ condition: () async throws -> Bool) async throws -> Bool {
        for _ in 0..<500 {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    @Test func anActivationBackfillsThenSendsChangesToAFile() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let engine = Self.engine(try SQLiteDestinationStore())
        // p2 is realized before any activation: the backfill sends it.
        let p2 = Self.person(6, "p2@townsend.com")
        _ = try await engine.accept(sender: "segmentation", [Self.change(1, "s1", p2, realized: true, version: 1)])
        let destination = try await engine.createDestination(
            type: .file,
            name: "marketo list export",
            settings: ["directory": directory, "format": "csv"]
        )
        let (activation, backfill) = try await engine.activate(
            segment: "s1",
            destination: destination.id,
            identity: .unspecified,
            attributes: ["First Name": "firstName"]
        )
        #expect(backfill == 1)
        try await Self.withWorkers(engine) { _ in
            #expect(try await Self.eventually { try Self.files(directory).count == 1 })
            #expect(try Self.files(directory) == ["op,identity,First Name\nadd,p2@townsend.com,P6\n"])
            // p2 exits: a removal.
            _ = try await engine.accept(sender: "segmentation", [Self.change(2, "s1", p2, realized: false, version: 2)])
            #expect(try await Self.eventually { try Self.files(directory).count == 2 })
            // A removal names the member; attributes go with adds only.
            #expect(try Self.files(directory).last == "op,identity\nremove,p2@townsend.com\n")
        }
        let runs = try await engine.runs(destination: destination.id, before: 0, limit: 10)
        #expect(runs.map { ($0.1.added, $0.1.removed) }.elementsEqual([(0, 1), (1, 0)], by: ==))
        #expect(runs.allSatisfy { $0.1.activationID == activation.id })
    }

    @Test func aMemberWhoseRecordChangesIsUpdatedOrReKeyed() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let engine = Self.engine(try SQLiteDestinationStore())
        let destination = try await engine.createDestination(
            type: .file,
            name: "export",
            settings: ["directory": directory, "format": "csv"]
        )
        _ = try await engine.activate(
            segment: "s1",
            destination: destination.id,
            identity: .email,
            attributes: ["First Name": "firstName"]
        )
        var p2 = Self.person(6, "p2@townsend.com")
        try await Self.withWorkers(engine) { _ in
            _ = try await engine.accept(sender: "segmentation", [Self.change(1, "s1", p2, realized: true, version: 1)])
            #expect(try await Self.eventually { try Self.files(directory).count == 1 })
            // A mapped attribute changed: an update in place.
            p2.record.person.firstName = "Paula"
            _ = try await engine.accept(sender: "segmentation", [Self.change(2, "s1", p2, realized: true, version: 2)])
            #expect(try await Self.eventually { try Self.files(directory).count == 2 })
            #expect(try Self.files(directory).last == "op,identity,First Name\nupdate,p2@townsend.com,Paula\n")
            // A new email: removed under the old one, added under the new.
            p2.record.person.email = "paula@townsend.com"
            _ = try await engine.accept(sender: "segmentation", [Self.change(3, "s1", p2, realized: true, version: 3)])
            #expect(try await Self.eventually { try Self.files(directory).count == 3 })
            #expect(
                try Self.files(directory).last
                    == "op,identity,First Name\nremove,p2@townsend.com,\nadd,paula@townsend.com,Paula\n"
            )
            // Nothing the destination is told changed (an unmapped field): nothing sent.
            p2.record.person.jobTitle = "CFO"
            _ = try await engine.accept(sender: "segmentation", [Self.change(4, "s1", p2, realized: true, version: 4)])
            #expect(try await Self.eventually { try await engine.pending(destination.id).count == 0 })
            #expect(try Self.files(directory).count == 3)
        }
        let runs = try await engine.runs(destination: destination.id, before: 0, limit: 10)
        #expect(
            runs.map { [$0.1.added, $0.1.removed, $0.1.updated] } == [[0, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]]
        )
    }

    @Test func reDeliveriesAndOldVersionsChangeNothing() async throws {
        let store = try SQLiteDestinationStore()
        let p1 = Self.person(1, "p1@townsend.com")
        let changes = [
            Self.change(1, "s1", p1, realized: true, version: 1),
            Self.change(2, "s1", p1, realized: false, version: 2),
        ]
        #expect(try store.accept(sender: "segmentation", changes, at: Date()) == (2, 0))
        // The relay sends the chunk again: both are duplicates.
        #expect(try store.accept(sender: "segmentation", changes, at: Date()) == (0, 2))
        // Another replica numbers its own sequences.
        let p3 = Self.person(3, "p3@townsend.com")
        #expect(
            try store.accept(
                sender: "segmentation-1-of-2",
                [Self.change(1, "s1", p3, realized: true, version: 1)],
                at: Date()
            )
                == (1, 0)
        )
        // A version older than the one held is ignored, however new its sequence.
        _ = try store.accept(sender: "segmentation", [Self.change(3, "s1", p1, realized: true, version: 1)], at: Date())
        let destination = try store.createDestination(
            type: .file,
            name: "f",
            settings: [:],
            credentials: [:],
            at: Date()
        )
        let (_, backfill) = try store.activate(
            segment: "s1",
            destination: destination.id,
            identity: .email,
            attributes: [:],
            at: Date()
        )
        // p3 only: p1's latest state (version 2) is exited.
        #expect(backfill == 1)
        #expect(try store.nextBatch(destination: destination.id, limit: 10)?.members.map(\.cluster) == [3])
    }

    @Test func optedOutPersonsAreSuppressedAndCounted() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let engine = Self.engine(try SQLiteDestinationStore())
        let destination = try await engine.createDestination(
            type: .file,
            name: "linkedin upload",
            settings: ["directory": directory, "format": "jsonl"]
        )
        _ = try await engine.activate(
            segment: "s1",
            destination: destination.id,
            identity: .hashedEmail,
            attributes: [:]
        )
        try await Self.withWorkers(engine) { _ in
            _ = try await engine.accept(
                sender: "segmentation",
                [
                    Self.change(1, "s1", Self.person(2, " P2@Townsend.com "), realized: true, version: 1),
                    Self.change(
                        2,
                        "s1",
                        Self.person(9, "out@townsend.com", optedOut: true),
                        realized: true,
                        version: 1
                    ),
                ]
            )
            #expect(try await Self.eventually { try Self.files(directory).count == 1 })
        }
        // The hashed email of the trimmed, lower-cased address, and nobody else.
        #expect(
            try Self.files(directory)
                == ["{\"identity\":\"\(MemberMapping.hashedEmail("p2@townsend.com"))\",\"op\":\"add\"}\n"]
        )
        #expect(MemberMapping.hashedEmail("p2@townsend.com").count == 64)
        let run = try #require(try await engine.runs(destination: destination.id, before: 0, limit: 1).first?.1)
        #expect(run.added == 1 && run.suppressed == 1)
    }

    /// A connector that fails while told to, and records what it was sent.
    final class FlakyConnector: Connector {
        let state = Mutex((failing: false, failures: 0, sent: [OutboundMember]()))
        var batchLimit: Int { 100 }
        var suppressesOptedOut: Bool { true }
        var defaultIdentity: Cdp_Destination_V1_IdentityMapping { .email }

        func deliver(_ members: [OutboundMember], _ context: DeliveryContext) async throws -> [UInt64: String] {
            try state.withLock { state in
                if state.failing {
                    state.failures += 1
                    throw DeliveryFailure.retryable("HTTP 503", after: nil)
                }
                state.sent += members
                return members.filter { $0.identity.hasPrefix("bad") }.reduce(into: [:]) {
                    $0[$1.cluster] = "1004 Lead not found"
                }
            }
        }
    }

    @Test func oneFailingDestinationDoesNotDelayAnotherAndCatchesUpWithoutDuplicates() async throws {
        let engine = Self.engine(try SQLiteDestinationStore())
        let down = FlakyConnector()
        let up = FlakyConnector()
        down.state.withLock { $0.failing = true }
        let first = try await engine.createDestination(type: .file, name: "down", settings: ["directory": "/tmp"])
        let second = try await engine.createDestination(type: .file, name: "up", settings: ["directory": "/tmp"])
        for destination in [first, second] {
            _ = try await engine.activate(segment: "s1", destination: destination.id, identity: .email, attributes: [:])
        }
        let connectors: @Sendable (DestinationRecord) -> any Connector = { $0.id == first.id ? down : up }
        try await Self.withWorkers(engine, connector: connectors) { workers in
            _ = try await engine.accept(
                sender: "segmentation",
                (1...20).map {
                    Self.change(
                        UInt64($0),
                        "s1",
                        Self.person(UInt64($0), "p\($0)@x.example"),
                        realized: true,
                        version: 1
                    )
                }
                    + [Self.change(21, "s1", Self.person(21, "bad@x.example"), realized: true, version: 1)]
            )
            #expect(try await Self.eventually { up.state.withLock { $0.sent.count } == 21 })
            #expect(down.state.withLock { $0.sent.isEmpty && $0.failures > 0 })
            #expect(workers.lastError(first.id) == "HTTP 503")
            // The failing destination comes back: it catches up, once each.
            down.state.withLock { $0.failing = false }
            #expect(try await Self.eventually { down.state.withLock { $0.sent.count } == 21 })
            #expect(try await Self.eventually { try await engine.pending(first.id).count == 0 })
            // A re-delivered change for members already added sends nothing new.
            _ = try await engine.accept(
                sender: "segmentation",
                [Self.change(22, "s1", Self.person(1, "p1@x.example"), realized: true, version: 3)]
            )
            try await Task.sleep(for: .milliseconds(100))
            #expect(down.state.withLock { $0.sent.count } == 21)
        }
        let runs = try await engine.runs(destination: first.id, before: 0, limit: 100).map(\.1)
        #expect(runs.reduce(0) { $0 + $1.retries } > 0)
        #expect(runs.flatMap(\.errors).map(\.message) == ["1004 Lead not found"])
        #expect(Set(down.state.withLock { $0.sent.map(\.cluster) }).count == 21)
    }

    /// A connector that records each call, and hangs in its first while told to (a crash mid-delivery).
    final class RecordingConnector: Connector {
        let calls = Mutex<[(members: [OutboundMember], run: Int)]>([])
        let hangs: Bool
        var batchLimit: Int { 100 }
        var suppressesOptedOut: Bool { true }
        var defaultIdentity: Cdp_Destination_V1_IdentityMapping { .email }

        init(hangs: Bool) { self.hangs = hangs }

        func deliver(_ members: [OutboundMember], _ context: DeliveryContext) async throws -> [UInt64: String] {
            calls.withLock { $0.append((members, context.runNumber)) }
            if hangs { try await Task.sleep(for: .seconds(3600)) }
            return [:]
        }
    }

    @Test func aDeliveryCutShortByACrashIsRepeatedAsPlannedBeforeAnythingNew() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/destination.sqlite"
        let p2 = Self.person(6, "p2@townsend.com")
        let hanging = RecordingConnector(hangs: true)
        let before = Self.engine(try SQLiteDestinationStore(path: path))
        let destination = try await before.createDestination(type: .file, name: "f", settings: ["directory": directory])
        _ = try await before.activate(segment: "s1", destination: destination.id, identity: .email, attributes: [:])
        try await Self.withWorkers(
            before,
            connector: { _ in hanging },
            body: { (_: DeliveryWorkers) async throws in
                _ = try await before.accept(
                    sender: "segmentation",
                    [Self.change(1, "s1", p2, realized: true, version: 1)]
                )
                #expect(try await Self.eventually { hanging.calls.withLock { $0.count } == 1 })
                // p2 exits while its add is under way; then the process dies.
                _ = try await before.accept(
                    sender: "segmentation",
                    [Self.change(2, "s1", p2, realized: false, version: 2)]
                )
            }
        )
        let interrupted = try #require(hanging.calls.withLock { $0.first })
        #expect(try await before.runs(destination: destination.id, before: 0, limit: 10).isEmpty)

        let recording = RecordingConnector(hangs: false)
        let after = Self.engine(try SQLiteDestinationStore(path: path))
        try await Self.withWorkers(
            after,
            connector: { _ in recording },
            body: { (_: DeliveryWorkers) async throws in
                #expect(try await Self.eventually { recording.calls.withLock { $0.count } == 2 })
                #expect(try await Self.eventually { try await after.pending(destination.id).count == 0 })
            }
        )
        let calls = recording.calls.withLock { $0 }
        // First the interrupted delivery again, unchanged (same members, same run: same file name)…
        #expect(calls[0].members == interrupted.members && calls[0].run == interrupted.run)
        #expect(calls[0].members.map(\.add) == [true])
        // …then the exit, in a run of its own; nothing else.
        #expect(calls[1].members.map(\.add) == [false] && calls[1].run > interrupted.run)
        let runs = try await after.runs(destination: destination.id, before: 0, limit: 10).map(\.1)
        #expect(runs.map { ($0.added, $0.removed) }.elementsEqual([(0, 1), (1, 0)], by: ==))
    }

    @Test func runNumbersOnlyGoUpEvenWhenTheClockDoesNot() async throws {
        let store = try SQLiteDestinationStore()
        #expect(try store.nextRunNumber(destination: "d1", atLeast: 1_000) == 1_000)
        #expect(try store.nextRunNumber(destination: "d1", atLeast: 1_000) == 1_001)
        #expect(try store.nextRunNumber(destination: "d1", atLeast: 900) == 1_002)
        #expect(try store.nextRunNumber(destination: "d1", atLeast: 5_000) == 5_000)
        #expect(try store.nextRunNumber(destination: "d2", atLeast: 900) == 900)
    }

    @Test func destinationsAreCheckedAndCredentialsKeptApart() async throws {
        let engine = Self.engine(try SQLiteDestinationStore())
        await #expect(throws: RPCError.self) {
            _ = try await engine.createDestination(type: .file, name: "no directory", settings: [:])
        }
        await #expect(throws: RPCError.self) {
            _ = try await engine.createDestination(
                type: .file,
                name: "x",
                settings: ["directory": "/tmp", "format": "xlsx"]
            )
        }
        await #expect(throws: RPCError.self) {
            _ = try await engine.activate(segment: "s1", destination: "d99", identity: .email, attributes: [:])
        }
        // One static list, one audience: a second activation waits for the first to be deactivated.
        let marketo = try await engine.createDestination(
            type: .marketo,
            name: "list 1001",
            settings: ["endpoint": "https://m.example/rest", "client_id": "c", "client_secret": "s", "list_id": "1001"]
        )
        #expect(marketo.credentials == ["client_secret": "s"] && marketo.settings["client_secret"] == nil)
        let first = try await engine.activate(segment: "s1", destination: marketo.id, identity: .email, attributes: [:])
        do {
            _ = try await engine.activate(segment: "s2", destination: marketo.id, identity: .email, attributes: [:])
            Issue.record("a second activation of one Marketo list was accepted")
        } catch let error as RPCError {
            #expect(error.code == .failedPrecondition && error.message.contains("Marketo list 1001"))
        }
        await #expect(throws: RPCError.self) {
            _ = try await engine.activate(
                segment: "s2",
                destination: marketo.id,
                identity: .hashedEmail,
                attributes: [:]
            )
        }
        _ = try await engine.deactivate(first.0.id)
        _ = try await engine.activate(segment: "s2", destination: marketo.id, identity: .email, attributes: [:])
    }
}

import CDPProto
import Foundation
import IdentityGraph
import IdentityRules
import Logging
import ProfileStore
import RPCCore
import ServiceLifecycle
import SwiftProtobuf
import Synchronization

/// Drives privacy requests (a person's right to erasure) through the five services, in an order that
/// leaves nothing behind:
///
/// 1. ingestion suppresses the person's identities (as hashes: its intake refuses the person's
///    records from then on) and deletes their raw records, and any not yet forwarded;
/// 2. identity removes each identity (the clusters split and fall away), and profile waits until it
///    has applied those updates, so that no update still on its way brings a fragment back;
/// 3. profile deletes the person's fragments and events, including any that arrived meanwhile;
///    identity forgets the versions and conflicts of the person's records;
/// 4. segmentation lets the person exit every segment and deletes its record and memberships, and
///    passes the call on to destination, which queues the person's removal wherever it was delivered;
/// 5. once every destination removed the person (`settling`), each service clears the log of deleted
///    data (SQLite's write-ahead log), and the request forgets the identities and keys it held.
///
/// Every step is idempotent. A request is saved before its first step and after each, and the
/// coordinator's loop drives unfinished requests again every few seconds, so a service that is down,
/// or a restart of profile, only delays a request.
public final class PrivacyCoordinator: Service, Sendable {
    /// The other services' parts.
    public struct Peers: Sendable {
        public var ingestion: Cdp_Privacy_V1_Erasure.Client?
        public var identity: Cdp_Identity_V1_Identity.Client?
        public var identityErasure: Cdp_Privacy_V1_Erasure.Client?
        /// Where profile sends views; segmentation passes erasures on to destination. Nil when profile
        /// sends views nowhere (then nothing of the person went further).
        public var segmentation: Cdp_Privacy_V1_Erasure.Client?

        /// Peers; without ingestion or identity privacy requests are refused (they hold the person's
        /// records and identities).
        public init(
            ingestion: Cdp_Privacy_V1_Erasure.Client?,
            identity: Cdp_Identity_V1_Identity.Client?,
            identityErasure: Cdp_Privacy_V1_Erasure.Client?,
            segmentation: Cdp_Privacy_V1_Erasure.Client?
        ) {
            self.ingestion = ingestion
            self.identity = identity
            self.identityErasure = identityErasure
            self.segmentation = segmentation
        }

        /// The flags of the services profile must know and does not.
        public var missing: [String] {
            [ingestion == nil ? "--ingestion" : nil, identity == nil ? "--identity" : nil].compactMap { $0 }
        }
    }

    /// What a request needs in clear while it runs; dropped when it is done.
    struct Work: Codable, Sendable {
        /// The person's identities, `[namespace, value]`.
        var identities: [[String]]
        /// The person's fragments (their records, and the relations and memberships naming them), as
        /// `[entity type number, key]`.
        var fragments: [[String]]
        /// The keys of the person's events.
        var events: [String]
        /// The person's clusters: the one erased and those identity split off it.
        var clusters: [UInt64]

        /// Every record key: what ingestion deletes and identity forgets.
        var keys: [String] { Array(Set(fragments.map { $0[1] } + events)).sorted() }

        mutating func add(_ data: PersonData) {
            let known = Set(fragments.map { $0[1] })
            fragments += data.fragments.filter { !known.contains($0.key) }.map { [String($0.entity), $0.key] }
            events = Array(Set(events + data.events)).sorted()
        }

        var personData: PersonData {
            var data = PersonData()
            data.fragments = fragments.map { FragmentKey(entity: Int64($0[0]) ?? 0, key: $0[1]) }
            data.events = events
            return data
        }
    }

    private let engine: ProfileEngine
    private let peers: Peers
    private let logger: Logger
    private let changed: @Sendable () -> Void
    private let callOptions = CallOptions(timeout: .seconds(30))
    /// How long a request waits for profile to apply identity's removal before it is left to the loop.
    private let applyWait: Duration
    private let pollInterval: Duration
    /// One request at a time is driven (the API's call and the loop never step on each other).
    private let lock = AsyncLock()

    /// Creates the coordinator; `changed` wakes profile's relay after its views changed.
    public init(
        engine: ProfileEngine,
        peers: Peers,
        logger: Logger,
        applyWait: Duration = .seconds(20),
        pollInterval: Duration = .seconds(2),
        changed: @escaping @Sendable () -> Void = {}
    ) {
        self.engine = engine
        self.peers = peers
        self.logger = logger
        self.applyWait = applyWait
        self.pollInterval = pollInterval
        self.changed = changed
    }

    // MARK: - The API

    /// What `DeletePerson` answers.
    public struct Outcome: Sendable {
        public var request: Cdp_Privacy_V1_PrivacyRequest
        public var alreadyErased: Bool
        public var fragments = 0
        public var events = 0
        public var identities: [Cdp_Identity_V1_IdentityValue] = []
    }

    /// Starts and drives the privacy request of the person `cluster` names (identity given as asked),
    /// or answers the request that erased them already.
    public func delete(cluster: UInt64?, asked identity: Cdp_Identity_V1_IdentityValue) async throws -> Outcome {
        let missing = peers.missing
        guard missing.isEmpty else {
            throw RPCError(
                code: .failedPrecondition,
                message: "a privacy delete must reach every service, and profile was started without "
                    + missing.joined(separator: " and ") + " (cdp up passes them)"
            )
        }
        return try await lock.withLock {
            guard let cluster else {
                let hash = ErasureHash.of(Identity(identity.namespace, identity.value))
                guard let earlier = try await engine.privacy({ try $0.privacyRequest(hash: hash) }) else {
                    throw RPCError(
                        code: .notFound,
                        message: "no person has the identity \(identity.namespace):\(identity.value)"
                    )
                }
                var outcome = Outcome(request: earlier.request, alreadyErased: true)
                if earlier.request.state != .done {
                    outcome.request = try await advance(earlier).request
                }
                return outcome
            }
            let data = try await engine.personData(cluster: cluster)
            var work = Work(
                identities: data.identities.map { [$0.namespace, $0.value] },
                fragments: [],
                events: [],
                clusters: [cluster]
            )
            work.add(data)
            let hashes = data.identities.map { ErasureHash.of(Identity($0.namespace, $0.value)) }
            var stored = try await engine.privacy {
                try $0.newPrivacyRequest(hashes: hashes, work: try JSONEncoder().encode(work), at: Date())
            }
            logger.notice("privacy request started", metadata: ["request": "\(stored.request.id)"])
            var outcome = Outcome(request: stored.request, alreadyErased: false, identities: data.identities)
            stored = try await advance(stored, counting: &outcome)
            outcome.request = stored.request
            return outcome
        }
    }

    /// A request by id.
    public func request(_ id: String) async throws -> Cdp_Privacy_V1_PrivacyRequest {
        guard let stored = try await engine.privacy({ try $0.privacyRequest(id: id) }) else {
            throw RPCError(code: .notFound, message: "no privacy request has the id \(id)")
        }
        return stored.request
    }

    /// Every request, newest first.
    public func requests() async throws -> [Cdp_Privacy_V1_PrivacyRequest] {
        try await engine.privacy { try $0.privacyRequests() }.map(\.request)
    }

    // MARK: - The loop

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: self.pollInterval)
                guard self.peers.missing.isEmpty else { continue }
                do {
                    let open = try await self.engine.privacy { try $0.privacyRequests() }
                        .filter { $0.request.state != .done }
                    for stored in open.reversed() {
                        _ = try? await self.lock.withLock { try await self.advance(stored) }
                    }
                } catch {
                    self.logger.error("cannot read the privacy requests", metadata: ["error": "\(error)"])
                }
            }
        }
    }

    // MARK: - Steps

    private func advance(_ stored: StoredPrivacyRequest) async throws -> StoredPrivacyRequest {
        var ignored = Outcome(request: stored.request, alreadyErased: false)
        return try await advance(stored, counting: &ignored)
    }

    /// Takes a request as far as it goes now; saves its progress (and the error that stopped it).
    private func advance(
        _ stored: StoredPrivacyRequest,
        counting outcome: inout Outcome
    ) async throws
        -> StoredPrivacyRequest
    {
        // Re-read: the loop's list may be older than a step the API's call took.
        var stored = try await engine.privacy({ try $0.privacyRequest(id: stored.request.id) }) ?? stored
        do {
            if stored.request.state == .erasing { try await erase(&stored, &outcome) }
            if stored.request.state == .settling { try await settle(&stored) }
            stored.request.lastError = ""
            try await engine.privacy { try $0.savePrivacyRequest(stored) }
            return stored
        } catch {
            stored.request.lastError = "\(error)"
            try await engine.privacy { try $0.savePrivacyRequest(stored) }
            logger.warning(
                "privacy request waits",
                metadata: ["request": "\(stored.request.id)", "error": "\(error)"]
            )
            throw RPCError(
                code: .unavailable,
                message: "privacy request \(stored.request.id) started; \(error); profile goes on with it every "
                    + "few seconds (cdp privacy status \(stored.request.id))"
            )
        }
    }

    private func erase(_ stored: inout StoredPrivacyRequest, _ outcome: inout Outcome) async throws {
        guard let data = stored.work else { return }
        var work = try JSONDecoder().decode(Work.self, from: data)
        let id = stored.request.id
        let hashes = work.identities.map { ErasureHash.of(Identity($0[0], $0[1])) }
        // 1. Ingestion first: nothing new of the person gets in while the rest is deleted.
        record(
            &stored,
            "ingestion",
            try await erase(on: "ingestion", peers.ingestion, id, work, hashes: hashes),
            done: true
        )
        // 2. Identity: each identity goes; the clusters it split off belong to the request too.
        var lastUpdate: UInt64 = 0
        for pair in work.identities {
            let response = try await call("identity", peers.identity) { client in
                try await client.removeIdentity(
                    .with {
                        $0.entityType = .person
                        $0.identity.namespace = pair[0]
                        $0.identity.value = pair[1]
                    },
                    options: callOptions
                )
            }
            lastUpdate = max(lastUpdate, response.updateSequence)
            for change in response.changes { work.clusters += change.from + change.into }
        }
        work.clusters = Array(Set(work.clusters)).sorted()
        stored.work = try JSONEncoder().encode(work)
        try await engine.privacy { [stored] in try $0.savePrivacyRequest(stored) }
        // Profile must have applied identity's updates up to the removal: an update still on its way
        // would otherwise bring a fragment back after the deletion.
        let deadline = ContinuousClock.now + applyWait
        while try await engine.appliedSequence() < lastUpdate {
            guard ContinuousClock.now < deadline else {
                throw PrivacyError(
                    "profile has not yet applied identity's updates up to \(lastUpdate) (identity's relay to "
                        + "profile is behind or down)"
                )
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        // 3. Profile: the person's data wherever it went, and whatever arrived meanwhile.
        for cluster in work.clusters { work.add(try await engine.personData(cluster: cluster)) }
        let deleted = try await engine.delete(work.personData)
        outcome.fragments += deleted.fragments
        outcome.events += deleted.events
        changed()
        var profile = Cdp_Privacy_V1_EraseReport()
        profile.removed["fragments"] = UInt64(deleted.fragments)
        profile.removed["events"] = UInt64(deleted.events)
        record(&stored, "profile", profile, done: true)
        stored.work = try JSONEncoder().encode(work)
        // Ingestion again, with the keys found late; identity forgets the records' versions.
        record(
            &stored,
            "ingestion",
            try await erase(on: "ingestion", peers.ingestion, id, work, hashes: hashes),
            done: true
        )
        var report = try await erase(on: "identity", peers.identityErasure, id, work)
        report.removed["identities"] = UInt64(work.identities.count)
        record(&stored, "identity", report, done: true)
        // 4. Segmentation, which passes it on to destination.
        try await eraseDownstream(&stored, work)
        stored.request.state = .settling
    }

    /// Segmentation's and destination's parts (recorded as done when profile sends views nowhere);
    /// returns how many removals from destinations are still under way.
    @discardableResult
    private func eraseDownstream(
        _ stored: inout StoredPrivacyRequest,
        _ work: Work,
        final: Bool = false
    ) async throws
        -> UInt64
    {
        guard peers.segmentation != nil else {
            for name in ["segmentation", "destination"] {
                record(&stored, name, .with { $0.note = "profile sends views nowhere (no --segmentation)" }, done: true)
            }
            return 0
        }
        let report = try await erase(on: "segmentation", peers.segmentation, stored.request.id, work, final: final)
        var own = report
        own.downstream = [:]
        if let destination = report.downstream["destination"] {
            own.pending -= min(own.pending, destination.pending)
            record(&stored, "destination", destination, done: destination.pending == 0)
        } else {
            record(&stored, "destination", .with { $0.note = "segmentation sends to no destination" }, done: true)
        }
        record(&stored, "segmentation", own, done: own.pending == 0)
        return report.pending
    }

    private func settle(_ stored: inout StoredPrivacyRequest) async throws {
        guard let data = stored.work else {
            stored.request.state = .done
            return
        }
        let work = try JSONDecoder().decode(Work.self, from: data)
        let id = stored.request.id
        guard try await eraseDownstream(&stored, work) == 0 else { return }
        // 5. The last pass: every service clears its log of the deleted data.
        var cleared = true
        for (name, peer) in [("ingestion", peers.ingestion), ("identity", peers.identityErasure)] {
            let report = try await erase(on: name, peer, id, work, final: true)
            if report.pending > 0 {
                cleared = false
                note(&stored, name, report.note)
            }
        }
        if try await eraseDownstream(&stored, work, final: true) > 0 { cleared = false }
        // Profile drops the work (the identities and keys in clear) before clearing its own log.
        let finished = stored
        stored.work = nil
        try await engine.privacy { [stored] in try $0.savePrivacyRequest(stored) }
        if !(await engine.clearLog()) {
            cleared = false
            note(&stored, "profile", "the write-ahead log is in use; it is cleared on the next try")
        }
        guard cleared else {
            // Not done yet: the work is needed for the next pass.
            stored.work = finished.work
            return
        }
        stored.request.state = .done
        stored.request.finishedAt = Google_Protobuf_Timestamp(date: Date())
        logger.notice("privacy request done", metadata: ["request": "\(id)"])
    }

    /// One service's `Erase` for the request (the hashes go to ingestion only).
    private func erase(
        on name: String,
        _ peer: Cdp_Privacy_V1_Erasure.Client?,
        _ id: String,
        _ work: Work,
        hashes: [Data] = [],
        final: Bool = false
    ) async throws -> Cdp_Privacy_V1_EraseReport {
        try await call(name, peer) { client in
            try await client.erase(
                .with {
                    $0.requestID = id
                    $0.identityHashes = hashes
                    $0.recordKeys = work.keys
                    $0.personClusters = work.clusters
                    $0.final = final
                },
                options: callOptions
            )
        }
    }

    private func call<Client: Sendable, Response: Sendable>(
        _ name: String,
        _ client: Client?,
        _ body: (Client) async throws -> Response
    ) async throws -> Response {
        guard let client else { throw PrivacyError("profile does not know where \(name) is") }
        do {
            return try await body(client)
        } catch {
            throw PrivacyError("\(name) did not answer (\(error))")
        }
    }

    /// Adds a service's report to the request's progress (counts add up over calls).
    private func record(
        _ stored: inout StoredPrivacyRequest,
        _ service: String,
        _ report: Cdp_Privacy_V1_EraseReport,
        done: Bool
    ) {
        var progress = progressEntry(&stored, service)
        for (kind, count) in report.removed { progress.removed[kind, default: 0] += count }
        progress.pending = report.pending
        progress.note = report.note
        progress.done = done
        setProgress(&stored, progress)
    }

    private func note(_ stored: inout StoredPrivacyRequest, _ service: String, _ text: String) {
        var progress = progressEntry(&stored, service)
        progress.note = text
        setProgress(&stored, progress)
    }

    private static let order = ["ingestion", "identity", "profile", "segmentation", "destination"]

    private func progressEntry(
        _ stored: inout StoredPrivacyRequest,
        _ service: String
    ) -> Cdp_Privacy_V1_ServiceProgress {
        if let found = stored.request.services.first(where: { $0.service == service }) { return found }
        var progress = Cdp_Privacy_V1_ServiceProgress()
        progress.service = service
        return progress
    }

    private func setProgress(_ stored: inout StoredPrivacyRequest, _ progress: Cdp_Privacy_V1_ServiceProgress) {
        stored.request.services.removeAll { $0.service == progress.service }
        stored.request.services.append(progress)
        stored.request.services.sort {
            (Self.order.firstIndex(of: $0.service) ?? 9) < (Self.order.firstIndex(of: $1.service) ?? 9)
        }
    }
}

/// Why a privacy request cannot go on now.
struct PrivacyError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A lock for async code: one holder at a time, the others wait in order.
final class AsyncLock: Sendable {
    private let state = Mutex<(held: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func withLock<Result: Sendable>(_ body: () async throws -> Result) async throws -> Result {
        await acquire()
        defer { release() }
        return try await body()
    }

    private func acquire() async {
        await withCheckedContinuation { continuation in
            let acquired = state.withLock { state in
                if state.held {
                    state.waiters.append(continuation)
                    return false
                }
                state.held = true
                return true
            }
            if acquired { continuation.resume() }
        }
    }

    private func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if state.waiters.isEmpty {
                state.held = false
                return nil
            }
            return state.waiters.removeFirst()
        }
        next?.resume()
    }
}

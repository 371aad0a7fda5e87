import CDPProto
import DestinationConnectors
import DestinationStore
import Foundation
import Logging
import RPCCore
import ServiceLifecycle
import ServiceSupport
import Synchronization

/// Delivers each destination's queue with its own worker: a slow or failing destination only delays
/// itself. A worker takes a batch, keeps opted-out persons out of marketing destinations, maps each
/// member to its identity and attributes, calls the connector, retries with exponential backoff and
/// jitter while the failure is retryable, and records the run. Nothing is lost across restarts: a
/// batch leaves the queue only when its run is recorded; one delivered but not recorded is delivered
/// again, which connectors keep idempotent (a member is added or removed, never counted).
public final class DeliveryWorkers: Service, Sendable {
    private let engine: DestinationEngine
    private let backoff: Backoff
    private let idlePoll: Duration
    private let logger: Logger
    private let wakeSignal = WakeSignal()
    /// Each destination's worker waits on its own signal (a signal has one waiter).
    private let destinationSignals = Mutex<[String: WakeSignal]>([:])
    private let errors = Mutex<[String: String]>([:])
    private let connector: @Sendable (DestinationRecord) throws -> any Connector

    /// Creates the workers.
    ///
    /// - Parameter connector: The connector of a destination (tests put fakes in).
    public init(
        engine: DestinationEngine,
        backoff: Backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(30)),
        idlePoll: Duration = .seconds(1),
        logger: Logger,
        connector: @escaping @Sendable (DestinationRecord) throws -> any Connector = { destination in
            try Connectors.make(
                type: destination.type,
                settings: destination.settings.merging(destination.credentials) { setting, _ in setting }
            )
        }
    ) {
        self.engine = engine
        self.backoff = backoff
        self.idlePoll = idlePoll
        self.logger = logger
        self.connector = connector
    }

    /// Tells the workers that work was queued.
    public func wake() {
        wakeSignal.signal()
        for signal in destinationSignals.withLock({ Array($0.values) }) { signal.signal() }
    }

    /// A destination's last delivery error, cleared by the next success.
    public func lastError(_ destination: String) -> String? { errors.withLock { $0[destination] } }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                var running: Set<String> = []
                while !Task.isCancelled {
                    let destinations: [DestinationRecord]
                    do {
                        destinations = try await self.engine.destinations()
                    } catch {
                        self.logger.error("cannot list the destinations to deliver", metadata: ["error": "\(error)"])
                        destinations = []
                    }
                    for destination in destinations
                    where !running.contains(destination.id) {
                        running.insert(destination.id)
                        group.addTask { await self.work(destination) }
                    }
                    await self.wakeSignal.wait(upTo: self.idlePoll)
                }
                group.cancelAll()
            }
        }
    }

    /// One destination's loop.
    func work(_ destination: DestinationRecord) async {
        let connector: any Connector
        do {
            connector = try self.connector(destination)
        } catch {
            errors.withLock { $0[destination.id] = "\(error)" }
            logger.error(
                "destination cannot start",
                metadata: ["destination": "\(destination.id)", "error": "\(error)"]
            )
            return
        }
        let signal = WakeSignal()
        destinationSignals.withLock { $0[destination.id] = signal }
        while !Task.isCancelled {
            do {
                guard let batch = try await engine.nextBatch(destination: destination.id, limit: connector.batchLimit)
                else {
                    await signal.wait(upTo: idlePoll)
                    continue
                }
                guard let report = await deliver(batch, destination, connector) else { return }
                try await engine.complete(batch, report)
            } catch {
                errors.withLock { $0[destination.id] = "\(error)" }
                logger.error(
                    "delivery bookkeeping failed",
                    metadata: ["destination": "\(destination.id)", "error": "\(error)"]
                )
                try? await Task.sleep(for: idlePoll)
            }
        }
    }

    /// Delivers one batch until it succeeds or fails for good; nil if cancelled meanwhile.
    func deliver(
        _ batch: PendingBatch,
        _ destination: DestinationRecord,
        _ connector: any Connector
    ) async
        -> DeliveryReport?
    {
        let started = await engine.currentTime()
        var report = DeliveryReport(startedAt: started, finishedAt: started)
        let mapping = batch.activation.identity == .unspecified ? connector.defaultIdentity : batch.activation.identity
        var outbound: [OutboundMember] = []
        var byCluster: [UInt64: PendingMember] = [:]
        for member in batch.members {
            let optedOut = connector.suppressesOptedOut && MemberMapping.optedOut(member.record)
            if member.realized && optedOut { report.suppressed += 1 }
            var wanted = member
            wanted.realized = member.realized && !optedOut
            let current = MemberMapping.identity(of: member.record, mapping)
            let known = member.delivered == true ? member.identity : nil
            // Already so at the destination, under the same identity: nothing to send.
            if wanted.realized == (member.delivered ?? false) && (!wanted.realized || known == current) {
                report.delivered.append(wanted)
                continue
            }
            var attributes: [String: String] = [:]
            for (field, source) in batch.activation.attributes {
                if let value = MemberMapping.value(source, of: member.record) { attributes[field] = value }
            }
            func send(_ add: Bool, _ identity: String) {
                outbound.append(
                    OutboundMember(
                        entityType: member.entityType,
                        cluster: member.cluster,
                        add: add,
                        version: member.version,
                        identity: identity,
                        attributes: add ? attributes : [:]
                    )
                )
            }
            // A removal names the member as the destination knows it, even if its email changed since.
            if let known, known != current || !wanted.realized { send(false, known) }
            if wanted.realized {
                guard let current else {
                    report.failed.append((member.cluster, "the record has no \(Self.name(of: mapping)) to send"))
                    continue
                }
                send(true, current)
                wanted.identity = current
            } else {
                wanted.identity = known
            }
            byCluster[member.cluster] = wanted
        }
        if !outbound.isEmpty {
            let engine = self.engine
            let activation = batch.activation
            let changes = outbound
            let context = DeliveryContext(
                activation: activation,
                runNumber: Int(started.timeIntervalSince1970 * 1000)
            ) {
                // Full exports: what was added before, with this batch's changes applied.
                var current = try await engine.deliveredMembers(activation: activation.id).compactMap { member in
                    (member.identity ?? MemberMapping.identity(of: member.record, mapping)).map { identity in
                        OutboundMember(
                            entityType: member.entityType,
                            cluster: member.cluster,
                            add: true,
                            version: member.version,
                            identity: identity,
                            attributes: [:]
                        )
                    }
                }
                let changed = Set(changes.map(\.cluster))
                current.removeAll { changed.contains($0.cluster) }
                return (current + changes.filter(\.add)).sorted { $0.cluster < $1.cluster }
            }
            var delay = Duration.zero
            while true {
                if Task.isCancelled { return nil }
                do {
                    let refused = try await connector.deliver(outbound, context)
                    for member in outbound {
                        if refused[member.cluster] == nil {
                            if member.add { report.added += 1 } else { report.removed += 1 }
                        }
                    }
                    for (cluster, wanted) in byCluster.sorted(by: { $0.key < $1.key }) {
                        if let message = refused[cluster] {
                            report.failed.append((cluster, message))
                        } else {
                            report.delivered.append(wanted)
                        }
                    }
                    errors.withLock { $0[destination.id] = nil }
                    break
                } catch let failure as DeliveryFailure {
                    switch failure {
                    case .permanent(let message):
                        errors.withLock { $0[destination.id] = message }
                        for cluster in byCluster.keys.sorted() { report.failed.append((cluster, message)) }
                    case .retryable(let message, let after):
                        errors.withLock { $0[destination.id] = message }
                        report.retries += 1
                        delay = backoff.delay(after: delay)
                        logger.notice(
                            "delivery failed; retrying",
                            metadata: [
                                "destination": "\(destination.id)", "retry": "\(report.retries)", "error": "\(message)",
                            ]
                        )
                        try? await Task.sleep(for: max(after ?? .zero, Backoff.jittered(delay)))
                        continue
                    }
                    break
                } catch {
                    errors.withLock { $0[destination.id] = "\(error)" }
                    report.retries += 1
                    delay = backoff.delay(after: delay)
                    try? await Task.sleep(for: Backoff.jittered(delay))
                    continue
                }
            }
        }
        report.finishedAt = await engine.currentTime()
        return report
    }

    static func name(of mapping: Cdp_Destination_V1_IdentityMapping) -> String {
        switch mapping {
        case .crmID: "CRM id"
        case .hashedEmail: "email to hash"
        default: "email"
        }
    }
}

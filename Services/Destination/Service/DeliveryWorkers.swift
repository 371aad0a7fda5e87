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
/// member to its identity and attributes, and saves that plan; then it calls the connector, retries
/// with exponential backoff and jitter while the failure is retryable, and records the run, which
/// ends the plan. Nothing is lost across restarts: a batch leaves the queue only when its run is
/// recorded. Nothing is added twice: a plan interrupted by a crash is delivered again exactly as
/// planned (the same members, operations, run number and file name), and the destinations take a
/// repeated add or remove as a no-op.
public final class DeliveryWorkers: Service, Sendable {
    private let engine: DestinationEngine
    private let backoff: Backoff
    private let idlePoll: Duration
    private let logger: Logger
    private let wakeSignal = WakeSignal()
    /// Each destination's worker waits on its own signal (a signal has one waiter).
    private let destinationSignals = Mutex<[String: WakeSignal]>([:])
    private let errors = Mutex<[String: String]>([:])
    /// Destinations with a worker; a worker that stops (say its connector cannot be built) leaves, and
    /// the next look at the destinations starts it again.
    private let running = Mutex<Set<String>>([])
    /// Bumped when a destination's settings change or it is deleted: its worker stops at its next
    /// turn, and the next look at the destinations starts it again with the new settings.
    private let generations = Mutex<[String: Int]>([:])
    private let connector: @Sendable (DestinationRecord) throws -> any Connector

    /// Creates the workers.
    ///
    /// - Parameter connector: The connector of a destination (tests put fakes in).
    public init(
        engine: DestinationEngine,
        backoff: Backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(30)),
        idlePoll: Duration = .seconds(1),
        logger: Logger,
        connector: (@Sendable (DestinationRecord) throws -> any Connector)? = nil
    ) {
        self.engine = engine
        self.backoff = backoff
        self.idlePoll = idlePoll
        self.logger = logger
        self.connector = connector ?? { try engine.connector(for: $0) }
    }

    /// Tells the workers that work was queued.
    public func wake() {
        wakeSignal.signal()
        for signal in destinationSignals.withLock({ Array($0.values) }) { signal.signal() }
    }

    /// Makes a destination's worker start again (new settings) or stop (deleted).
    public func restart(_ destination: String) {
        generations.withLock { $0[destination, default: 0] += 1 }
        errors.withLock { $0[destination] = nil }
        wake()
    }

    /// A destination's last delivery error, cleared by the next success.
    public func lastError(_ destination: String) -> String? { errors.withLock { $0[destination] } }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                while !Task.isCancelled {
                    let destinations: [DestinationRecord]
                    do {
                        destinations = try await self.engine.destinations()
                    } catch {
                        self.logger.error("cannot list the destinations to deliver", metadata: ["error": "\(error)"])
                        destinations = []
                    }
                    for destination in destinations where self.running.withLock({ $0.insert(destination.id).inserted })
                    {
                        group.addTask {
                            await self.work(destination)
                            _ = self.running.withLock { $0.remove(destination.id) }
                        }
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
        let generation = generations.withLock { $0[destination.id, default: 0] }
        while !Task.isCancelled, generations.withLock({ $0[destination.id, default: 0] }) == generation {
            do {
                let plan: DeliveryPlan
                if let saved = try await engine.plannedDelivery(destination: destination.id) {
                    // A delivery under way when the process stopped: the same again.
                    plan = try JSONDecoder().decode(DeliveryPlan.self, from: saved)
                } else {
                    guard
                        let batch = try await engine.nextBatch(destination: destination.id, limit: connector.batchLimit)
                    else {
                        await signal.wait(upTo: idlePoll)
                        continue
                    }
                    var planned = Self.plan(batch, connector, startedAt: await engine.currentTime())
                    if !planned.outbound.isEmpty {
                        planned.runNumber = try await engine.nextRunNumber(
                            destination: destination.id,
                            atLeast: planned.runNumber
                        )
                    }
                    plan = planned
                    if !plan.outbound.isEmpty {
                        try await engine.savePlannedDelivery(
                            destination: destination.id,
                            activation: plan.activation,
                            plan: try JSONEncoder().encode(plan)
                        )
                    }
                }
                guard let report = await deliver(plan, destination, connector, generation: generation) else { return }
                try await engine.complete(activation: plan.activation, destination: destination.id, report)
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

    /// Decides what a batch sends: who is suppressed, who is already so at the destination, the
    /// removals (under the identity the destination knows) and the adds with their attributes.
    static func plan(_ batch: PendingBatch, _ connector: any Connector, startedAt: Date) -> DeliveryPlan {
        var plan = DeliveryPlan(
            activation: batch.activation.id,
            runNumber: Int(startedAt.timeIntervalSince1970 * 1000),
            startedAt: startedAt,
            taken: batch.members.map {
                SettledMember(
                    entityType: $0.entityType,
                    cluster: $0.cluster,
                    realized: $0.realized,
                    version: $0.version,
                    identity: nil
                )
            }
        )
        let mapping = batch.activation.identity == .unspecified ? connector.defaultIdentity : batch.activation.identity
        for member in batch.members {
            let optedOut = connector.suppressesOptedOut && MemberMapping.optedOut(member.record)
            if member.realized && optedOut { plan.suppressed += 1 }
            let realized = member.realized && !optedOut
            let current = MemberMapping.identity(of: member.record, mapping)
            let wasThere = member.delivered ?? false
            let known = wasThere ? member.identity : nil
            let attributes = MemberMapping.attributes(batch.activation.attributes, of: member.record)
            let domain = MemberMapping.domain(of: member.record)
            let content = MemberMapping.content(attributes: attributes, domain: domain)
            var settled = SettledMember(
                entityType: member.entityType,
                cluster: member.cluster,
                realized: realized,
                version: member.version,
                identity: known,
                content: wasThere ? member.content : nil
            )
            // Already so at the destination, under the same identity and with the same attributes:
            // nothing to send.
            if realized == wasThere && (!realized || (known == current && member.content == content)) {
                plan.unchanged.append(settled)
                continue
            }
            func send(_ add: Bool, _ identity: String, update: Bool = false) {
                plan.outbound.append(
                    OutboundMember(
                        entityType: member.entityType,
                        cluster: member.cluster,
                        add: add,
                        version: member.version,
                        identity: identity,
                        attributes: add ? attributes : [:],
                        domain: domain,
                        update: update
                    )
                )
            }
            // A removal names the member as the destination knows it, even if its email changed since.
            if let known, known != current || !realized { send(false, known) }
            if realized {
                guard let current else {
                    plan.failed.append(
                        MemberFailure(
                            cluster: member.cluster,
                            message: "the record has no \(name(of: mapping, member.entityType)) to send"
                        )
                    )
                    // Removed under the identity it had: settled as not there.
                    if known != nil {
                        settled.realized = false
                        settled.identity = nil
                        settled.content = nil
                        plan.sent.append(settled)
                    }
                    continue
                }
                // There already under this identity: its attributes changed, so it is updated in place.
                send(true, current, update: known == current)
                settled.identity = current
                settled.content = content
            } else {
                settled.content = nil
            }
            plan.sent.append(settled)
        }
        return plan
    }

    /// Delivers a plan until it succeeds or fails for good; nil if cancelled meanwhile, or if the
    /// destination's settings changed (the plan stays saved: the worker started again delivers it with
    /// the new settings).
    func deliver(
        _ plan: DeliveryPlan,
        _ destination: DestinationRecord,
        _ connector: any Connector,
        generation: Int? = nil
    ) async -> DeliveryReport? {
        var report = DeliveryReport(taken: plan.taken, startedAt: plan.startedAt, finishedAt: plan.startedAt)
        report.suppressed = plan.suppressed
        report.failed = plan.failed
        report.delivered = plan.unchanged
        if !plan.outbound.isEmpty {
            var delay = Duration.zero
            while true {
                if Task.isCancelled { return nil }
                if let generation, generations.withLock({ $0[destination.id, default: 0] }) != generation { return nil }
                // Read each attempt: a deactivated activation's delivery is abandoned (nothing more is
                // sent for it), even one under way or repeated after a crash.
                let activation: ActivationRecord
                do {
                    guard let found = try await engine.activation(plan.activation), found.active else {
                        logger.notice(
                            "a delivery of an inactive activation is abandoned",
                            metadata: ["destination": "\(destination.id)", "activation": "\(plan.activation)"]
                        )
                        report.delivered = []
                        report.failed = []
                        break
                    }
                    activation = found
                } catch {
                    errors.withLock { $0[destination.id] = "cannot read activation \(plan.activation): \(error)" }
                    logger.error("cannot read the activation of a delivery", metadata: ["error": "\(error)"])
                    try? await Task.sleep(for: idlePoll)
                    continue
                }
                let context = context(plan, activation, connector)
                do {
                    let refused = try await connector.deliver(plan.outbound, context)
                    for member in plan.outbound where refused[member.cluster] == nil {
                        if member.update {
                            report.updated += 1
                        } else if member.add {
                            report.added += 1
                        } else {
                            report.removed += 1
                        }
                    }
                    for member in plan.sent {
                        if let message = refused[member.cluster] {
                            report.failed.append(MemberFailure(cluster: member.cluster, message: message))
                        } else {
                            report.delivered.append(member)
                        }
                    }
                    errors.withLock { $0[destination.id] = nil }
                    break
                } catch let failure as DeliveryFailure {
                    switch failure {
                    case .permanent(let message):
                        errors.withLock { $0[destination.id] = message }
                        logger.warning(
                            "delivery failed for good",
                            metadata: ["destination": "\(destination.id)", "error": "\(message)"]
                        )
                        // Some calls may have worked before the one refused (a removal, a first chunk):
                        // what the destination holds is unknown, so these members count as not there, and
                        // whatever they become next is sent (adds and removes repeat harmlessly).
                        for member in plan.sent {
                            report.failed.append(MemberFailure(cluster: member.cluster, message: message))
                            var unknown = member
                            unknown.realized = false
                            unknown.identity = nil
                            unknown.content = nil
                            report.delivered.append(unknown)
                        }
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
                } catch is CancellationError {
                    return nil
                } catch {
                    errors.withLock { $0[destination.id] = "\(error)" }
                    report.retries += 1
                    delay = backoff.delay(after: delay)
                    logger.notice(
                        "delivery failed; retrying",
                        metadata: [
                            "destination": "\(destination.id)", "retry": "\(report.retries)", "error": "\(error)",
                        ]
                    )
                    try? await Task.sleep(for: Backoff.jittered(delay))
                    continue
                }
            }
        }
        report.finishedAt = await engine.currentTime()
        return report
    }

    /// What the connector may ask during a delivery: full exports' member list, its per-activation state.
    func context(_ plan: DeliveryPlan, _ activation: ActivationRecord, _ connector: any Connector) -> DeliveryContext {
        let engine = self.engine
        let changes = plan.outbound
        let mapping = activation.identity == .unspecified ? connector.defaultIdentity : activation.identity
        return DeliveryContext(
            activation: activation,
            runNumber: plan.runNumber,
            currentMembers: {
                // Full exports: what was added before, with this delivery's changes applied.
                var current = try await engine.deliveredMembers(activation: activation.id).compactMap { member in
                    (member.identity ?? MemberMapping.identity(of: member.record, mapping)).map { identity in
                        OutboundMember(
                            entityType: member.entityType,
                            cluster: member.cluster,
                            add: true,
                            version: member.version,
                            identity: identity,
                            attributes: MemberMapping.attributes(activation.attributes, of: member.record),
                            domain: MemberMapping.domain(of: member.record)
                        )
                    }
                }
                let changed = Set(changes.map(\.cluster))
                current.removeAll { changed.contains($0.cluster) }
                return (current + changes.filter(\.add)).sorted { $0.cluster < $1.cluster }
            },
            loadState: { key in try await engine.connectorState(activation: activation.id, key: key) },
            saveState: { key, value in
                try await engine.setConnectorState(activation: activation.id, key: key, value: value)
            }
        )
    }

    static func name(of mapping: Cdp_Destination_V1_IdentityMapping, _ entity: Cdp_Model_V1_EntityType) -> String {
        if entity == .account { return "account name" }
        switch mapping {
        case .crmID: return "CRM id"
        case .hashedEmail: return "email (to hash)"
        default: return "email"
        }
    }
}

/// A delivery decided before it starts and saved, so that a crash repeats exactly it.
struct DeliveryPlan: Codable, Sendable {
    var activation: String
    /// The run's start in milliseconds since 1970, or one above the destination's previous run if that
    /// is not below it (file names, webhook ids: unique per destination).
    var runNumber: Int
    var startedAt: Date
    /// The queue rows the delivery takes.
    var taken: [SettledMember]
    /// What is sent: removals and adds.
    var outbound: [OutboundMember] = []
    /// Members already so at the destination: settled without sending.
    var unchanged: [SettledMember] = []
    /// Members settled once the sends succeed (each unless the destination refuses it).
    var sent: [SettledMember] = []
    /// Members that cannot be sent (no identity to send).
    var failed: [MemberFailure] = []
    /// Opted-out persons kept out.
    var suppressed = 0
}

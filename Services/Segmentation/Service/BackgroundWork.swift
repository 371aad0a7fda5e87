import CDPProto
import Foundation
import Logging
import RPCCore
import SegmentationEvaluation
import SegmentationStore
import ServiceLifecycle
import SwiftProtobuf
import Synchronization

/// Runs batch evaluation jobs one after another: each scans this replica's partition of profile's
/// views, evaluates them in chunks, commits memberships and transitions per chunk, saves its progress,
/// and at the end lets the entities profile no longer has exit.
public final class EvaluationJobs: Service, Sendable {
    private let engine: SegmentationEngine
    private let source: any ViewSource
    private let partition: Int
    private let partitions: Int
    private let logger: Logger
    private let changed: @Sendable () -> Void
    private let queue: AsyncStream<Cdp_Segmentation_V1_EvaluationJob>
    private let continuation: AsyncStream<Cdp_Segmentation_V1_EvaluationJob>.Continuation

    /// Creates the runner for one partition (`partition` of `partitions`, counting from 0).
    public init(
        engine: SegmentationEngine,
        source: any ViewSource,
        partition: Int = 0,
        partitions: Int = 1,
        logger: Logger,
        changed: @escaping @Sendable () -> Void = {}
    ) {
        self.engine = engine
        self.source = source
        self.partition = partition
        self.partitions = partitions
        self.logger = logger
        self.changed = changed
        (queue, continuation) = AsyncStream.makeStream()
    }

    /// The partition this replica evaluates.
    public var assignment: (partition: Int, partitions: Int) { (partition, partitions) }

    /// Queues a job saved as running.
    public func submit(_ job: Cdp_Segmentation_V1_EvaluationJob) { continuation.yield(job) }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            for await job in self.queue {
                await self.execute(job)
            }
        }
    }

    /// Runs one job to its end, recording success or failure in the job.
    public func execute(_ job: Cdp_Segmentation_V1_EvaluationJob) async {
        let progress = Mutex(job)
        let seen = Mutex(Set<UInt64>())
        let asOf = job.asOf.date
        // Streaming views taken from now on are newer than what the scan may read.
        let started = job.hasStartedAt ? job.startedAt.date : Date()
        do {
            for entityType in [Cdp_Model_V1_EntityType.person, .account] {
                let ids = try await engine.batchSegments(job.segmentIds, of: entityType)
                guard !ids.isEmpty else { continue }
                seen.withLock { $0.removeAll() }
                try await source.scan(entityType, partition: partition, partitions: partitions, asOf: asOf) {
                    views in
                    let transitions = try await self.engine.evaluateBatch(
                        views,
                        segments: ids,
                        asOf: asOf,
                        started: started
                    )
                    seen.withLock { seen in for view in views { seen.insert(view.cluster) } }
                    let snapshot = progress.withLock { job in
                        job.evaluated += UInt64(views.count)
                        job.realized += UInt64(transitions.realized)
                        job.exited += UInt64(transitions.exited)
                        return job
                    }
                    try await self.engine.save(snapshot)
                    if transitions.announced { self.changed() }
                }
                let exits = try await engine.exitUnseen(
                    segments: ids,
                    seen: seen.withLock { $0 },
                    partition: partition,
                    partitions: partitions,
                    started: started
                )
                progress.withLock { $0.exited += UInt64(exits.exited) }
                if exits.exited > 0 { changed() }
            }
            var finished = progress.withLock { $0 }
            finished.state = .succeeded
            finished.finishedAt = Google_Protobuf_Timestamp(date: await engine.currentTime())
            try await engine.save(finished)
            logger.info(
                "evaluation finished",
                metadata: [
                    "job": "\(job.id)", "evaluated": "\(finished.evaluated)", "realized": "\(finished.realized)",
                    "exited": "\(finished.exited)",
                ]
            )
        } catch {
            var failed = progress.withLock { $0 }
            failed.state = .failed
            failed.error = "\(error)"
            failed.finishedAt = Google_Protobuf_Timestamp(date: await engine.currentTime())
            do {
                try await engine.save(failed)
            } catch {
                logger.error("cannot record the failed job", metadata: ["job": "\(job.id)", "error": "\(error)"])
            }
            logger.error("evaluation failed", metadata: ["job": "\(job.id)", "error": "\(error)"])
        }
    }
}

/// Re-evaluates stored views when their time-dependent memberships can expire or begin (an event
/// leaving its window), so an audience shrinks on time rather than at the next batch run.
public final class RecheckScheduler: Service, Sendable {
    private let engine: SegmentationEngine
    private let interval: Duration
    private let logger: Logger
    private let changed: @Sendable () -> Void

    /// Creates a scheduler that looks for due re-checks every `interval`.
    public init(
        engine: SegmentationEngine,
        interval: Duration = .seconds(1),
        logger: Logger,
        changed: @escaping @Sendable () -> Void = {}
    ) {
        self.engine = engine
        self.interval = interval
        self.logger = logger
        self.changed = changed
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    let (checked, transitions) = try await self.engine.runDueRechecks()
                    if transitions.announced { self.changed() }
                    if checked > 0 { continue }
                } catch {
                    self.logger.error("time re-check failed", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: self.interval)
            }
        }
    }
}

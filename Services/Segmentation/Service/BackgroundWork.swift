import CDPProto
import Foundation
import Logging
import RPCCore
import SegmentationEvaluation
import SegmentationStore
import ServiceLifecycle
import SwiftProtobuf

/// Runs batch evaluation jobs one after another: each evaluates this replica's partition of the
/// state's persons and accounts in chunks, commits memberships and transitions per chunk, saves its
/// progress, and at the end lets the entities the state no longer has exit.
public final class EvaluationJobs: Service, Sendable {
    private let engine: SegmentationEngine
    private let partition: Int
    private let chunkSize: Int
    private let partitions: Int
    private let logger: Logger
    private let changed: @Sendable () -> Void
    private let queue: AsyncStream<Cdp_Segmentation_V1_EvaluationJob>
    private let continuation: AsyncStream<Cdp_Segmentation_V1_EvaluationJob>.Continuation

    /// How often a running job's progress is saved (its end always is).
    static let progressInterval: Duration = .milliseconds(250)

    /// Creates the runner for one partition (`partition` of `partitions`, counting from 0).
    public init(
        engine: SegmentationEngine,
        partition: Int = 0,
        partitions: Int = 1,
        chunkSize: Int = 500,
        logger: Logger,
        changed: @escaping @Sendable () -> Void = {}
    ) {
        self.engine = engine
        self.partition = partition
        self.chunkSize = chunkSize
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

    /// Runs one job to its end, recording success or failure in the job; a cancelled task (the service
    /// shutting down) stops it between two chunks, as failed.
    public func execute(_ job: Cdp_Segmentation_V1_EvaluationJob) async {
        var progress = job
        // A job as of now (its time within a minute of its start, as jobSegments allows streaming
        // segments) evaluates each chunk as of the moment it runs; a job as of the past, as of that time.
        let started = job.hasStartedAt ? job.startedAt.date : job.asOf.date
        let asOf: Date? = abs(job.asOf.date.timeIntervalSince(started)) < 60 ? nil : job.asOf.date
        do {
            for entityType in [Cdp_Model_V1_EntityType.person, .account] {
                let ids = try await engine.batchSegments(job.segmentIds, of: entityType)
                guard !ids.isEmpty else { continue }
                var seen = Set<UInt64>()
                var after: UInt64 = 0
                // While changes stream, chunks last a few milliseconds (SegmentationEngine's
                // defaultChunkTime): the progress shown is saved a few times a second, not after each.
                let clock = ContinuousClock()
                var lastSaved = clock.now
                // In chunks, each its own transaction, so that streaming changes are taken between them;
                // a shutdown stops the job between two chunks (a full-size job takes minutes, and the
                // service must stop within seconds).
                while true {
                    try Task.checkCancellation()
                    let (clusters, transitions) = try await engine.evaluateBatch(
                        entityType,
                        segments: ids,
                        asOf: asOf,
                        partition: partition,
                        partitions: partitions,
                        after: after,
                        limit: chunkSize
                    )
                    // The transitions are those of the chunk before (see evaluateBatch): the last call,
                    // which evaluates nothing, commits the last chunk.
                    progress.realized += UInt64(transitions.realized)
                    progress.exited += UInt64(transitions.exited)
                    if transitions.announced { changed() }
                    guard let last = clusters.last else { break }
                    after = last
                    seen.formUnion(clusters)
                    progress.evaluated += UInt64(clusters.count)
                    if clock.now - lastSaved >= Self.progressInterval {
                        try await engine.save(progress)
                        lastSaved = clock.now
                    }
                }
                let exits = try await engine.exitUnseen(
                    segments: ids,
                    seen: seen,
                    partition: partition,
                    partitions: partitions
                )
                progress.exited += UInt64(exits.exited)
                if exits.exited > 0 { changed() }
            }
            var finished = progress
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
            // What the job evaluated before it stopped is committed.
            do {
                let transitions = try await engine.endBatch()
                progress.realized += UInt64(transitions.realized)
                progress.exited += UInt64(transitions.exited)
                if transitions.announced { changed() }
            } catch {
                logger.error(
                    "cannot commit what the stopped job evaluated",
                    metadata: ["job": "\(job.id)", "error": "\(error)"]
                )
            }
            var failed = progress
            failed.state = .failed
            failed.error =
                error is CancellationError ? SQLiteSegmentationStore.interruptedJobError : "\(error)"
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

/// Re-evaluates entities when their time-dependent memberships can expire or begin (an event
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

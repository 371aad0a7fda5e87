import Logging
import RPCCore
import ServiceLifecycle
import Synchronization

/// Forwards a service's outbox to the next service: takes a chunk of committed work, delivers it,
/// retries with exponential backoff and jitter until the receiver acknowledges, then marks the chunk
/// done; over and over, surviving restarts of either side because the outbox is durable.
///
/// Delivery is at least once: a chunk delivered but not yet marked done when the process dies is
/// delivered again, so receivers must be idempotent. Chunks go out one at a time, in outbox order;
/// unless told otherwise (``Configuration/readsAhead``), the next chunk is read while one is delivered
/// and the one delivered before it is marked done meanwhile, so the receiver waits for neither the
/// sender's read nor its write between two chunks (after a failed attempt, the relay reads again from
/// the outbox's head).
///
/// Runs as a ServiceLifecycle `Service`; a graceful shutdown stops it between attempts.
public final class OutboxRelay<Chunk: Sendable>: Service, Sendable {
    /// How the relay behaves.
    public struct Configuration: Sendable {
        /// The most items per chunk.
        public var chunkSize: Int
        /// The waits between failed attempts.
        public var backoff: Backoff
        /// How long to sleep when the outbox is empty before looking again without being woken.
        public var idlePoll: Duration
        /// Whether the next chunk is read while one is delivered. Off where items not delivered yet can
        /// be withdrawn from the outbox (a chunk read before that would still go out).
        public var readsAhead: Bool

        /// Creates a configuration: chunks of 1,000, backoff from 100 ms to 10 s, a poll every second,
        /// reading ahead.
        public init(
            chunkSize: Int = 1000,
            backoff: Backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(10)),
            idlePoll: Duration = .seconds(1),
            readsAhead: Bool = true
        ) {
            self.chunkSize = chunkSize
            self.backoff = backoff
            self.idlePoll = idlePoll
            self.readsAhead = readsAhead
        }
    }

    /// What the relay is doing, for status endpoints.
    public struct Status: Sendable, Equatable {
        /// The last delivery error, cleared by the next success.
        public var lastError: String?
        /// Failed attempts in a row.
        public var consecutiveFailures: Int
    }

    private let name: String
    private let configuration: Configuration
    private let fetch: @Sendable (Int, Chunk?) async throws -> Chunk?
    private let deliver: @Sendable (Chunk) async throws -> Void
    private let acknowledge: @Sendable (Chunk) async throws -> Void
    private let wakeSignal = WakeSignal()
    private let statusBox = Mutex(Status(lastError: nil, consecutiveFailures: 0))
    private let logger: Logger

    /// Creates a relay.
    ///
    /// - Parameters:
    ///   - name: The relay's name in logs (`ingestion→identity`).
    ///   - fetch: The next chunk of at most the given size, or nil when there is none: from the
    ///     outbox's head when the second argument is nil, else (when reading ahead) the chunk that
    ///     follows that one (being delivered, not yet marked done). Reading must not change what a read
    ///     from the head returns.
    ///   - deliver: Sends a chunk; returns once the receiver acknowledged it, throws otherwise.
    ///   - acknowledge: Marks a delivered chunk done in the outbox.
    public init(
        name: String,
        configuration: Configuration = Configuration(),
        logger: Logger,
        fetch: @escaping @Sendable (Int, Chunk?) async throws -> Chunk?,
        deliver: @escaping @Sendable (Chunk) async throws -> Void,
        acknowledge: @escaping @Sendable (Chunk) async throws -> Void
    ) {
        self.name = name
        self.configuration = configuration
        self.logger = logger
        self.fetch = fetch
        self.deliver = deliver
        self.acknowledge = acknowledge
    }

    /// Tells the relay that new work was committed, so it does not wait for its next poll.
    public func wake() { wakeSignal.signal() }

    /// The relay's current status.
    public var status: Status { statusBox.withLock { $0 } }

    /// Forwards until cancelled or gracefully shut down.
    public func run() async throws {
        logger.info("outbox relay started", metadata: ["relay": "\(name)"])
        await cancelWhenGracefulShutdown {
            await self.forwardUntilCancelled()
        }
        logger.info("outbox relay stopped", metadata: ["relay": "\(name)"])
    }

    private func forwardUntilCancelled() async {
        var delay = Duration.zero
        // The chunk read while the last one was delivered.
        var following: Chunk?
        // Reading ahead, the chunk delivered last is marked done while the next one is delivered, so
        // the receiver does not wait for the sender's write between two chunks either.
        var unacknowledged: Chunk?
        while !Task.isCancelled {
            do {
                let taken: Chunk?
                if let following {
                    taken = following
                } else {
                    // A read from the head must not find the chunk delivered last again.
                    if let delivered = unacknowledged {
                        try await acknowledge(delivered)
                        unacknowledged = nil
                    }
                    taken = try await fetch(configuration.chunkSize, nil)
                }
                following = nil
                guard let chunk = taken else {
                    await wakeSignal.wait(upTo: configuration.idlePoll)
                    continue
                }
                let readsAhead = configuration.readsAhead
                async let next = readsAhead ? fetch(configuration.chunkSize, chunk) : nil
                let delivered = unacknowledged
                async let previous: Void = acknowledge(delivered)
                try await deliver(chunk)
                try await previous
                if readsAhead { unacknowledged = chunk } else { try await acknowledge(chunk) }
                following = try await next
                delay = .zero
                statusBox.withLock { $0 = Status(lastError: nil, consecutiveFailures: 0) }
            } catch {
                // Whether the chunk delivered last was marked done or not, the next read is from the
                // head: a chunk not marked done is delivered again (receivers are idempotent).
                unacknowledged = nil
                if Task.isCancelled { break }
                delay = configuration.backoff.delay(after: delay)
                let failures = statusBox.withLock { status -> Int in
                    status.lastError = "\(error)"
                    status.consecutiveFailures += 1
                    return status.consecutiveFailures
                }
                // The first failure and then every tenth, so a long outage does not flood the log.
                if failures == 1 || failures % 10 == 0 {
                    logger.warning(
                        "outbox delivery failed; retrying",
                        metadata: [
                            "relay": "\(name)", "error": "\(error)", "failures": "\(failures)",
                            "retry.in": "\(delay)",
                        ]
                    )
                }
                do { try await Task.sleep(for: Backoff.jittered(delay)) } catch { break }
            }
        }
        // Stopping: the chunk delivered last is marked done if it can be (else it goes out again).
        try? await acknowledge(unacknowledged)
    }

    private func acknowledge(_ chunk: Chunk?) async throws {
        if let chunk { try await acknowledge(chunk) }
    }
}

import Logging
import RPCCore
import ServiceSupport
import Testing

/// The relay every service forwards its outbox with (here, because this target already links
/// ServiceSupport): over a fake outbox of numbered items.
@Suite("Outbox relay")
struct OutboxRelayTests {
    /// A chunk of the fake outbox: items `first...last`.
    struct Chunk: Sendable, Equatable {
        var first: Int
        var last: Int
    }

    /// An outbox of items 1...count, acknowledged from the head, that fails one delivery on request
    /// and records what it was asked and sent.
    final class FakeOutbox: Sendable {
        struct State {
            var acknowledged = 0
            var delivered: [Chunk] = []
            /// How far the outbox was acknowledged when each chunk was delivered.
            var acknowledgedAtDelivery: [Int] = []
            var readsAhead = 0
            var failing: Int?
        }
        let count: Int
        let state: LockedBox<State>

        init(count: Int, failingFirstDeliveryOf item: Int?) {
            self.count = count
            state = LockedBox(State(failing: item))
        }

        func fetch(_ limit: Int, after: Chunk?) -> Chunk? {
            let first = state.withLock { state in
                if after != nil { state.readsAhead += 1 }
                return (after?.last ?? state.acknowledged) + 1
            }
            return first > count ? nil : Chunk(first: first, last: min(first + limit - 1, count))
        }

        func deliver(_ chunk: Chunk) throws {
            try state.withLock { state in
                if let failing = state.failing, (chunk.first...chunk.last).contains(failing) {
                    state.failing = nil
                    throw RPCError(code: .unavailable, message: "the receiver is restarting")
                }
                state.delivered.append(chunk)
                state.acknowledgedAtDelivery.append(state.acknowledged)
            }
        }

        func acknowledge(_ chunk: Chunk) {
            state.withLock { $0.acknowledged = max($0.acknowledged, chunk.last) }
        }
    }

    /// Run until the outbox is acknowledged to its end.
    static func forward(
        _ outbox: FakeOutbox,
        readsAhead: Bool = true,
        acknowledgementTakes: Duration = .zero
    ) async throws {
        let relay = OutboxRelay<Chunk>(
            name: "test",
            configuration: .init(
                chunkSize: 3,
                backoff: Backoff(initial: .milliseconds(1), maximum: .milliseconds(5)),
                idlePoll: .milliseconds(5),
                readsAhead: readsAhead
            ),
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
            fetch: { outbox.fetch($0, after: $1) },
            deliver: { try outbox.deliver($0) },
            acknowledge: {
                if acknowledgementTakes > .zero { try await Task.sleep(for: acknowledgementTakes) }
                outbox.acknowledge($0)
            }
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await relay.run() }
            while outbox.state.value.acknowledged < outbox.count { try await Task.sleep(for: .milliseconds(2)) }
            group.cancelAll()
        }
    }

    /// Chunks go out in order, each once, the next read while the one before is delivered.
    @Test func chunksGoOutInOrderWhileTheNextIsReadAhead() async throws {
        let outbox = FakeOutbox(count: 10, failingFirstDeliveryOf: nil)
        try await Self.forward(outbox)
        let state = outbox.state.value
        #expect(
            state.delivered == [
                Chunk(first: 1, last: 3), .init(first: 4, last: 6), .init(first: 7, last: 9),
                .init(first: 10, last: 10),
            ]
        )
        #expect(state.readsAhead >= 4)
    }

    /// Reading ahead, a chunk is delivered while the one before it is still being marked done: the
    /// receiver does not wait for the sender's write. Each is marked done before the outbox is read
    /// from its head again.
    @Test func theNextChunkIsDeliveredWhileTheOneBeforeIsMarkedDone() async throws {
        let outbox = FakeOutbox(count: 10, failingFirstDeliveryOf: nil)
        try await Self.forward(outbox, acknowledgementTakes: .milliseconds(50))
        let state = outbox.state.value
        #expect(state.delivered.map(\.first) == [1, 4, 7, 10])
        #expect(state.acknowledgedAtDelivery == [0, 0, 3, 6])
        #expect(state.acknowledged == 10)
    }

    /// After a failed delivery the chunk read ahead is dropped: the relay reads again from the head and
    /// delivers the failed chunk before anything after it.
    @Test func aFailedDeliveryStartsAgainFromTheHead() async throws {
        let outbox = FakeOutbox(count: 10, failingFirstDeliveryOf: 5)
        try await Self.forward(outbox)
        #expect(outbox.state.value.delivered.map(\.first) == [1, 4, 7, 10])
    }

    /// Without reading ahead (ingestion's relay: an erasure withdraws records not forwarded yet), every
    /// chunk is read from the head once the one before is acknowledged.
    @Test func withoutReadingAheadEveryChunkIsReadFromTheHead() async throws {
        let outbox = FakeOutbox(count: 10, failingFirstDeliveryOf: nil)
        try await Self.forward(outbox, readsAhead: false)
        let state = outbox.state.value
        #expect(state.delivered.map(\.first) == [1, 4, 7, 10] && state.readsAhead == 0)
    }
}

import Dispatch

/// Maps `items` in contiguous slices, one per worker of `workers`, run at once on the cores there are
/// (the calling thread among them), and returns the non-nil results in the order of `items`: a chunk of
/// a batch job on every core, within one synchronous turn of an actor.
///
/// `transform` runs on several threads at once, each with its own worker: it may read what the
/// workers share only while nobody writes it, and may write only its worker.
///
/// - Throws: the error of the first slice (in the order of `items`) that failed.
func slicedMap<Item, Worker, Result>(
    _ items: [Item],
    workers: [Worker],
    _ transform: @escaping (Item, Worker) throws -> Result?
) throws -> [Result] {
    precondition(!workers.isEmpty, "at least one worker")
    guard min(workers.count, items.count) > 1 else { return try items.compactMap { try transform($0, workers[0]) } }
    let slices = Slices(items, workers: workers, transform)
    DispatchQueue.concurrentPerform(iterations: slices.count) { slices.map($0) }
    return try slices.results()
}

/// One ``slicedMap(_:workers:_:)``: what its threads share, passed to them unchecked (its contract
/// keeps that safe), and each slice's outcome, written by the slice's thread alone.
private final class Slices<Item, Worker, Result>: @unchecked Sendable {
    let items: [Item]
    let workers: [Worker]
    let transform: (Item, Worker) throws -> Result?
    let count: Int
    private let outcomes: UnsafeMutableBufferPointer<Swift.Result<[Result], any Error>>

    init(_ items: [Item], workers: [Worker], _ transform: @escaping (Item, Worker) throws -> Result?) {
        self.items = items
        self.workers = workers
        self.transform = transform
        count = min(workers.count, items.count)
        outcomes = .allocate(capacity: count)
        outcomes.initialize(repeating: .success([]))
    }

    deinit {
        _ = outcomes.deinitialize()
        outcomes.deallocate()
    }

    /// Maps slice `slice` (on whichever thread calls).
    func map(_ slice: Int) {
        let start = items.count * slice / count
        let end = items.count * (slice + 1) / count
        let worker = workers[slice]
        outcomes[slice] = Swift.Result { try items[start..<end].compactMap { try transform($0, worker) } }
    }

    /// Every slice's results, in order, once all are mapped.
    func results() throws -> [Result] {
        var results: [Result] = []
        results.reserveCapacity(items.count)
        for outcome in outcomes { results.append(contentsOf: try outcome.get()) }
        return results
    }
}

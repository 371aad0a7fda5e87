import Dispatch
import RPCCore

/// Runs `background` on `queue` while the calling thread runs `foreground`, and returns both results
/// once both are done: work on two cores within one synchronous turn of an actor, so that nothing
/// outlives the call and no other turn runs in between. Without `background`, runs `foreground` alone.
///
/// - Throws: the background's error if it failed (after the foreground finished), else the
///   foreground's.
func overlapping<Background: Sendable, Foreground>(
    _ background: (@Sendable () throws -> Background)?,
    on queue: DispatchQueue,
    with foreground: () throws -> Foreground
) throws -> (background: Background?, foreground: Foreground) {
    guard let background else { return (nil, try foreground()) }
    let outcome = LockedBox<Result<Background, any Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    queue.async {
        let result = Result<Background, any Error> { try background() }
        outcome.withLock { $0 = result }
        done.signal()
    }
    // The background work must end before this returns, whatever the foreground did.
    let foregroundResult = Result<Foreground, any Error> { try foreground() }
    done.wait()
    let backgroundResult = try outcome.value!.get()
    return (backgroundResult, try foregroundResult.get())
}

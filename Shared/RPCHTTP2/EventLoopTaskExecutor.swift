import NIOCore

/// Runs tasks on a NIO event loop, so that a call's handler and its connection share one thread.
///
/// A handler started with this executor as its preference talks to its connection (reading
/// requests, writing responses) without crossing threads; on a small machine that is most of a
/// short call's cost. The flip side: a handler that computes for long holds up the other
/// connections of its event loop, so CPU-heavy handlers should hop off it (for instance by
/// awaiting work in a `Task` without this preference).
final class EventLoopTaskExecutor: TaskExecutor {
    private let eventLoop: any EventLoop

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        self.eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}

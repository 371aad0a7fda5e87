import Synchronization

/// Keeps a client within an API's limits: at most `calls` calls started in any `window`, and at most
/// `concurrency` in flight. Marketo counts both per instance, so every destination of one instance in
/// this process shares one limiter (``shared(key:calls:window:concurrency:)``).
public actor CallLimiter {
    private let calls: Int
    private let window: Duration
    private let concurrency: Int
    private let clock = ContinuousClock()
    /// When each call of the current window started, oldest first.
    private var started: [ContinuousClock.Instant] = []
    private var inFlight = 0

    private static let registry = Mutex<[String: CallLimiter]>([:])

    /// A limiter.
    public init(calls: Int, window: Duration, concurrency: Int) {
        self.calls = max(1, calls)
        self.window = window
        self.concurrency = max(1, concurrency)
    }

    /// The limiter of `key` (e.g. an API's base URL), created with these limits on first use.
    public static func shared(key: String, calls: Int, window: Duration, concurrency: Int) -> CallLimiter {
        registry.withLock { limiters in
            if let limiter = limiters[key] { return limiter }
            let limiter = CallLimiter(calls: calls, window: window, concurrency: concurrency)
            limiters[key] = limiter
            return limiter
        }
    }

    /// Runs `call` once the limits allow it.
    public func run<T: Sendable>(_ call: @Sendable () async throws -> T) async throws -> T {
        try await acquire()
        defer { inFlight -= 1 }
        return try await call()
    }

    private func acquire() async throws {
        while true {
            try Task.checkCancellation()
            let now = clock.now
            started.removeAll { $0 + window <= now }
            if inFlight >= concurrency {
                try await Task.sleep(for: .milliseconds(5))
            } else if started.count >= calls, let oldest = started.first {
                try await Task.sleep(until: oldest + window, clock: clock)
            } else {
                started.append(now)
                inFlight += 1
                return
            }
        }
    }
}

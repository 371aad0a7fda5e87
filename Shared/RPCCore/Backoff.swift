/// Exponential backoff: how long to wait before the next attempt after a failure.
///
/// The first wait is `initial`; each further one grows by `multiplier` up to `maximum`. Callers add
/// jitter (``jittered(_:)``) so that many clients do not retry in step.
public struct Backoff: Sendable, Equatable {
    /// The first wait.
    public var initial: Duration
    /// The longest wait.
    public var maximum: Duration
    /// The growth per failure.
    public var multiplier: Double

    /// Creates a backoff; the multiplier defaults to gRPC's 1.6.
    public init(initial: Duration, maximum: Duration, multiplier: Double = 1.6) {
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
    }

    /// The wait after `previous` (zero: no failure yet).
    public func delay(after previous: Duration) -> Duration {
        previous == .zero ? initial : min(maximum, previous * multiplier)
    }

    /// `delay` with ±20 % random jitter.
    public static func jittered(_ delay: Duration) -> Duration {
        delay * Double.random(in: 0.8...1.2)
    }
}

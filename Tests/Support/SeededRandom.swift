import BenchmarkSupport

/// The randomized tests' generator: the benchmarks' SplitMix64, seeded, so that a failing run can be
/// replayed.
public typealias SeededRandom = SplitMix64

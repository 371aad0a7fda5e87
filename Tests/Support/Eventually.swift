import Testing

/// Polls `condition` every 20 ms until it holds; records an issue at the caller and throws after
/// `timeout`.
public func eventually(
    timeout: Duration = .seconds(10),
    _ condition: () async throws -> Bool,
    sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    Issue.record("the condition did not hold within \(timeout)", sourceLocation: sourceLocation)
    throw CancellationError()
}

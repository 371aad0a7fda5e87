import Foundation
import RPCCore

/// The standard `grpc.health.v1.Health` service.
///
/// The overall server (service name `""`) is `SERVING` from the start; other services report what
/// ``setStatus(_:for:)`` last said, or `SERVICE_UNKNOWN`. `Watch` streams every change. `Check` answers
/// with the serving process's id in the response metadata (``processIDKey``), so that a supervisor
/// can tell its own child from another process holding the port.
public final class HealthService: Grpc_Health_V1_Health.ServiceProtocol {
    /// The response metadata key of the serving process's id.
    public static let processIDKey = "cdp-pid"

    /// A service's health.
    public typealias ServingStatus = Grpc_Health_V1_HealthCheckResponse.ServingStatus

    private struct State: Sendable {
        var statuses: [String: ServingStatus] = ["": .serving]
        var watchers: [String: [Int: AsyncStream<ServingStatus>.Continuation]] = [:]
        var nextWatcher = 0
    }

    private let state = LockedBox(State())

    /// Creates the service with the server reported as serving.
    public init() {}

    /// Sets a service's status (`""` is the server as a whole) and notifies watchers.
    public func setStatus(_ status: ServingStatus, for service: String) {
        let watchers = self.state.withLock { state in
            state.statuses[service] = status
            return Array((state.watchers[service] ?? [:]).values)
        }
        for watcher in watchers { watcher.yield(status) }
    }

    public func check(
        request: Grpc_Health_V1_HealthCheckRequest,
        context: ServerContext
    ) async throws
        -> Grpc_Health_V1_HealthCheckResponse
    {
        guard let status = self.state.value.statuses[request.service] else {
            throw RPCError(code: .notFound, message: "Unknown service: \(request.service)")
        }
        context.addInitialMetadata(Metadata([(Self.processIDKey, "\(ProcessInfo.processInfo.processIdentifier)")]))
        var response = Grpc_Health_V1_HealthCheckResponse()
        response.status = status
        return response
    }

    public func watch(
        request: Grpc_Health_V1_HealthCheckRequest,
        responses: RPCWriter<Grpc_Health_V1_HealthCheckResponse>,
        context: ServerContext
    ) async throws {
        let (updates, continuation) = AsyncStream<ServingStatus>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let service = request.service
        let id = self.state.withLock { state -> Int in
            let id = state.nextWatcher
            state.nextWatcher += 1
            state.watchers[service, default: [:]][id] = continuation
            continuation.yield(state.statuses[service] ?? .serviceUnknown)
            return id
        }
        defer { _ = self.state.withLock { $0.watchers[service]?.removeValue(forKey: id) } }
        // Only changes are sent: a client sees the current status, then each new one.
        var last: ServingStatus?
        for await status in updates where status != last {
            last = status
            var response = Grpc_Health_V1_HealthCheckResponse()
            response.status = status
            try await responses.write(response)
        }
    }
}

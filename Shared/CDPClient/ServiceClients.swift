import CDPProto
import RPCCore
import RPCHTTP2
import RPCServices

/// Typed clients of the five services over one HTTP/2 connection each, opened on first use.
///
/// Calls carry `authorization: Bearer <token>` when a token is given (the services' `CDP_TOKEN`).
public final class ServiceClients: Sendable {
    /// Where the services are.
    public let endpoints: ServiceEndpoints
    private let metadata: Metadata
    private let transports: [ServiceName: HTTP2ClientTransport]

    /// Clients of the services at `endpoints`; nothing connects until the first call.
    public init(endpoints: ServiceEndpoints, token: String?, connectTimeout: Duration = .seconds(5)) {
        self.endpoints = endpoints
        var metadata = Metadata()
        if let token, !token.isEmpty { metadata.add("authorization", "Bearer \(token)") }
        self.metadata = metadata
        var transports: [ServiceName: HTTP2ClientTransport] = [:]
        for service in ServiceName.allCases {
            let address = endpoints[service].address
            transports[service] = HTTP2ClientTransport(
                configuration: .init(
                    host: address.host,
                    port: address.port,
                    maxReceiveMessageBytes: 64 * 1024 * 1024,
                    connectTimeout: connectTimeout,
                    // A command-line client retries by polling, not by backing off inside the transport.
                    initialBackoff: .milliseconds(50),
                    maxBackoff: .milliseconds(200)
                )
            )
        }
        self.transports = transports
    }

    /// The untyped client of `service`.
    public func rpc(_ service: ServiceName) -> RPCClient {
        RPCClient(transport: transports[service]!, defaultMetadata: metadata)
    }

    /// The ingestion service: sources, batches, record streams.
    public var ingestion: Cdp_Ingestion_V1_Ingestion.Client { .init(rpc(.ingestion)) }
    /// The identity service: resolution, clusters, conflicts.
    public var identity: Cdp_Identity_V1_Identity.Client { .init(rpc(.identity)) }
    /// The profile service: person and account views, privacy deletes.
    public var profile: Cdp_Profile_V1_Profile.Client { .init(rpc(.profile)) }
    /// The segmentation service: segments, evaluations, members, explanations.
    public var segmentation: Cdp_Segmentation_V1_Segmentation.Client { .init(rpc(.segmentation)) }
    /// The destination service: destinations, activations, deliveries.
    public var destination: Cdp_Destination_V1_Destination.Client { .init(rpc(.destination)) }

    /// The standard health service of `service`.
    public func health(_ service: ServiceName) -> Grpc_Health_V1_Health.Client { .init(rpc(service)) }

    /// Closes every connection.
    public func close() async {
        for transport in transports.values { await transport.close() }
    }
}

/// A failed call to one of the services, worded for a person: which service, at which address (and
/// where that address came from), and what it answered.
public struct ServiceCallError: Error, CustomStringConvertible {
    /// The service called.
    public var service: ServiceName
    /// Its endpoint.
    public var endpoint: ServiceEndpoints.Endpoint
    /// The status the call ended with.
    public var code: Status.Code
    /// The service's message, or why it could not be reached.
    public var message: String

    /// Wraps `error`, thrown by a call to `service`.
    public init(_ error: any Error, service: ServiceName, endpoint: ServiceEndpoints.Endpoint) {
        self.service = service
        self.endpoint = endpoint
        if let rpc = error as? RPCError {
            self.code = rpc.code
            self.message = rpc.message
        } else {
            self.code = .unknown
            self.message = "\(error)"
        }
    }

    /// Whether the service could not be reached at all (nothing listening, connection lost).
    public var isUnreachable: Bool { code == .unavailable }

    /// Why the call failed, without naming the service (e.g. `connection refused`).
    public var reason: String { code == .unavailable ? Self.plainReason(message) : "\(code): \(message)" }

    public var description: String {
        if code == .unavailable {
            return "cannot reach \(service) at \(endpoint.address) (from \(endpoint.origin)): "
                + Self.plainReason(message) + "; is it running? (`cdp up` starts all five)"
        }
        if code == .deadlineExceeded {
            return "\(service) at \(endpoint.address) did not answer in time: \(message)"
        }
        if code == .unauthenticated {
            return "\(service) at \(endpoint.address) refused the call: \(message) (set CDP_TOKEN or --token)"
        }
        return "\(service) (\(endpoint.address)) answered \(code): \(message)"
    }

    /// NIO's connection errors read like `connect(descriptor:addr:size:): Connection refused (errno: 111)`;
    /// keeps the part a person understands.
    static func plainReason(_ message: String) -> String {
        for (needle, plain) in [
            ("Connection refused", "connection refused"),
            ("connectTimeout", "no answer to the connection attempt"),
            ("Network is unreachable", "network unreachable"),
            ("No route to host", "no route to host"),
            ("closing", "the connection was closed"),
            ("connection to the server closed", "the connection closed during the call (the service stopped?)"),
        ] where message.contains(needle) {
            return plain
        }
        if message.contains("NXDOMAIN") || message.contains("resolve") { return "the host name does not resolve" }
        // The description goes on after the reason ("…; is it running?").
        return message.hasSuffix(".") ? String(message.dropLast()) : message
    }
}

extension ServiceClients {
    /// Runs `call` against `service`, turning any failure into a ``ServiceCallError``.
    public func calling<Result: Sendable>(
        _ service: ServiceName,
        _ call: () async throws -> Result
    ) async throws -> Result {
        do {
            return try await call()
        } catch let error as ServiceCallError {
            throw error
        } catch {
            throw ServiceCallError(error, service: service, endpoint: endpoints[service])
        }
    }
}

import ArgumentParser
import CDPClient
import Foundation
import RPCServices

/// `cdp status`: each service's health and backlog.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show each service's health and backlog (what it holds that the next one has not taken yet).",
        discussion: """
            For each service: whether it answers its health check, then what waits in its outbox: ingestion's \
            records for identity, identity's updates for profile, profile's state changes for segmentation, \
            segmentation's membership changes for destination, destination's members for its destinations; \
            the age of the oldest, and the last forwarding error. A service that answers but refuses the \
            token is UNAUTHENTICATED (give --token or $CDP_TOKEN), not DOWN. Then every destination with a \
            backlog or an error, and the batches being received. Exit status 1 if a service is unreachable, \
            refuses the token or is not serving. --json: {"services":[{"name","address","state","healthy",\
            "pending","oldestPendingSeconds","lastError","error"}],"destinations":[{"id","name","pending",\
            "lastError"}],"receivingBatches":[{"id","fileName","source","entity","createdAt"}]}.
            """
    )

    @OptionGroup var client: ClientOptions

    struct ServiceStatus: Encodable {
        var name: String
        var address: String
        /// `serving`, `DOWN` (not reachable), `UNAUTHENTICATED` (refuses the token), `NOT_SERVING`.
        var state: String
        var healthy: Bool
        var pending: UInt64?
        var unit: String
        var oldestPendingSeconds: Double?
        var lastError: String
        var error: String?
    }

    struct DestinationStatus: Encodable {
        var id: String
        var name: String
        var pending: UInt64
        var lastError: String
    }

    struct BatchStatus: Encodable {
        var id: String
        var fileName: String
        var source: String
        var entity: String
        var createdAt: Date
    }

    struct Document: Encodable {
        var services: [ServiceStatus]
        var destinations: [DestinationStatus]
        var receivingBatches: [BatchStatus]
    }

    func run() async throws {
        let document = try await client.withClients { clients in
            var statuses: [ServiceStatus] = []
            for service in ServiceName.allCases {
                var status = ServiceStatus(
                    name: service.rawValue,
                    address: "\(clients.endpoints[service].address)",
                    state: "DOWN",
                    healthy: false,
                    unit: Backlog.unit(of: service),
                    lastError: ""
                )
                do {
                    let health = try await clients.calling(service) {
                        try await clients.health(service).check(.init(), options: client.callOptions)
                    }
                    status.healthy = health.status == .serving
                    status.state = status.healthy ? "serving" : "NOT_SERVING"
                    if !status.healthy { status.error = "health check answered \(health.status)" }
                    let backlog = try await clients.backlog(service, options: client.callOptions)
                    status.pending = backlog.pending
                    status.oldestPendingSeconds = backlog.oldestPending.map { max(0, Date().timeIntervalSince($0)) }
                    status.lastError = backlog.lastError
                } catch let error as ServiceCallError where error.code == .unauthenticated {
                    status.healthy = false
                    status.state = "UNAUTHENTICATED"
                    status.error =
                        "\(service) (\(status.address)) is running but refuses "
                        + ((client.token ?? ProcessInfo.processInfo.environment["CDP_TOKEN"] ?? "").isEmpty
                            ? "calls without a token" : "the token given")
                        + ": give its token with --token or CDP_TOKEN"
                } catch {
                    status.healthy = false
                    status.error = "\(error)"
                }
                statuses.append(status)
            }
            // Every destination that waits or fails, and the uploads under way (best effort: a service
            // that is down is reported above).
            let destinations =
                (try? await clients.calling(.destination) {
                    try await clients.destination.listDestinations(.init(), options: client.callOptions).destinations
                }) ?? []
            let batches =
                (try? await clients.calling(.ingestion) {
                    try await clients.ingestion.listBatches(.with { $0.pageSize = 200 }, options: client.callOptions)
                        .batches
                }) ?? []
            return Document(
                services: statuses,
                destinations: destinations.filter { $0.pending > 0 || !$0.lastError.isEmpty }.map {
                    DestinationStatus(id: $0.id, name: $0.name, pending: $0.pending, lastError: $0.lastError)
                },
                receivingBatches: batches.filter { $0.state == .receiving }.map {
                    BatchStatus(
                        id: $0.batchID,
                        fileName: $0.fileName,
                        source: "\($0.source.type):\($0.source.instance)",
                        entity: $0.entity,
                        createdAt: $0.createdAt.date
                    )
                }
            )
        }
        let statuses = document.services
        if client.json {
            try Output.json(document)
        } else {
            Output.table(
                ["service", "address", "health", "backlog", "oldest", "last error"],
                statuses.map { status in
                    [
                        status.name, status.address, status.state,
                        status.pending.map { "\($0) \(status.unit)" } ?? "-",
                        status.oldestPendingSeconds.map(Format.age) ?? "-",
                        status.lastError.isEmpty ? "-" : status.lastError,
                    ]
                }
            )
            for destination in document.destinations {
                Output.line(
                    "destination \(destination.id) (\(destination.name)): \(destination.pending) members pending"
                        + (destination.lastError.isEmpty ? "" : "; last error: \(destination.lastError)")
                )
            }
            for batch in document.receivingBatches {
                Output.line(
                    "batch \(batch.id) \(batch.fileName) (\(batch.source), \(batch.entity)): being received since "
                        + TimeArgument.format(batch.createdAt)
                )
            }
            for status in statuses { if let error = status.error { Output.error(error) } }
        }
        if statuses.contains(where: { !$0.healthy }) { throw ExitCode.failure }
    }
}

/// `cdp health`: one address's health check, for container health checks and scripts.
struct HealthCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "health",
        abstract: "Check one service's health (grpc.health.v1): exit 0 if it is serving, 1 otherwise.",
        discussion: """
            For container health checks: `cdp health --addr 127.0.0.1:7400`. Without --addr, checks the \
            service named by --service at its usual address (see `cdp --help`).
            """
    )

    @Option(help: "The HOST:PORT to check.")
    var addr: String?

    @Option(
        help: "The service to check when --addr is not given: ingestion, identity, profile, segmentation, destination."
    )
    var service: String = "ingestion"

    @OptionGroup var client: ClientOptions

    func run() async throws {
        guard let name = ServiceName(rawValue: service) else {
            throw CLIError(
                "--service must be one of ingestion, identity, profile, segmentation, destination (got \"\(service)\")"
            )
        }
        var options = client
        if let addr { options.setAddress(addr, of: name) }
        let answer: Grpc_Health_V1_HealthCheckResponse
        do {
            answer = try await options.withClients { clients in
                try await clients.calling(name) {
                    try await clients.health(name).check(.init(), options: options.callOptions)
                }
            }
        } catch let error as ServiceCallError where addr != nil {
            // A probe of one address: name the address, not how `cdp` finds the five services.
            throw CLIError("\(addr!) does not answer its health check: \(error.reason)")
        }
        if client.json {
            struct Document: Encodable {
                var service: String
                var status: String
            }
            try Output.json(Document(service: name.rawValue, status: "\(answer.status)"))
        } else {
            Output.line("\(name): \(answer.status == .serving ? "serving" : "\(answer.status)")")
        }
        if answer.status != .serving { throw ExitCode.failure }
    }
}

extension ClientOptions {
    /// Points `service` at `address`, as its `--<service>-addr` flag would.
    mutating func setAddress(_ address: String?, of service: ServiceName) {
        switch service {
        case .ingestion: ingestionAddress = address
        case .identity: identityAddress = address
        case .profile: profileAddress = address
        case .segmentation: segmentationAddress = address
        case .destination: destinationAddress = address
        }
    }
}

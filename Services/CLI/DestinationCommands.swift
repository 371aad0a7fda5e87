import ArgumentParser
import CDPClient
import CDPProto
import Foundation
import RPCCore

/// `cdp destination create|list`.
struct DestinationCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "destination",
        abstract: "Create and list destinations: Marketo static lists, LinkedIn audiences, webhooks, file exports.",
        discussion: """
            Settings by type, required first, [optional with their defaults] (Services/Destination/README.md):
              marketo:  endpoint, client_id, client_secret, list_id [identity=<endpoint>/identity,
                        calls_per_20s=100, concurrency=10, timeout_seconds=30]
              linkedin: endpoint, access_token, ad_account, source_platform (unless segment_id names an existing
                        segment) [segment_name, segment_id, version=202610, batch_size=500,
                        segment_ready_seconds=5, calls_per_minute=300, timeout_seconds=30]
              webhook:  url, secret [batch_size=100, calls_per_minute=600, timeout_seconds=30,
                        include_opted_out=false]
              file:     directory [format=csv|jsonl, mode=incremental|full]
            Credentials (client_secret, access_token, secret) are stored apart and never shown again.
            """,
        subcommands: [Create.self, List.self, Update.self, Delete.self]
    )

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a destination and print its id.")

        @Option(help: "marketo, linkedin, webhook or file.")
        var type: String

        @Option(help: "A name for people.")
        var name: String

        @Option(name: .customLong("set"), help: "A setting, KEY=VALUE; repeat for each.")
        var settings: [String] = []

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let destinationType: Cdp_Destination_V1_DestinationType
            switch type.lowercased() {
            case "marketo": destinationType = .marketo
            case "linkedin": destinationType = .linkedin
            case "webhook": destinationType = .webhook
            case "file": destinationType = .file
            default: throw CLIError("--type must be marketo, linkedin, webhook or file (got \"\(type)\")")
            }
            let request = try Cdp_Destination_V1_CreateDestinationRequest.with {
                $0.type = destinationType
                $0.name = name
                $0.settings = try Arguments.pairs(settings, option: "--set", example: "directory=./exports")
            }
            let info = try await client.withClients { clients in
                try await clients.calling(.destination) {
                    try await clients.destination.createDestination(request, options: client.callOptions)
                }
            }
            if client.json { try Output.json(info) } else { Output.line(info.id) }
        }
    }

    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change a destination's name or settings; deliveries use them from the next one on.",
            discussion: """
                Settings are checked as at creation. A delivery being retried (say against a wrong URL) is \
                made again with the new settings. --json prints the DestinationInfo.
                """
        )

        @Argument(help: "The destination's id.")
        var id: String

        @Option(help: "A new name.")
        var name: String?

        @Option(name: .customLong("set"), help: "A setting to set, KEY=VALUE; repeat for each.")
        var settings: [String] = []

        @Option(help: "A setting to remove (back to its default); repeat for each.")
        var unset: [String] = []

        @OptionGroup var client: ClientOptions

        func run() async throws {
            guard name != nil || !settings.isEmpty || !unset.isEmpty else {
                throw CLIError("nothing to change: give --name, --set or --unset")
            }
            let request = try Cdp_Destination_V1_UpdateDestinationRequest.with {
                $0.id = id
                if let name { $0.name = name }
                $0.settings = try Arguments.pairs(settings, option: "--set", example: "url=https://hooks.example/cdp")
                $0.unset = unset
            }
            let info = try await client.withClients { clients in
                try await clients.calling(.destination) {
                    try await clients.destination.updateDestination(request, options: client.callOptions)
                }
            }
            if client.json { try Output.json(info) } else { Output.line("updated \(info.id)") }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a destination (refused while it has an active activation).",
            discussion: "What it delivered stays at the destination."
        )

        @Argument(help: "The destination's id.")
        var id: String

        @OptionGroup var client: ClientOptions

        func run() async throws {
            _ = try await client.withClients { clients in
                try await clients.calling(.destination) {
                    try await clients.destination.deleteDestination(.with { $0.id = id }, options: client.callOptions)
                }
            }
            if client.json {
                try Output.json(Cdp_Destination_V1_DeleteDestinationResponse())
            } else {
                Output.line("deleted \(id)")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the destinations with their settings (credentials by name only) and backlog."
        )

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let destinations = try await client.withClients { clients in
                try await clients.calling(.destination) {
                    try await clients.destination.listDestinations(.init(), options: client.callOptions).destinations
                }
            }
            if client.json { return try Output.json("destinations", destinations) }
            Output.table(
                ["id", "type", "name", "pending", "last error", "settings"],
                destinations.map { d in
                    let settings =
                        d.settings.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                        + d.credentials.sorted().map { "\($0)=(set)" }
                    return [
                        d.id, Self.typeName(d.type), d.name, "\(d.pending)", d.lastError.isEmpty ? "-" : d.lastError,
                        settings.joined(separator: " "),
                    ]
                }
            )
        }

        static func typeName(_ type: Cdp_Destination_V1_DestinationType) -> String {
            switch type {
            case .marketo: "marketo"
            case .linkedin: "linkedin"
            case .webhook: "webhook"
            case .file: "file"
            default: "\(type)"
            }
        }
    }
}

/// `cdp activate SEGMENT --destination DEST`.
struct ActivateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "activate",
        abstract: "Send a segment's members to a destination, now and whenever they change; prints the activation id.",
        discussion: """
            The current members are sent first (a backfill), then every entry and exit as segmentation reports \
            it. --identity chooses what identifies a person at the destination (default: the destination's own: \
            email for Marketo and files, hashed-email for LinkedIn). --attribute NAME=FIELD adds a field of the \
            unified person (email, firstName, lastName, jobTitle, country, crmId, score) or account (name, \
            domain, website, industry, country), or a custom attribute as attributes.NAME, under NAME, e.g. \
            --attribute title=jobTitle; another field is refused, naming the valid ones. When a member's \
            identity changes it is removed under the old one and added under the new; when a mapped field \
            changes the member is updated.
            """
    )

    @Argument(help: "The segment's id.")
    var segment: String

    @Option(help: "The destination's id.")
    var destination: String

    @Option(help: "email, hashed-email or crm-id.")
    var identity: String?

    @Option(name: .customLong("attribute"), help: "A field to send, NAME=FIELD; repeat for each.")
    var attributes: [String] = []

    @Flag(help: "Return once the current members were delivered (the backfill), or the destination failed.")
    var wait = false

    @Option(help: "Seconds --wait may take.")
    var waitTimeout: Double = 600

    @OptionGroup var client: ClientOptions

    func run() async throws {
        var mapping = Cdp_Destination_V1_IdentityMapping.unspecified
        switch identity?.lowercased() {
        case nil: break
        case "email": mapping = .email
        case "hashed-email": mapping = .hashedEmail
        case "crm-id": mapping = .crmID
        default: throw CLIError("--identity must be email, hashed-email or crm-id (got \"\(identity!)\")")
        }
        let request = try Cdp_Destination_V1_ActivateRequest.with {
            $0.segmentID = segment
            $0.destinationID = destination
            $0.identity = mapping
            $0.attributes = try Arguments.pairs(attributes, option: "--attribute", example: "title=jobTitle")
        }
        let activation = try await client.withClients { clients in
            // The destination checks the segment exists only through the changes it receives; ask
            // segmentation first so that a mistyped id is refused at once.
            _ = try await clients.calling(.segmentation) {
                try await clients.segmentation.getSegment(.with { $0.id = segment }, options: client.callOptions)
            }
            let activation = try await clients.calling(.destination) {
                try await clients.destination.activate(request, options: client.callOptions)
            }
            if wait { try await Self.waitForBackfill(activation, clients, client, timeout: waitTimeout) }
            return activation
        }
        if client.json { try Output.json(activation) } else { Output.line(activation.id) }
    }

    /// Follows the destination's backlog until it is empty; fails with the destination's last error if
    /// none was delivered for a while, or at the timeout.
    static func waitForBackfill(
        _ activation: Cdp_Destination_V1_Activation,
        _ clients: ServiceClients,
        _ client: ClientOptions,
        timeout: Double
    ) async throws {
        let start = Date()
        defer { Output.endProgress() }
        while true {
            let info = try await clients.calling(.destination) {
                try await clients.destination.listDestinations(.init(), options: client.callOptions).destinations
            }.first { $0.id == activation.destinationID }
            guard let info else { throw CLIError("destination \(activation.destinationID) is gone") }
            if info.pending == 0 { return }
            let waited = Date().timeIntervalSince(start)
            Output.progress(
                "\(activation.id): \(info.pending) members to deliver to \(info.id)"
                    + (info.lastError.isEmpty ? "" : " (last error: \(info.lastError))")
            )
            if waited > timeout {
                throw CLIError(
                    "\(info.pending) members still to deliver to \(info.id) after \(Int(timeout)) s"
                        + (info.lastError.isEmpty ? "" : "; last error: \(info.lastError)")
                        + " (the activation stays; `cdp deliveries \(info.id)` follows it)"
                )
            }
            try await Task.sleep(for: .milliseconds(250))
        }
    }
}

/// `cdp deactivate ACTIVATION`.
struct DeactivateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deactivate",
        abstract: "Stop sending a segment to a destination; what was delivered stays there.",
        discussion: "--json prints the Activation (cdp.destination.v1)."
    )

    @Argument(help: "The activation's id (cdp activations lists them).")
    var activation: String

    @OptionGroup var client: ClientOptions

    func run() async throws {
        let stopped = try await client.withClients { clients in
            try await clients.calling(.destination) {
                try await clients.destination.deactivate(
                    .with { $0.activationID = activation },
                    options: client.callOptions
                )
            }
        }
        if client.json { return try Output.json(stopped) }
        Output.line("deactivated \(stopped.id) (segment \(stopped.segmentID) to \(stopped.destinationID))")
    }
}

/// `cdp activations`.
struct ActivationsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "activations",
        abstract: "List the activations: which segment goes to which destination, with what.",
        discussion: "--json: {\"activations\":[Activation…]} (cdp.destination.v1)."
    )

    @Option(help: "Only this segment's.")
    var segment: String?

    @Option(help: "Only this destination's.")
    var destination: String?

    @OptionGroup var client: ClientOptions

    func run() async throws {
        let activations = try await client.withClients { clients in
            try await clients.activations(segment: segment, destination: destination, options: client.callOptions)
        }
        if client.json { return try Output.json("activations", activations) }
        Output.table(
            ["id", "segment", "destination", "state", "identity", "attributes"],
            activations.map { a in
                [
                    a.id, a.segmentID, a.destinationID, a.active ? "active" : "deactivated",
                    a.identity == .unspecified
                        ? "default"
                        : "\(a.identity)".replacingOccurrences(of: "IDENTITY_MAPPING_", with: "").lowercased(),
                    a.attributes.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "),
                ]
            }
        )
    }
}

extension ServiceClients {
    /// Activations, optionally of one segment or destination.
    func activations(
        segment: String? = nil,
        destination: String? = nil,
        options: CallOptions
    ) async throws -> [Cdp_Destination_V1_Activation] {
        try await calling(.destination) {
            try await self.destination.listActivations(
                .with {
                    $0.segmentID = segment ?? ""
                    $0.destinationID = destination ?? ""
                },
                options: options
            ).activations
        }
    }
}

/// `cdp deliveries DEST`.
struct DeliveriesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deliveries",
        abstract:
            "List a destination's deliveries, newest first: members added, removed, updated, suppressed, failed.",
        discussion: "--json: {\"deliveries\":[Delivery…]} (cdp.destination.v1)."
    )

    @Argument(help: "The destination's id.")
    var destination: String

    @Option(help: "At most this many deliveries.")
    var limit: Int = 100

    @OptionGroup var client: ClientOptions

    func run() async throws {
        guard limit > 0 else { throw CLIError("--limit must be positive (got \(limit))") }
        let (deliveries, backlog) = try await client.withClients { clients in
            let backlog = try await clients.calling(.destination) {
                try await clients.destination.listDestinations(.init(), options: client.callOptions).destinations
            }.first { $0.id == destination }
            var deliveries: [Cdp_Destination_V1_Delivery] = []
            var token = ""
            repeat {
                let page = try await clients.calling(.destination) {
                    try await clients.destination.listDeliveries(
                        .with {
                            $0.destinationID = destination
                            $0.pageSize = UInt32(min(limit - deliveries.count, 500))
                            $0.pageToken = token
                        },
                        options: client.callOptions
                    )
                }
                deliveries += page.deliveries
                token = page.nextPageToken
            } while !token.isEmpty && deliveries.count < limit
            return (Array(deliveries.prefix(limit)), backlog)
        }
        if client.json { return try Output.json("deliveries", deliveries) }
        if let info = backlog {
            // What has not been delivered yet, and why, even before the first delivery.
            let oldest =
                info.hasOldestPending ? ", the oldest since \(TimeArgument.format(info.oldestPending.date))" : ""
            Output.note("\(info.id): \(info.pending) members pending\(oldest)")
            if !info.lastError.isEmpty { Output.note("\(info.id): last error: \(info.lastError)") }
        }
        if deliveries.isEmpty {
            Output.note("no delivery yet")
            return
        }
        Output.table(
            ["delivery", "activation", "finished", "added", "removed", "updated", "suppressed", "failed", "retries"],
            deliveries.map {
                [
                    $0.id, $0.activationID, $0.hasFinishedAt ? TimeArgument.format($0.finishedAt.date) : "-",
                    "\($0.added)", "\($0.removed)", "\($0.updated)", "\($0.suppressed)", "\($0.failed)",
                    "\($0.retries)",
                ]
            }
        )
        for delivery in deliveries {
            for error in delivery.errors {
                Output.line("  \(delivery.id): member \(error.clusterID): \(error.message)")
            }
        }
    }
}

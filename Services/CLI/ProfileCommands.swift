import ArgumentParser
import CDPClient
import CDPProto
import Foundation

/// `cdp profile get`: a person's unified view.
struct ProfileCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "profile",
        abstract: "Look up unified person profiles.",
        subcommands: [Get.self]
    )

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Show a person's unified view: the merged person, accounts, opportunities, campaigns, lists, events.",
            discussion: "--json prints the PersonView message (cdp.profile.v1) as protobuf JSON."
        )

        @Option(help: "An identity of the person, NAMESPACE:VALUE, e.g. email:p2@townsend.com.")
        var identity: String

        @Option(help: "The time the event window ends (RFC 3339 or a date; default: now).")
        var asOf: String?

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let request = try Cdp_Profile_V1_GetEntityRequest.with {
                $0.identity = try Arguments.identity(identity)
                if let asOf { $0.asOf = try Arguments.time(asOf).timestamp }
            }
            let view = try await client.withClients { clients in
                try await clients.calling(.profile) {
                    try await clients.profile.getPerson(request, options: client.callOptions)
                }
            }
            if client.json { return try Output.json(view) }
            let person = view.person
            Output.line("person \(person.clusterID): \(Describe.person(person.record))")
            Output.line("  fragments: \(person.fragmentKeys.joined(separator: ", "))")
            for account in view.accounts {
                Output.line("  account \(account.clusterID): \(Describe.account(account.record))")
            }
            for opportunity in view.opportunities {
                Output.line("  opportunity \(opportunity.clusterID): \(Describe.opportunity(opportunity.record))")
            }
            if !view.campaigns.isEmpty { Output.line("  campaigns: \(view.campaigns.count)") }
            if !view.lists.isEmpty { Output.line("  marketing lists: \(view.lists.count)") }
            // Views hold events newest first: the latest ten are the first ten.
            let shown = 10
            Output.line(
                "  events: \(view.events.count)"
                    + (view.events.count > shown ? " (the latest \(shown) below; --json for all)" : "")
            )
            for event in view.events.prefix(shown) {
                let e = event.event
                Output.line("    \(TimeArgument.format(e.timestamp.date))  \(e.eventType)  \(e.url)")
            }
        }
    }
}

/// `cdp account get`: an account's unified view.
struct AccountCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "account",
        abstract: "Look up unified account profiles.",
        subcommands: [Get.self]
    )

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show an account's unified view: the merged account, its opportunities, persons and totals.",
            discussion: "--json prints the AccountView message (cdp.profile.v1) as protobuf JSON."
        )

        @Option(help: "An identity of the account, NAMESPACE:VALUE, e.g. sourceKey:0015g00000Twn01AAA@mkto-1.Marketo.")
        var identity: String

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let request = try Cdp_Profile_V1_GetEntityRequest.with { $0.identity = try Arguments.identity(identity) }
            let view = try await client.withClients { clients in
                try await clients.calling(.profile) {
                    try await clients.profile.getAccount(request, options: client.callOptions)
                }
            }
            if client.json { return try Output.json(view) }
            Output.line("account \(view.account.clusterID): \(Describe.account(view.account.record))")
            Output.line("  fragments: \(view.account.fragmentKeys.joined(separator: ", "))")
            for opportunity in view.opportunities {
                Output.line("  opportunity \(opportunity.clusterID): \(Describe.opportunity(opportunity.record))")
            }
            for person in view.persons {
                Output.line("  person \(person.clusterID): \(Describe.person(person.record))")
            }
            let t = view.totals
            Output.line(
                "  totals: \(t.opportunities) opportunities, \(t.wonOpportunities) won for \(Format.number(t.wonAmount)), "
                    + "open \(Format.number(t.openAmount)), \(t.persons) persons"
            )
        }
    }
}

/// `cdp privacy delete|status|allow`: a person's right to erasure.
struct PrivacyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "privacy",
        abstract: "Privacy requests: erase a person everywhere, follow a request, let a person's records in again.",
        subcommands: [Delete.self, Status.self, Allow.self]
    )

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Erase a person from every service, and refuse their records from then on.",
            discussion: """
                Starts a privacy request (pr-N) that profile drives through the services: ingestion keeps \
                the person's identities as hashes and refuses their records from now on (until `cdp privacy \
                allow`) and deletes their raw records; identity drops their identities; profile deletes \
                their fragments and events; segmentation lets them exit every segment and forgets them; \
                destinations remove them wherever they were delivered. Once the destinations removed them, \
                each service clears the log of the deleted data, and the request is done. Running it again \
                for an erased person answers the request that erased them. With --wait, returns when the \
                request is done. --json prints the DeletePersonResponse.
                """
        )

        @Option(help: "An identity of the person, NAMESPACE:VALUE, e.g. email:p2@townsend.com.")
        var identity: String

        @Flag(help: "Wait until the request is done (the destinations removed the person, the logs are cleared).")
        var wait = false

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let request = try Cdp_Profile_V1_GetEntityRequest.with { $0.identity = try Arguments.identity(identity) }
            let (response, final) = try await client.withClients { clients in
                let response = try await clients.calling(.profile) {
                    try await clients.profile.deletePerson(request, options: client.longCallOptions)
                }
                guard wait else { return (response, response.request) }
                return (response, try await PrivacyCommand.follow(response.request.id, clients, client))
            }
            if client.json {
                var shown = response
                shown.request = final
                return try Output.json(shown)
            }
            if response.alreadyErased {
                Output.note("\(identity) was erased by \(final.id) (nothing more to delete)")
            } else {
                Output.note(
                    "erased \(response.fragmentsDeleted) fragments and \(response.eventsDeleted) events in profile; "
                        + "\(response.identities.count) identities removed"
                )
            }
            PrivacyCommand.print(final)
            if final.state != .done && !wait {
                Output.note("`cdp privacy status \(final.id)` follows it, or give --wait")
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a privacy request's progress per service (all requests without an id).",
            discussion: "--json: the PrivacyRequest, or {\"requests\":[PrivacyRequest…]} (cdp.privacy.v1)."
        )

        @Argument(help: "The request's id, pr-N.")
        var id: String?

        @Flag(help: "Wait until the request is done.")
        var wait = false

        @OptionGroup var client: ClientOptions

        func validate() throws {
            if wait && id == nil { throw ValidationError("--wait needs a request id") }
        }

        func run() async throws {
            if let id {
                let request = try await client.withClients { clients in
                    if wait { return try await PrivacyCommand.follow(id, clients, client) }
                    return try await clients.calling(.profile) {
                        try await clients.profile.getPrivacyRequest(.with { $0.id = id }, options: client.callOptions)
                    }
                }
                if client.json { return try Output.json(request) }
                PrivacyCommand.print(request)
                return
            }
            let requests = try await client.withClients { clients in
                try await clients.calling(.profile) {
                    try await clients.profile.listPrivacyRequests(.init(), options: client.callOptions).requests
                }
            }
            if client.json { return try Output.json("requests", requests) }
            Output.table(
                ["request", "state", "created", "finished", "identities", "last error"],
                requests.map {
                    [
                        $0.id, PrivacyCommand.state($0.state), TimeArgument.format($0.createdAt.date),
                        $0.hasFinishedAt ? TimeArgument.format($0.finishedAt.date) : "-", "\($0.identities)",
                        $0.lastError.isEmpty ? "-" : $0.lastError,
                    ]
                }
            )
        }
    }

    struct Allow: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Let the records of an erased person in again (lifts the request that erased them).",
            discussion: """
                Ingestion refuses the records of persons erased by `cdp privacy delete`. This lifts every \
                request that erased a person with this identity (all of that person's identities are \
                allowed again). Nothing erased comes back: the person's next records start afresh.
                """
        )

        @Option(help: "An identity of the erased person, NAMESPACE:VALUE, e.g. email:p2@townsend.com.")
        var identity: String

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let value = try Arguments.identity(identity)
            let response = try await client.withClients { clients in
                try await clients.calling(.ingestion) {
                    try await clients.ingestion.allowIdentities(
                        .with { $0.identities = [value] },
                        options: client.callOptions
                    )
                }
            }
            if client.json { return try Output.json(response) }
            guard !response.requestIds.isEmpty else {
                throw CLIError("no privacy request suppressed \(identity): its records are not refused")
            }
            Output.line(
                "lifted \(response.requestIds.joined(separator: ", ")): records of \(identity) are accepted again"
            )
        }
    }

    /// Follows a request until it is done, showing its state on a terminal.
    static func follow(
        _ id: String,
        _ clients: ServiceClients,
        _ client: ClientOptions
    ) async throws -> Cdp_Privacy_V1_PrivacyRequest {
        defer { Output.endProgress() }
        while true {
            let request = try await clients.calling(.profile) {
                try await clients.profile.getPrivacyRequest(.with { $0.id = id }, options: client.callOptions)
            }
            if request.state == .done { return request }
            Output.progress(
                "\(id): \(state(request.state))" + (request.lastError.isEmpty ? "" : " (\(request.lastError))")
            )
            try await Task.sleep(for: .milliseconds(250))
        }
    }

    static func state(_ state: Cdp_Privacy_V1_PrivacyRequest.State) -> String {
        switch state {
        case .erasing: "erasing"
        case .settling: "settling (waiting for destinations)"
        case .done: "done"
        default: "\(state)"
        }
    }

    /// A request and each service's part.
    static func print(_ request: Cdp_Privacy_V1_PrivacyRequest) {
        Output.line(
            "\(request.id): \(state(request.state))"
                + (request.hasFinishedAt ? " at \(TimeArgument.format(request.finishedAt.date))" : "")
        )
        for service in request.services {
            let removed = service.removed.sorted { $0.key < $1.key }.filter { $0.value > 0 }
                .map { "\($0.value) \($0.key)" }
            var parts = [service.done ? "done" : "under way"]
            if !removed.isEmpty { parts.append(removed.joined(separator: ", ")) }
            if service.pending > 0 { parts.append("\(service.pending) pending") }
            if !service.note.isEmpty { parts.append(service.note) }
            Output.line("  \(service.service): " + parts.joined(separator: "; "))
        }
        if !request.lastError.isEmpty { Output.line("  waiting: \(request.lastError)") }
    }
}

/// One-line descriptions of unified records.
enum Describe {
    static func person(_ record: Cdp_Model_V1_Record) -> String {
        let p = record.person
        let name = [p.firstName, p.lastName].filter { !$0.isEmpty }.joined(separator: " ")
        return [p.email, name, p.jobTitle].filter { !$0.isEmpty }.joined(separator: ", ")
    }

    static func account(_ record: Cdp_Model_V1_Record) -> String {
        let a = record.account
        return [a.name, a.domain].filter { !$0.isEmpty }.joined(separator: ", ")
    }

    static func opportunity(_ record: Cdp_Model_V1_Record) -> String {
        let o = record.opportunity
        let state = o.isClosed ? (o.isWon ? "won" : "lost") : "open"
        return "\(o.name), \(Format.number(o.amount)), \(state)"
    }
}

/// `cdp identity get`.
struct IdentityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "identity",
        abstract: "Look at identity's graph: which identities and records make up a person's or an account's cluster.",
        subcommands: [Get.self]
    )

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the cluster an identity is in: its identities and the records that link it.",
            discussion: "--json prints the Cluster (cdp.identity.v1)."
        )

        @Option(help: "An identity, NAMESPACE:VALUE, e.g. email:p2@townsend.com or sourceKey:102@mkto-1.Marketo.")
        var identity: String

        @Option(help: "person or account.")
        var entity: String = "person"

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let value = try Arguments.identity(identity)
            let entityType = try SegmentCommand.entityType(entity)
            let cluster = try await client.withClients { clients in
                try await clients.calling(.identity) {
                    try await clients.identity.getCluster(
                        .with {
                            $0.entityType = entityType
                            $0.identity = value
                        },
                        options: client.callOptions
                    )
                }
            }
            if client.json { return try Output.json(cluster) }
            Output.line(
                "\(entity) cluster \(cluster.id): \(cluster.identities.count) identities, \(cluster.links.count) records"
            )
            for identity in cluster.identities { Output.line("  \(identity.namespace):\(identity.value)") }
            Output.table(
                ["record", "source", "batch", "ingested", "links"],
                cluster.links.map { link in
                    [
                        link.recordKey, "\(link.source.type):\(link.source.instance)", link.batchID,
                        link.hasIngestedAt ? TimeArgument.format(link.ingestedAt.date) : "-",
                        link.identities.map { "\($0.namespace):\($0.value)" }.joined(separator: " "),
                    ]
                }
            )
        }
    }
}

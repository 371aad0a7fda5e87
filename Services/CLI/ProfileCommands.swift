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
            Output.line("  events: \(view.events.count)")
            for event in view.events.suffix(10) {
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

/// `cdp privacy delete`: a person's right to erasure.
struct PrivacyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "privacy",
        abstract: "Privacy requests.",
        subcommands: [Delete.self]
    )

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a person: their fragments and events in profile, their identities in identity.",
            discussion: """
                Profile removes the person's fragments and events and asks identity to drop the identities; \
                segmentation then sees the person leave every segment, and destinations receive the removals. \
                --json prints the DeletePersonResponse.
                """
        )

        @Option(help: "An identity of the person, NAMESPACE:VALUE, e.g. email:p2@townsend.com.")
        var identity: String

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let request = try Cdp_Profile_V1_GetEntityRequest.with { $0.identity = try Arguments.identity(identity) }
            let response = try await client.withClients { clients in
                try await clients.calling(.profile) {
                    try await clients.profile.deletePerson(request, options: client.callOptions)
                }
            }
            if client.json { return try Output.json(response) }
            Output.line(
                "deleted \(response.fragmentsDeleted) fragments and \(response.eventsDeleted) events; identities removed: "
                    + response.identities.map { "\($0.namespace):\($0.value)" }.joined(separator: ", ")
            )
        }
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

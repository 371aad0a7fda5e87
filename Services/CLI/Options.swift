import ArgumentParser
import CDPClient
import CDPProto
import Foundation
import RPCCore

/// How a command finds and calls the services, and how it prints.
struct ClientOptions: ParsableArguments {
    @Option(help: "The host of the services (default: $CDP_HOST or 127.0.0.1).")
    var host: String?

    @Option(
        help: "Ingestion's port; identity, profile, segmentation, destination follow (default: $CDP_PORT_BASE or 7400)."
    )
    var portBase: Int?

    @Option(name: .customLong("ingestion-addr"), help: "Ingestion's HOST:PORT (default: $CDP_INGESTION_ADDR).")
    var ingestionAddress: String?

    @Option(name: .customLong("identity-addr"), help: "Identity's HOST:PORT (default: $CDP_IDENTITY_ADDR).")
    var identityAddress: String?

    @Option(name: .customLong("profile-addr"), help: "Profile's HOST:PORT (default: $CDP_PROFILE_ADDR).")
    var profileAddress: String?

    @Option(name: .customLong("segmentation-addr"), help: "Segmentation's HOST:PORT (default: $CDP_SEGMENTATION_ADDR).")
    var segmentationAddress: String?

    @Option(name: .customLong("destination-addr"), help: "Destination's HOST:PORT (default: $CDP_DESTINATION_ADDR).")
    var destinationAddress: String?

    @Option(help: "The bearer token the services require (default: $CDP_TOKEN).")
    var token: String?

    @Option(help: "Seconds one call may take (default: 30; for `segment estimate`, which reads every profile: none).")
    var timeout: Double?

    @Flag(help: "Print one JSON document on stdout instead of text.")
    var json = false

    /// The endpoints these options and the environment give.
    func endpoints() throws -> ServiceEndpoints {
        let addresses: [ServiceName: String?] = [
            .ingestion: ingestionAddress, .identity: identityAddress, .profile: profileAddress,
            .segmentation: segmentationAddress, .destination: destinationAddress,
        ]
        do {
            return try ServiceEndpoints(
                host: host,
                portBase: portBase,
                addresses: addresses.compactMapValues { $0 },
                environment: ProcessInfo.processInfo.environment
            )
        } catch let error as ServiceEndpoints.InvalidSetting {
            throw CLIError(error.description)
        }
    }

    /// Call options with this command's timeout (30 s unless --timeout says otherwise).
    var callOptions: CallOptions { CallOptions(timeout: .milliseconds(Int64((timeout ?? 30) * 1000))) }

    /// Call options for a call that takes as long as the data it reads: no deadline unless --timeout
    /// gives one.
    var longCallOptions: CallOptions { CallOptions(timeout: timeout.map { .milliseconds(Int64($0 * 1000)) }) }

    /// Runs `body` with clients of the services, closing them afterwards.
    func withClients<Result: Sendable>(_ body: (ServiceClients) async throws -> Result) async throws -> Result {
        let clients = ServiceClients(
            endpoints: try endpoints(),
            token: token ?? ProcessInfo.processInfo.environment["CDP_TOKEN"]
        )
        do {
            let result = try await body(clients)
            await clients.close()
            return result
        } catch {
            await clients.close()
            throw error
        }
    }
}

/// Parsers for the values commands take.
enum Arguments {
    /// `NS:VALUE` (`email:p2@townsend.com`), split at the first colon.
    static func identity(_ text: String, option: String = "--identity") throws -> Cdp_Identity_V1_IdentityValue {
        guard let colon = text.firstIndex(of: ":"), colon != text.startIndex, text.index(after: colon) != text.endIndex
        else {
            throw CLIError(
                "\(option) must be NAMESPACE:VALUE, e.g. email:p2@townsend.com or sourceKey:102@mkto-1.Marketo (got \"\(text)\")"
            )
        }
        return .with {
            $0.namespace = String(text[..<colon])
            $0.value = String(text[text.index(after: colon)...])
        }
    }

    /// `TYPE:INSTANCE` (`Marketo:mkto-1`).
    static func source(_ text: String, option: String = "--source") throws -> Cdp_Model_V1_Source {
        let parts = text.split(separator: ":", maxSplits: 1)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw CLIError("\(option) must be TYPE:INSTANCE, e.g. Marketo:mkto-1 (got \"\(text)\")")
        }
        return .with {
            $0.type = String(parts[0])
            $0.instance = String(parts[1])
        }
    }

    /// An RFC 3339 time or a date, for `option`.
    static func time(_ text: String, option: String = "--as-of") throws -> TimeArgument {
        guard let time = TimeArgument(text) else {
            throw CLIError(
                "\(option) must be an RFC 3339 time (2026-05-01T00:00:00Z) or a date (2026-05-01), got \"\(text)\""
            )
        }
        return time
    }

    /// `KEY=VALUE` pairs of a repeated option, in order; a key given twice is refused.
    static func pairs(_ items: [String], option: String, example: String) throws -> [String: String] {
        var pairs: [String: String] = [:]
        for item in items {
            guard let equals = item.firstIndex(of: "="), equals != item.startIndex else {
                throw CLIError("\(option) must be KEY=VALUE, e.g. \(option) \(example) (got \"\(item)\")")
            }
            let key = String(item[..<equals])
            guard pairs[key] == nil else { throw CLIError("\(option) gives \(key) twice") }
            pairs[key] = String(item[item.index(after: equals)...])
        }
        return pairs
    }
}

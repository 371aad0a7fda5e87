import ArgumentParser
import CDPClient
import Foundation
import ServiceSupport

/// `cdp`, the command-line client of the platform.
@main
struct CDPCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cdp",
        abstract: "The client of the customer data platform: run the services, ingest, look up, segment, activate.",
        discussion: """
            The five services listen on N..N+4 in the order ingestion, identity, profile, segmentation, \
            destination, N being --port-base or $CDP_PORT_BASE (default 7400) on --host or $CDP_HOST \
            (default 127.0.0.1); --<service>-addr HOST:PORT or $CDP_<SERVICE>_ADDR point one service \
            elsewhere. Calls carry the bearer token of --token or $CDP_TOKEN. With --json every command \
            prints one JSON document on stdout. Errors go to stderr as `cdp: error: …`, with exit status 1.

            Start here: `cdp demo` runs the whole Bodea story on a fresh data directory; `cdp up` runs the \
            services until Ctrl-C.
            """,
        version: PlatformVersion.current,
        subcommands: [
            UpCommand.self, StatusCommand.self, HealthCommand.self, DemoCommand.self,
            SourceCommand.self, IngestCommand.self, BatchCommand.self,
            IdentityCommand.self, ProfileCommand.self, AccountCommand.self,
            SegmentCommand.self,
            DestinationCommand.self, ActivateCommand.self, ActivationsCommand.self, DeactivateCommand.self,
            DeliveriesCommand.self,
            PrivacyCommand.self,
        ]
    )

    /// Parses the command line and runs the command; errors of the platform are printed as
    /// `cdp: error: …` (exit status 1), usage errors by ArgumentParser (with the usage).
    static func main() async {
        let command: any ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            // --help and --version end here too, as ArgumentParser prints them.
            if Self.exitCode(for: error) == .success || error is CleanExit { exit(withError: error) }
            // Usage errors in the same form as the others, with the usage after them.
            let usage = Self.fullMessage(for: error).components(separatedBy: "\n").drop { !$0.hasPrefix("Usage:") }
            fail(
                Self.message(for: error),
                status: Self.exitCode(for: error).rawValue,
                hint: usage.joined(separator: "\n")
            )
        }
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                var syncCommand = command
                try syncCommand.run()
            }
        } catch let exit as ExitCode {
            Self.exit(withError: exit)
        } catch {
            if Self.exitCode(for: error) == .success || error is CleanExit { Self.exit(withError: error) }
            fail("\(error)", status: 1, service: error as? ServiceCallError)
        }
    }

    /// Ends the command with an error: `cdp: error: …` on stderr, and with --json also
    /// `{"error":{"message","service","code","exitStatus"}}` on stdout, so that a script reading the JSON
    /// sees the failure too.
    static func fail(_ message: String, status: Int32, service: ServiceCallError? = nil, hint: String = "") -> Never {
        if CommandLine.arguments.dropFirst().contains("--json"), !Output.printedJSON.load(ordering: .relaxed) {
            struct Failure: Encodable {
                var message: String
                var service: String?
                var code: String?
                var exitStatus: Int32
            }
            struct Document: Encodable { var error: Failure }
            try? Output.json(
                Document(
                    error: Failure(
                        message: message,
                        service: service?.service.rawValue,
                        code: service.map { "\($0.code)" },
                        exitStatus: status
                    )
                )
            )
        }
        Output.error(message)
        if !hint.isEmpty { Output.note(hint) }
        Foundation.exit(status)
    }
}

/// An error of the command itself (bad input, a result that is not what it must be), worded for a person.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

import ArgumentParser
import Foundation
import Logging
import RPCCore
import RPCHTTP2
import RPCServices
import ServiceLifecycle

/// Serves `grpc.testing.TestService` (plus health and reflection) for interop tests and benchmarks.
@main
struct InteropServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cdp-interop-server",
        abstract: "Serves the gRPC interop TestService over h2c on the project's nghttp2 transport.",
        discussion: """
            Prints 'listening on HOST:PORT' on stdout once bound, then serves until SIGINT or SIGTERM, \
            which start a graceful shutdown. Also serves grpc.health.v1.Health and server reflection, \
            so `grpcurl -plaintext HOST:PORT list` works without proto files.
            """
    )

    @Option(help: "The port to listen on; 0 picks a free one.")
    var port: Int = 0

    @Option(help: "The address to bind.")
    var host: String = "127.0.0.1"

    @Option(help: "The largest request message, in bytes.")
    var maxReceiveMessageBytes: Int = 4 * 1024 * 1024

    @Option(help: "The largest request header list, in bytes (RFC 9113 size).")
    var maxHeaderListBytes: Int = 16 * 1024

    @Option(help: "SETTINGS_MAX_CONCURRENT_STREAMS announced to clients.")
    var maxConcurrentStreams: Int = 100

    @Option(help: "Seconds before an idle connection is closed.")
    var idleTimeoutSeconds: Int = 300

    @Option(name: .customLong("auth-token"), help: "A bearer token to require (repeatable). None: no authentication.")
    var authTokens: [String] = []

    @Flag(help: "Run handlers on the shared concurrency pool instead of their connection's event loop.")
    var handlersOffEventLoop = false

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "notice"

    func validate() throws {
        guard (0...65535).contains(self.port) else { throw ValidationError("--port must be between 0 and 65535.") }
        guard self.maxReceiveMessageBytes > 0, self.maxHeaderListBytes > 0, self.maxConcurrentStreams > 0,
            self.idleTimeoutSeconds > 0
        else { throw ValidationError("Limits must be positive.") }
        guard Logger.Level(rawValue: self.logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical.")
        }
    }

    func run() async throws {
        var logger = Logger(label: "cdp-interop-server")
        logger.logLevel = Logger.Level(rawValue: self.logLevel) ?? .notice
        let services: [any RPCService] = [TestService()]
        let health = HealthService()
        let server = RPCServer(
            configuration: .init(
                host: self.host,
                port: self.port,
                maxReceiveMessageBytes: self.maxReceiveMessageBytes,
                maxHeaderListBytes: self.maxHeaderListBytes,
                maxConcurrentStreams: self.maxConcurrentStreams,
                idleTimeout: .seconds(self.idleTimeoutSeconds),
                authorizationTokens: Set(self.authTokens),
                runsHandlersOnEventLoop: !self.handlersOffEventLoop
            ),
            services: services + [health, ReflectionService(services: services + [health])],
            logger: logger
        )
        let address = try await server.start()
        // Written unbuffered: scripts wait for this line on a pipe.
        FileHandle.standardOutput.write(Data("listening on \(self.host):\(address.port ?? self.port)\n".utf8))

        // SIGTERM and SIGINT start a graceful shutdown: GOAWAY, calls in flight finish, then exit.
        try await ServiceGroup(
            services: [server],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ).run()
    }
}

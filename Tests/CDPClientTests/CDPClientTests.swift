import CDPClient
import Foundation
import RPCCore
import Testing

@Suite("Finding the services")
struct ServiceEndpointsTests {
    @Test("the default port base puts the services on 7400..7404 in pipeline order")
    func defaults() throws {
        let endpoints = try ServiceEndpoints(host: nil, portBase: nil, environment: [:])
        #expect(
            ServiceName.allCases.map { endpoints[$0].address.description } == [
                "127.0.0.1:7400", "127.0.0.1:7401", "127.0.0.1:7402", "127.0.0.1:7403", "127.0.0.1:7404",
            ]
        )
        #expect(endpoints[.profile].origin == "the default port base 7400 +2")
    }

    @Test("a flag wins over CDP_PORT_BASE and CDP_HOST, which win over the defaults")
    func precedence() throws {
        let environment = ["CDP_PORT_BASE": "9000", "CDP_HOST": "10.1.2.3"]
        let fromEnvironment = try ServiceEndpoints(host: nil, portBase: nil, environment: environment)
        #expect(fromEnvironment[.destination].address.description == "10.1.2.3:9004")
        #expect(fromEnvironment[.destination].origin == "$CDP_PORT_BASE=9000 +4")
        let fromFlags = try ServiceEndpoints(host: "::1", portBase: 8000, environment: environment)
        #expect(fromFlags[.identity].address.description == "[::1]:8001")
        #expect(fromFlags[.identity].origin == "--port-base 8000 +1")
    }

    @Test("a per-service address wins over the port base: the flag first, then CDP_<SERVICE>_ADDR")
    func perServiceAddress() throws {
        let environment = ["CDP_SEGMENTATION_ADDR": "seg:7403", "CDP_PROFILE_ADDR": "profile-env:1"]
        let endpoints = try ServiceEndpoints(
            host: nil,
            portBase: 7500,
            addresses: [.profile: "profile-flag:2"],
            environment: environment
        )
        #expect(endpoints[.segmentation].address.description == "seg:7403")
        #expect(endpoints[.segmentation].origin == "$CDP_SEGMENTATION_ADDR")
        #expect(endpoints[.profile].address.description == "profile-flag:2")
        #expect(endpoints[.profile].origin == "--profile-addr")
        #expect(endpoints[.ingestion].address.description == "127.0.0.1:7500")
    }

    @Test("a service unreachable, or gone during the call, is named with why and what to do")
    func unreachable() throws {
        let endpoint = try ServiceEndpoints(host: nil, portBase: 7600, environment: [:])[.ingestion]
        let refused = RPCError(
            code: .unavailable,
            message: "connect(descriptor:addr:size:): Connection refused (errno: 111)"
        )
        #expect(
            "\(ServiceCallError(refused, service: .ingestion, endpoint: endpoint))"
                == "cannot reach ingestion at 127.0.0.1:7600 (from --port-base 7600 +0): connection refused; "
                + "is it running? (`cdp up` starts all five)"
        )
        // Found using the CLI: a service killed during an upload read "…server closed.; is it running?".
        let closed = RPCError(code: .unavailable, message: "The connection to the server closed.")
        let description = "\(ServiceCallError(closed, service: .ingestion, endpoint: endpoint))"
        #expect(description.contains("7600 +0): the connection closed during the call (the service stopped?); is it"))
        let other = RPCError(code: .unavailable, message: "Something else went wrong.")
        #expect("\(ServiceCallError(other, service: .ingestion, endpoint: endpoint))".contains("went wrong; is it"))
    }

    @Test("bad settings are refused naming the flag or variable and what it must be")
    func invalid() {
        #expect(throws: ServiceEndpoints.InvalidSetting.self) {
            try ServiceEndpoints(host: nil, portBase: nil, environment: ["CDP_PORT_BASE": "seventy"])
        }
        do {
            _ = try ServiceEndpoints(host: nil, portBase: nil, environment: ["CDP_IDENTITY_ADDR": "no-port"])
            Issue.record("an address without a port was accepted")
        } catch {
            #expect("\(error)" == "$CDP_IDENTITY_ADDR must be HOST:PORT, e.g. 127.0.0.1:7400 (got \"no-port\")")
        }
        do {
            _ = try ServiceEndpoints(host: nil, portBase: 65533, environment: [:])
            Issue.record("a port base without room for five ports was accepted")
        } catch {
            #expect("\(error)".contains("between 1 and 65531") && "\(error)".contains("--port-base 65533"))
        }
    }
}

@Suite("Local services")
struct LocalServicesTests {
    @Test("each service is started on its port with its own data directory and the addresses of its peers")
    func arguments() {
        let configuration = LocalServices.Configuration(dataDirectory: "/d", portBase: 9100, logLevel: "debug")
        func peers(_ service: ServiceName) -> [String: String] {
            let arguments = configuration.arguments(of: service)
            var pairs: [String: String] = [:]
            for index in stride(from: 0, to: arguments.count, by: 2) { pairs[arguments[index]] = arguments[index + 1] }
            return pairs
        }
        #expect(
            peers(.ingestion) == [
                "--host": "127.0.0.1", "--port": "9100", "--data-dir": "/d/ingestion", "--log-level": "debug",
                "--identity": "127.0.0.1:9101",
            ]
        )
        #expect(peers(.identity)["--profile"] == "127.0.0.1:9102")
        #expect(peers(.profile)["--identity"] == "127.0.0.1:9101")
        #expect(peers(.profile)["--segmentation"] == "127.0.0.1:9103")
        #expect(peers(.segmentation)["--profile"] == "127.0.0.1:9102")
        #expect(peers(.segmentation)["--destination"] == "127.0.0.1:9104")
        #expect(peers(.destination)["--port"] == "9104")
        #expect(peers(.destination)["--data-dir"] == "/d/destination")
        #expect(peers(.destination).count == 4)
    }

    @Test("a missing executable is reported with where it was looked for")
    func missingExecutable() {
        do {
            _ = try LocalServices.executable(of: .profile, binDirectory: "/nonexistent-bin")
            Issue.record("a missing executable was found")
        } catch {
            #expect("\(error)" == "no executable cdp-profile in /nonexistent-bin (--bin-dir, $CDP_BIN_DIR)")
        }
    }
}

@Suite("Times on the command line")
struct TimeArgumentTests {
    @Test("RFC 3339 with an offset or fractions, and plain dates at midnight UTC")
    func forms() throws {
        let midnight = try #require(TimeArgument("2026-05-01"))
        #expect(midnight.description == "2026-05-01T00:00:00Z")
        #expect(TimeArgument("2026-05-01T00:00:00Z") == midnight)
        #expect(TimeArgument("2026-05-01T02:00:00+02:00") == midnight)
        #expect(TimeArgument("2026-05-01T00:00:00.250Z")?.date == midnight.date.addingTimeInterval(0.25))
        #expect(midnight.timestamp.seconds == 1_777_593_600)
    }

    @Test("anything else is not a time")
    func invalid() {
        for text in ["", "yesterday", "2026-13-01", "2026-05-01 00:00", "1777593600"] {
            #expect(TimeArgument(text) == nil, "\(text) parsed")
        }
    }
}

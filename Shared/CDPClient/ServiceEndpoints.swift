import ServiceSupport

/// Where each of the five services listens, and where that came from (for error messages).
///
/// Every client of the platform finds the services the same way: a per-service address
/// (`--ingestion-addr HOST:PORT` or `CDP_INGESTION_ADDR`, and so on) wins; otherwise the service
/// listens on the port base plus its offset (``ServiceName/portOffset``) on one host, the port base from
/// `--port-base` or `CDP_PORT_BASE` (default 7400), the host from `--host` or `CDP_HOST` (default
/// 127.0.0.1).
public struct ServiceEndpoints: Sendable {
    /// One service's address and how it was chosen, e.g. `--port-base 7400 (+2)` or `$CDP_PROFILE_ADDR`.
    public struct Endpoint: Sendable, CustomStringConvertible {
        /// The address to call.
        public var address: HostPort
        /// The flag or variable that decided it.
        public var origin: String

        public var description: String { "\(address) (from \(origin))" }
    }

    /// A flag or variable that does not hold what it must.
    public struct InvalidSetting: Error, CustomStringConvertible {
        public var description: String
    }

    /// The endpoint of each service.
    public private(set) var endpoints: [ServiceName: Endpoint]

    /// Resolves the endpoints from flags (nil when not given) and the environment.
    ///
    /// - Parameters:
    ///   - host: `--host`; else `CDP_HOST`; else 127.0.0.1.
    ///   - portBase: `--port-base`; else `CDP_PORT_BASE`; else ``ServiceName/defaultPortBase``.
    ///   - addresses: `--<service>-addr` flags given; each wins over `CDP_<SERVICE>_ADDR`, which wins
    ///     over the port base.
    public init(
        host: String?,
        portBase: Int?,
        addresses: [ServiceName: String] = [:],
        environment: [String: String]
    ) throws {
        let host = host ?? environment["CDP_HOST"].flatMap { $0.isEmpty ? nil : $0 } ?? "127.0.0.1"
        let base: Int
        let baseOrigin: String
        if let portBase {
            base = portBase
            baseOrigin = "--port-base \(portBase)"
        } else if let text = environment["CDP_PORT_BASE"], !text.isEmpty {
            guard let value = Int(text) else {
                throw InvalidSetting(description: "CDP_PORT_BASE must be a port number, e.g. 7400 (got \"\(text)\")")
            }
            base = value
            baseOrigin = "$CDP_PORT_BASE=\(value)"
        } else {
            base = ServiceName.defaultPortBase
            baseOrigin = "the default port base \(base)"
        }
        guard (1...(65535 - 4)).contains(base) else {
            throw InvalidSetting(
                description: "the port base must be between 1 and 65531, so that all five ports fit (\(baseOrigin))"
            )
        }
        var endpoints: [ServiceName: Endpoint] = [:]
        for service in ServiceName.allCases {
            if let text = addresses[service] {
                endpoints[service] = try Self.endpoint(text, origin: service.addressFlag)
            } else if let text = environment[service.addressVariable], !text.isEmpty {
                endpoints[service] = try Self.endpoint(text, origin: "$" + service.addressVariable)
            } else {
                let address = HostPort(host: host, port: base + service.portOffset)
                endpoints[service] = Endpoint(address: address, origin: "\(baseOrigin) +\(service.portOffset)")
            }
        }
        self.endpoints = endpoints
    }

    /// The endpoint of `service`.
    public subscript(service: ServiceName) -> Endpoint { endpoints[service]! }

    private static func endpoint(_ text: String, origin: String) throws -> Endpoint {
        guard let address = HostPort(text) else {
            throw InvalidSetting(description: "\(origin) must be HOST:PORT, e.g. 127.0.0.1:7400 (got \"\(text)\")")
        }
        return Endpoint(address: address, origin: origin)
    }
}

/// The five services, in the order their ports follow the port base (`cdp up --port-base N`: ingestion on
/// N, identity on N+1, profile on N+2, segmentation on N+3, destination on N+4).
public enum ServiceName: String, CaseIterable, Sendable, Comparable, CustomStringConvertible {
    case ingestion, identity, profile, segmentation, destination

    /// The port base every tool uses when none is given: ingestion listens on 7400, destination on 7404.
    public static let defaultPortBase = 7400

    /// The distance of the service's port from the port base.
    public var portOffset: Int { Self.allCases.firstIndex(of: self)! }

    /// The service's executable, `cdp-<service>`.
    public var executable: String { "cdp-" + rawValue }

    /// The variable that gives this service's address, `CDP_<SERVICE>_ADDR`.
    public var addressVariable: String { "CDP_" + rawValue.uppercased() + "_ADDR" }

    /// The flag that gives this service's address to the `cdp` client, `--<service>-addr`.
    public var addressFlag: String { "--" + rawValue + "-addr" }

    public var description: String { rawValue }

    public static func < (lhs: ServiceName, rhs: ServiceName) -> Bool { lhs.portOffset < rhs.portOffset }
}

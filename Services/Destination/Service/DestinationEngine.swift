import CDPProto
import DestinationConnectors
import DestinationStore
import Foundation
import NIOCore
import RPCCore

/// Destination's store on a thread of its own (every store call blocks), with the bookkeeping the
/// delivery workers and the API share: destinations, activations, intake, batches, runs.
public actor DestinationEngine {
    private let executor: any SerialExecutor
    private let store: SQLiteDestinationStore
    private let now: @Sendable () -> Date
    /// Keys of the settings map that are credentials, per type: kept apart and never returned.
    static let credentialKeys: [Cdp_Destination_V1_DestinationType: Set<String>] = [
        .marketo: ["client_secret"], .linkedin: ["access_token"], .webhook: ["secret"], .file: [],
    ]

    /// The dedicated event loop the actor runs on.
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    /// An engine over `store`, on `loop`, with a clock.
    public init(store: SQLiteDestinationStore, loop: any EventLoop, now: @escaping @Sendable () -> Date = Date.init) {
        self.executor = loop.executor
        self.store = store
        self.now = now
    }

    /// The clock.
    public func currentTime() -> Date { now() }

    /// Registers a destination after checking its settings with its connector.
    public func createDestination(
        type: Cdp_Destination_V1_DestinationType,
        name: String,
        settings: [String: String]
    ) throws -> DestinationRecord {
        guard let keys = Self.credentialKeys[type] else {
            throw RPCError(
                code: .invalidArgument,
                message: "type must be MARKETO, LINKEDIN, WEBHOOK or FILE, not \(type)"
            )
        }
        guard type == .file else {
            throw RPCError(
                code: .unimplemented,
                message: "\(type) destinations are not implemented yet; FILE destinations are"
            )
        }
        do {
            _ = try Connectors.make(type: type, settings: settings)
        } catch {
            throw RPCError(code: .invalidArgument, message: "\(error)")
        }
        return try store.createDestination(
            type: type,
            name: name.isEmpty ? "unnamed" : name,
            settings: settings.filter { !keys.contains($0.key) },
            credentials: settings.filter { keys.contains($0.key) },
            at: now()
        )
    }

    /// Every destination.
    public func destinations() throws -> [DestinationRecord] { try store.destinations() }

    /// A destination's backlog.
    public func pending(_ destination: String) throws -> (count: Int, oldest: Date?) {
        try store.pending(destination: destination)
    }

    /// Activates a segment to a destination; its current members are queued at once.
    public func activate(
        segment: String,
        destination: String,
        identity: Cdp_Destination_V1_IdentityMapping,
        attributes: [String: String]
    ) throws -> (ActivationRecord, backfill: Int) {
        guard !segment.isEmpty else { throw RPCError(code: .invalidArgument, message: "segment_id is empty") }
        guard try store.destinations().contains(where: { $0.id == destination }) else {
            throw RPCError(code: .notFound, message: "no destination has the id \(destination)")
        }
        return try store.activate(
            segment: segment,
            destination: destination,
            identity: identity,
            attributes: attributes,
            at: now()
        )
    }

    /// Stops an activation.
    public func deactivate(_ id: String) throws -> ActivationRecord {
        guard let activation = try store.deactivate(id) else {
            throw RPCError(code: .notFound, message: "no activation has the id \(id)")
        }
        return activation
    }

    /// Every activation.
    public func activations() throws -> [ActivationRecord] { try store.activations() }

    /// Takes segmentation's membership changes.
    public func accept(
        sender: String,
        _ changes: [Cdp_Destination_V1_MembershipChange]
    ) throws -> (
        accepted: Int, duplicates: Int
    ) {
        try store.accept(sender: sender, changes, at: now())
    }

    /// The next batch of a destination.
    public func nextBatch(destination: String, limit: Int) throws -> PendingBatch? {
        try store.nextBatch(destination: destination, limit: limit)
    }

    /// What an activation has added at its destination.
    public func deliveredMembers(activation: String) throws -> [PendingMember] {
        try store.deliveredMembers(activation: activation)
    }

    /// Records a finished delivery.
    public func complete(_ batch: PendingBatch, _ report: DeliveryReport) throws { try store.complete(batch, report) }

    /// A destination's runs, newest first.
    public func runs(destination: String, before: Int64, limit: Int) throws -> [(Int64, Cdp_Destination_V1_Delivery)] {
        try store.runs(destination: destination, before: before, limit: limit)
    }
}

/// The connector of each destination type.
public enum Connectors {
    /// A connector for a destination's type and settings.
    public static func make(
        type: Cdp_Destination_V1_DestinationType,
        settings: [String: String]
    ) throws
        -> any Connector
    {
        switch type {
        case .file: return try FileConnector(settings: settings)
        default: throw ConnectorSettingsError("\(type) destinations are not implemented yet")
        }
    }
}

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
    /// How connectors reach their APIs.
    public nonisolated let transport: any HTTPTransport
    /// Keys of the settings map that are credentials, per type: kept apart and never returned.
    static let credentialKeys: [Cdp_Destination_V1_DestinationType: Set<String>] = [
        .marketo: ["client_secret"], .linkedin: ["access_token"], .webhook: ["secret"], .file: [],
    ]

    /// The dedicated event loop the actor runs on.
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    /// An engine over `store`, on `loop`, with a clock.
    public init(
        store: SQLiteDestinationStore,
        loop: any EventLoop,
        transport: any HTTPTransport,
        now: @escaping @Sendable () -> Date = Date.init
    ) {
        self.executor = loop.executor
        self.store = store
        self.transport = transport
        self.now = now
    }

    /// The connector of a destination, from its settings and credentials.
    public nonisolated func connector(for destination: DestinationRecord) throws -> any Connector {
        try Connectors.make(
            type: destination.type,
            settings: destination.settings.merging(destination.credentials) { setting, _ in setting },
            transport: transport
        )
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
        do {
            try Connectors.checkNew(type: type, settings: settings)
            _ = try Connectors.make(type: type, settings: settings, transport: transport)
        } catch {
            throw RPCError(code: .invalidArgument, message: "\(Self.typeName(type)) destination: \(error)")
        }
        return try store.createDestination(
            type: type,
            name: name.isEmpty ? "unnamed" : name,
            settings: settings.filter { !keys.contains($0.key) },
            credentials: settings.filter { keys.contains($0.key) },
            at: now()
        )
    }

    /// Changes a destination's name and settings (`set` merged in, `unset` removed), checked as at
    /// creation.
    public func updateDestination(
        id: String,
        name: String?,
        set: [String: String],
        unset: [String]
    ) throws -> DestinationRecord {
        guard var record = try store.destinations().first(where: { $0.id == id }) else {
            throw RPCError(code: .notFound, message: "no destination has the id \(id)")
        }
        if let name {
            guard !name.isEmpty else {
                throw RPCError(code: .invalidArgument, message: "a destination's name cannot be empty")
            }
            record.name = name
        }
        var settings = record.settings.merging(record.credentials) { setting, _ in setting }
        for key in unset { settings[key] = nil }
        settings.merge(set) { _, new in new }
        let keys = Self.credentialKeys[record.type] ?? []
        do {
            try Connectors.checkNew(type: record.type, settings: settings)
            _ = try Connectors.make(type: record.type, settings: settings, transport: transport)
        } catch {
            throw RPCError(code: .invalidArgument, message: "\(Self.typeName(record.type)) destination: \(error)")
        }
        record.settings = settings.filter { !keys.contains($0.key) }
        record.credentials = settings.filter { keys.contains($0.key) }
        try store.updateDestination(record)
        return record
    }

    /// Deletes a destination; refused while one of its activations is active.
    public func deleteDestination(_ id: String) throws {
        guard try store.destinations().contains(where: { $0.id == id }) else {
            throw RPCError(code: .notFound, message: "no destination has the id \(id)")
        }
        let active = try store.activations().filter { $0.destinationID == id && $0.active }.map(\.id)
        guard active.isEmpty else {
            throw RPCError(
                code: .failedPrecondition,
                message: "\(id) has active activations (\(active.joined(separator: ", "))): deactivate them first"
            )
        }
        try store.deleteDestination(id)
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
        for (field, source) in attributes.sorted(by: { $0.key < $1.key }) {
            guard !field.isEmpty else {
                throw RPCError(code: .invalidArgument, message: "an attribute mapping has no destination field")
            }
            if let problem = MemberMapping.problem(withField: source) {
                throw RPCError(code: .invalidArgument, message: "attribute \(field): \(problem)")
            }
        }
        guard let record = try store.destinations().first(where: { $0.id == destination }) else {
            throw RPCError(code: .notFound, message: "no destination has the id \(destination)")
        }
        // A destination whose connector cannot be built is still activatable: its worker reports why.
        if let connector = try? connector(for: record), identity != .unspecified,
            !connector.supportedIdentities.contains(identity)
        {
            let names = connector.supportedIdentities.map(Self.identityName).sorted().joined(separator: " or ")
            throw RPCError(
                code: .invalidArgument,
                message:
                    "\(Self.typeName(record.type)) destinations take \(names) identities, not \(Self.identityName(identity))"
            )
        }
        // A Marketo static list, or a LinkedIn segment named by `segment_id`, is one audience: two
        // activations would remove each other's members (each only knows what it sent).
        let sharedTarget =
            record.type == .marketo
            ? "Marketo list \(record.settings["list_id"] ?? "")"
            : record.type == .linkedin && !(record.settings["segment_id"] ?? "").isEmpty
                ? "LinkedIn DMP segment \(record.settings["segment_id"] ?? "")" : nil
        if let sharedTarget,
            let other = try store.activations().first(where: { $0.destinationID == destination && $0.active })
        {
            throw RPCError(
                code: .failedPrecondition,
                message:
                    "\(destination) already sends segment \(other.segmentID) to \(sharedTarget) (activation \(other.id)); "
                    + "one audience per list: deactivate it, or create another destination for segment \(segment)"
            )
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

    /// One activation, active or not.
    public func activation(_ id: String) throws -> ActivationRecord? { try store.activation(id) }

    /// Saves a destination's planned delivery before it starts.
    public func savePlannedDelivery(destination: String, activation: String, plan: Data) throws {
        try store.savePlannedDelivery(destination: destination, activation: activation, plan: plan)
    }

    /// A run number for a destination's next delivery, above every earlier one.
    public func nextRunNumber(destination: String, atLeast: Int) throws -> Int {
        Int(try store.nextRunNumber(destination: destination, atLeast: Int64(atLeast)))
    }

    /// A destination's planned delivery not yet recorded as done (after a crash: the one under way).
    public func plannedDelivery(destination: String) throws -> Data? {
        try store.plannedDelivery(destination: destination)
    }

    /// Records a finished delivery and ends the destination's planned one.
    public func complete(activation: String, destination: String, _ report: DeliveryReport) throws {
        try store.complete(activation: activation, destination: destination, report)
    }

    /// A value a connector keeps for an activation.
    public func connectorState(activation: String, key: String) throws -> String? {
        try store.connectorState(activation: activation, key: key)
    }

    /// Keeps a value for an activation's connector.
    public func setConnectorState(activation: String, key: String, value: String) throws {
        try store.setConnectorState(activation: activation, key: key, value: value)
    }

    /// A destination's runs, newest first.
    public func runs(destination: String, before: Int64, limit: Int) throws -> [(Int64, Cdp_Destination_V1_Delivery)] {
        try store.runs(destination: destination, before: before, limit: limit)
    }

    /// Erases persons (a privacy request); see ``SQLiteDestinationStore/erase(clusters:at:)``.
    public func erase(clusters: [UInt64]) throws -> (removals: Int, records: Int, abandoned: Int) {
        try store.erase(clusters: clusters, at: now())
    }

    /// How many removals of erased persons are still to be delivered.
    public func erasurePending(clusters: [UInt64]) throws -> Int { try store.erasurePending(clusters: clusters) }

    /// Clears the write-ahead log of deleted data; false if it could not yet.
    public func clearLog() -> Bool { store.clearLog() }

    static func typeName(_ type: Cdp_Destination_V1_DestinationType) -> String {
        switch type {
        case .marketo: "MARKETO"
        case .linkedin: "LINKEDIN"
        case .webhook: "WEBHOOK"
        case .file: "FILE"
        default: "\(type)"
        }
    }

    static func identityName(_ mapping: Cdp_Destination_V1_IdentityMapping) -> String {
        switch mapping {
        case .email: "EMAIL"
        case .hashedEmail: "HASHED_EMAIL"
        case .crmID: "CRM_ID"
        default: "UNSPECIFIED"
        }
    }
}

/// The connector of each destination type.
public enum Connectors {
    /// The settings each type reads, credentials included.
    public static let knownSettings: [Cdp_Destination_V1_DestinationType: [String]] = [
        .marketo: [
            "endpoint", "identity", "client_id", "client_secret", "list_id", "calls_per_20s", "concurrency",
            "timeout_seconds",
        ],
        .linkedin: [
            "endpoint", "ad_account", "access_token", "version", "source_platform", "segment_name", "segment_id",
            "batch_size", "segment_ready_seconds", "calls_per_minute", "timeout_seconds",
        ],
        .webhook: ["url", "secret", "batch_size", "calls_per_minute", "timeout_seconds", "include_opted_out"],
        .file: ["directory", "format", "mode"],
    ]

    /// What a new destination's settings must be beyond what its connector reads: no setting the type
    /// does not know (a typo would otherwise be ignored), and a file export's directory absolute (a
    /// relative one would be resolved against the service's working directory, not the caller's).
    public static func checkNew(
        type: Cdp_Destination_V1_DestinationType,
        settings: [String: String]
    ) throws(ConnectorSettingsError) {
        let known = knownSettings[type] ?? []
        for key in settings.keys.sorted() where !known.contains(key) {
            let guess = Suggestion.closest(to: key, among: known).map { "did you mean \($0)? " } ?? ""
            throw ConnectorSettingsError(
                "unknown setting \(key); \(guess)the settings are \(known.joined(separator: ", "))"
            )
        }
        if type == .file, let directory = settings["directory"], !directory.isEmpty, !directory.hasPrefix("/") {
            throw ConnectorSettingsError(
                "directory must be an absolute path (the service writes the files, from its own working "
                    + "directory), not \(directory)"
            )
        }
    }

    /// A connector for a destination's type and settings (credentials included).
    public static func make(
        type: Cdp_Destination_V1_DestinationType,
        settings: [String: String],
        transport: any HTTPTransport
    ) throws -> any Connector {
        switch type {
        case .file: return try FileConnector(settings: settings)
        case .marketo: return try MarketoConnector(settings: settings, transport: transport)
        case .linkedin: return try LinkedInConnector(settings: settings, transport: transport)
        case .webhook: return try WebhookConnector(settings: settings, transport: transport)
        default: throw ConnectorSettingsError("the type must be MARKETO, LINKEDIN, WEBHOOK or FILE")
        }
    }
}

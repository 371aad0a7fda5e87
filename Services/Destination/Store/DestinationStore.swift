import CDPProto
import Foundation

/// A registered destination.
public struct DestinationRecord: Sendable, Equatable {
    /// `d1`, `d2`, …
    public var id: String
    public var type: Cdp_Destination_V1_DestinationType
    public var name: String
    /// Settings without credentials.
    public var settings: [String: String]
    /// Credentials by name; never logged, never returned by the API.
    public var credentials: [String: String]
    public var createdAt: Date

    /// Creates a record.
    public init(
        id: String,
        type: Cdp_Destination_V1_DestinationType,
        name: String,
        settings: [String: String],
        credentials: [String: String],
        createdAt: Date
    ) {
        self.id = id
        self.type = type
        self.name = name
        self.settings = settings
        self.credentials = credentials
        self.createdAt = createdAt
    }
}

/// A segment activated to a destination.
public struct ActivationRecord: Sendable, Equatable {
    /// `a1`, `a2`, …
    public var id: String
    public var segmentID: String
    public var destinationID: String
    public var identity: Cdp_Destination_V1_IdentityMapping
    /// Destination field → profile field.
    public var attributes: [String: String]
    public var active: Bool
    public var createdAt: Date
}

/// One member whose delivered state must change: add (realized) or remove.
public struct PendingMember: Sendable, Equatable {
    public var entityType: Cdp_Model_V1_EntityType
    public var cluster: UInt64
    /// The state to deliver: true adds, false removes.
    public var realized: Bool
    /// The membership version this state comes from.
    public var version: UInt64
    /// The entity's record as last received.
    public var record: Cdp_Profile_V1_UnifiedRecord
    /// What the destination was last told: true added, false removed, nil never told.
    public var delivered: Bool?
    /// The identity the destination knows the member by (what was last sent), or the one sent now.
    public var identity: String?
}

/// Work taken for one delivery: an activation's pending members.
public struct PendingBatch: Sendable {
    public var activation: ActivationRecord
    public var members: [PendingMember]
}

/// How a delivery ended for each member of a batch.
public struct DeliveryReport: Sendable {
    /// Members whose state at the destination is now settled (sent, or already so), with the
    /// identity the destination knows them by.
    public var delivered: [PendingMember] = []
    /// Adds and removes actually sent.
    public var added = 0
    public var removed = 0
    /// Members not sent because they opted out of email; for those delivered before, a removal was sent.
    public var suppressed = 0
    /// Members the destination refused for good, with its words.
    public var failed: [(cluster: UInt64, message: String)] = []
    /// Attempts that failed and were retried.
    public var retries = 0
    public var startedAt: Date
    public var finishedAt: Date

    /// Creates a report.
    public init(startedAt: Date, finishedAt: Date) {
        self.startedAt = startedAt
        self.finishedAt = finishedAt
    }

}

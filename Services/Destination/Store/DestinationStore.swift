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

    /// Creates a record.
    public init(
        id: String,
        segmentID: String,
        destinationID: String,
        identity: Cdp_Destination_V1_IdentityMapping,
        attributes: [String: String],
        active: Bool,
        createdAt: Date
    ) {
        self.id = id
        self.segmentID = segmentID
        self.destinationID = destinationID
        self.identity = identity
        self.attributes = attributes
        self.active = active
        self.createdAt = createdAt
    }
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
    /// A digest of the attributes (and an account's domain) last sent, to tell whether an update is
    /// due; nil if never recorded.
    public var content: String? = nil
}

/// Work taken for one delivery: an activation's pending members.
public struct PendingBatch: Sendable {
    public var activation: ActivationRecord
    public var members: [PendingMember]
}

/// A member's state at a destination once a delivery settles it: what to record as delivered.
public struct SettledMember: Sendable, Equatable, Codable {
    public var entityType: Cdp_Model_V1_EntityType
    public var cluster: UInt64
    /// True: the destination has the member; false: it does not.
    public var realized: Bool
    /// The membership version this state comes from.
    public var version: UInt64
    /// The identity the destination knows the member by (nil: never sent).
    public var identity: String?
    /// A digest of the attributes (and an account's domain) the destination has for the member.
    public var content: String?

    /// Creates a settled member.
    public init(
        entityType: Cdp_Model_V1_EntityType,
        cluster: UInt64,
        realized: Bool,
        version: UInt64,
        identity: String?,
        content: String? = nil
    ) {
        self.entityType = entityType
        self.cluster = cluster
        self.realized = realized
        self.version = version
        self.identity = identity
        self.content = content
    }

    private enum CodingKeys: String, CodingKey { case entity, cluster, realized, version, identity, content }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        entityType = Cdp_Model_V1_EntityType(rawValue: try container.decode(Int.self, forKey: .entity)) ?? .person
        cluster = try container.decode(UInt64.self, forKey: .cluster)
        realized = try container.decode(Bool.self, forKey: .realized)
        version = try container.decode(UInt64.self, forKey: .version)
        identity = try container.decodeIfPresent(String.self, forKey: .identity)
        content = try container.decodeIfPresent(String.self, forKey: .content)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(entityType.rawValue, forKey: .entity)
        try container.encode(cluster, forKey: .cluster)
        try container.encode(realized, forKey: .realized)
        try container.encode(version, forKey: .version)
        try container.encodeIfPresent(identity, forKey: .identity)
        try container.encodeIfPresent(content, forKey: .content)
    }
}

/// A member a destination refused for good, with its words.
public struct MemberFailure: Sendable, Equatable, Codable {
    public var cluster: UInt64
    public var message: String

    /// Creates a failure.
    public init(cluster: UInt64, message: String) {
        self.cluster = cluster
        self.message = message
    }
}

/// How a delivery ended for each member of a batch.
public struct DeliveryReport: Sendable {
    /// The queue rows the delivery took (each member's pending state and version): they leave the
    /// queue unless a newer version arrived meanwhile.
    public var taken: [SettledMember]
    /// Members whose state at the destination is now settled (sent, or already so), with the
    /// identity the destination knows them by.
    public var delivered: [SettledMember] = []
    /// Adds, removes and updates (members already there whose attributes changed) actually sent.
    public var added = 0
    public var removed = 0
    public var updated = 0
    /// Members not sent because they opted out of email; for those delivered before, a removal was sent.
    public var suppressed = 0
    /// Members the destination refused for good, with its words.
    public var failed: [MemberFailure] = []
    /// Attempts that failed and were retried.
    public var retries = 0
    public var startedAt: Date
    public var finishedAt: Date

    /// Creates a report.
    public init(taken: [SettledMember], startedAt: Date, finishedAt: Date) {
        self.taken = taken
        self.startedAt = startedAt
        self.finishedAt = finishedAt
    }
}

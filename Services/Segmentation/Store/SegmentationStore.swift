import CDPProto
import Foundation
import GRDB
import RPCCore
import SQLiteSupport
import SwiftProtobuf

/// One of profile's state changes as it came: decoded, and serialized as profile wrote it (the bytes
/// the state log keeps, so that a change is not encoded again to be saved).
public typealias ReceivedStateChange = KeptMessage<Cdp_Profile_V1_StateChange>

/// A saved segment.
public struct SegmentRecord: Sendable, Equatable {
    /// `s1`, `s2`, …
    public var id: String
    public var name: String
    /// The definition as written.
    public var pql: String
    /// PERSON or ACCOUNT.
    public var entityType: Cdp_Model_V1_EntityType
    public var mode: Cdp_Segmentation_V1_EvaluationMode
    public var createdAt: Date
    public var updatedAt: Date
    /// The segments it names with inSegment.
    public var dependsOn: [String]
    /// Whether its result can change with time alone.
    public var dependsOnTime: Bool

    /// Creates a record.
    public init(
        id: String,
        name: String,
        pql: String,
        entityType: Cdp_Model_V1_EntityType,
        mode: Cdp_Segmentation_V1_EvaluationMode,
        createdAt: Date,
        updatedAt: Date,
        dependsOn: [String],
        dependsOnTime: Bool
    ) {
        self.id = id
        self.name = name
        self.pql = pql
        self.entityType = entityType
        self.mode = mode
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.dependsOn = dependsOn
        self.dependsOnTime = dependsOnTime
    }

    /// Whether incoming views are evaluated against it.
    public var isStreaming: Bool { mode != .batch }
}

/// What to do with an entity's scheduled time re-check.
public enum Recheck: Sendable {
    /// Leave it as it is.
    case keep
    /// Re-evaluate the entity at `due` (a membership can expire or begin then).
    case schedule(due: Date)
    /// As `schedule`, unless a re-check is already due no later (a batch job evaluated only some of the
    /// streaming segments, or the same view again).
    case scheduleUnlessEarlier(due: Date)
    /// Nothing to re-check.
    case clear
}

/// The results of evaluating one entity's view against some segments.
public struct EntityEvaluation: Sendable {
    public var entityType: Cdp_Model_V1_EntityType
    public var cluster: UInt64
    /// The view's version from profile; nil for batch runs and re-checks, which leave it alone.
    public var version: UInt64?
    /// The entity's unified record; nil if it is gone (then every membership exits with the record
    /// last stored).
    public var record: Cdp_Profile_V1_UnifiedRecord?
    /// Segment id → whether the entity satisfies it now.
    public var results: [String: Bool]
    public var recheck: Recheck
    /// No change replaced `record` since the last commit that evaluated the entity (the caller keeps
    /// track): where the store keeps the entity's record (an entity with memberships), it is this one,
    /// and the commit neither reads nor compares it.
    public var recordSaved = false

    /// Creates an evaluation.
    public init(
        entityType: Cdp_Model_V1_EntityType,
        cluster: UInt64,
        version: UInt64?,
        record: Cdp_Profile_V1_UnifiedRecord?,
        results: [String: Bool],
        recheck: Recheck
    ) {
        self.entityType = entityType
        self.cluster = cluster
        self.version = version
        self.record = record
        self.results = results
        self.recheck = recheck
    }
}

/// A membership as stored.
public struct MembershipRecord: Sendable, Equatable {
    public var segmentID: String
    public var entityType: Cdp_Model_V1_EntityType
    public var cluster: UInt64
    public var realized: Bool
    public var since: Date
    public var version: UInt64
    public var record: Cdp_Profile_V1_UnifiedRecord
}

/// Membership changes committed by one call.
public struct Transitions: Sendable, Equatable {
    public var realized = 0
    public var exited = 0
    /// Members that stayed realized while their record's content changed (announced so that
    /// destinations can update the member's identity and attributes).
    public var updated = 0

    /// Whether anything was announced to destination.
    public var announced: Bool { realized + exited + updated > 0 }

    /// No changes.
    public init() {}

    /// These and `other`'s counted together.
    public func adding(_ other: Transitions) -> Transitions {
        var sum = self
        sum.realized += other.realized
        sum.exited += other.exited
        sum.updated += other.updated
        return sum
    }
}

/// Membership changes waiting to be sent to destination.
public struct ChangeChunk: Sendable {
    /// The changes as sent, in sequence order: each a serialized `MembershipChange` as the outbox
    /// stored it, its sequence appended (see `AcceptMembershipChangesRequestBytes`).
    public var serialized: [Data]
    /// The last sequence in the chunk.
    public var last: Int64

    /// Creates a chunk.
    public init(serialized: [Data], last: Int64) {
        self.serialized = serialized
        self.last = last
    }

    /// The changes decoded (in process: tests).
    public var changes: [Cdp_Destination_V1_MembershipChange] {
        get throws { try serialized.map { try Cdp_Destination_V1_MembershipChange(serializedBytes: $0) } }
    }
}

/// An entity waiting for its time re-check.
public struct DueRecheck: Sendable {
    public var entityType: Cdp_Model_V1_EntityType
    public var cluster: UInt64
}

/// State items to delete (an erased person's).
public struct StateItems: Sendable {
    /// Person clusters whose unified record goes.
    public var persons: [UInt64] = []
    /// Links by fragment type and key.
    public var links: [(entity: Cdp_Model_V1_EntityType, key: String)] = []
    /// Events by key.
    public var events: [String] = []

    /// Nothing.
    public init() {}
}

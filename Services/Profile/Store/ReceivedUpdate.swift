import CDPProto
import Foundation
import SwiftProtobuf

/// One of identity's updates as the store applies it. A record comes with its `cdp.model.v1.Record`
/// as received, which the store keeps as it is instead of encoding it again, and with what the store
/// reads of it decoded: all of a fragment, and of an event only its key, tombstone flag and time
/// (events are most of the records, and decoding their strings was most of decoding a call).
public struct ReceivedUpdate: Sendable {
    /// What the update does.
    public enum Change: Sendable {
        /// A record, annotated by identity.
        case record(ReceivedRecord)
        /// Clusters merged or split.
        case clusterChange(Cdp_Identity_V1_ClusterChange)
        /// An identity left the graph (a privacy request).
        case identityRemoved(Cdp_Profile_V1_IdentityRemoved)
        /// An update with nothing set (from a newer sender): it only advances the sequence.
        case none
    }

    /// Identity's sequence number of the update.
    public var sequence: UInt64
    /// What it does.
    public var change: Change

    /// Reads `update` as received (the record's bytes stay as they came).
    ///
    /// - Throws: The decoding error of a record whose bytes do not parse.
    public init(_ update: Cdp_Profile_V1_IdentityUpdateStoredBytes) throws {
        sequence = update.sequence
        switch update.update {
        case .record(let annotated)?: change = .record(try ReceivedRecord(annotated))
        case .clusterChange(let clusterChange)?: change = .clusterChange(clusterChange)
        case .identityRemoved(let removed)?: change = .identityRemoved(removed)
        case nil: change = .none
        }
    }

    /// Reads a decoded update, its record encoded once here (callers in process: tests, tools).
    public init(_ update: Cdp_Profile_V1_IdentityUpdate) throws {
        try self.init(Cdp_Profile_V1_IdentityUpdateStoredBytes(serializedBytes: update.serializedBytes() as Data))
    }
}

/// A record of identity's stream: identity's annotation, the stored record's envelope, its
/// `cdp.model.v1.Record` as received and what the store reads of that record.
public struct ReceivedRecord: Sendable {
    /// What the store reads of the record.
    public enum Content: Sendable {
        /// Anything but an event (or a record without an entity), decoded whole: it is unified with
        /// its cluster's other fragments.
        case fragment(Cdp_Model_V1_Record)
        /// An event: what the store indexes it by.
        case event(key: String, isDeleted: Bool, timestamp: Google_Protobuf_Timestamp)
    }

    /// The record's graph (unspecified for relations, members and events).
    public var entityType: Cdp_Model_V1_EntityType
    /// The record's cluster; 0 if it has none.
    public var clusterID: UInt64
    /// The clusters of the entities the record names.
    public var references: [Cdp_Profile_V1_ResolvedReference]
    /// The stored record's version.
    public var version: UInt64
    /// When ingestion took it.
    public var ingestedAt: Google_Protobuf_Timestamp
    /// The `cdp.model.v1.Record` as received.
    public var bytes: Data
    /// What the store reads of it.
    public var content: Content

    /// Decodes what the store reads of `annotated`'s record.
    ///
    /// - Throws: The decoding error of a record whose bytes do not parse.
    public init(_ annotated: Cdp_Profile_V1_AnnotatedStoredRecordBytes) throws {
        entityType = annotated.entityType
        clusterID = annotated.clusterID
        references = annotated.references
        version = annotated.stored.version
        ingestedAt = annotated.stored.ingestedAt
        bytes = annotated.stored.record
        content = try Self.content(of: bytes, entityType: entityType)
    }

    private static func content(of bytes: Data, entityType: Cdp_Model_V1_EntityType) throws -> Content {
        // Identity names the graph of every clustered record: only the others can be events.
        if entityType == .unspecified {
            var options = BinaryDecodingOptions()
            options.discardUnknownFields = true
            let outline = try Cdp_Profile_V1_RecordOutline(serializedBytes: bytes, options: options)
            if case .event(let event)? = outline.entity {
                return .event(key: outline.key, isDeleted: outline.isDeleted, timestamp: event.timestamp)
            }
        }
        let record = try Cdp_Model_V1_Record(serializedBytes: bytes)
        if case .event(let event)? = record.entity {
            return .event(key: record.key, isDeleted: record.isDeleted, timestamp: event.timestamp)
        }
        return .fragment(record)
    }
}

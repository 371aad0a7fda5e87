import CDPProto
import Foundation

/// Ingestion's storage: sources, batches, the raw record log, and the outbox of records to forward.
///
/// The service talks to storage only through this protocol, so a PostgreSQL implementation can be added
/// beside ``SQLiteIngestionStore`` without touching the service. Every method is one transaction.
///
/// Records are appended in chunks. A batch's chunks become visible to forwarding only when the batch
/// completes; a failed or interrupted batch's records are deleted, so a corrected re-send is stored
/// afresh. Streamed records are forwarded as soon as their chunk commits.
public protocol IngestionStore: Sendable {
    /// Registers `source`; an existing one is returned unchanged.
    func createSource(_ source: Cdp_Model_V1_Source, description: String) async throws -> Cdp_Ingestion_V1_SourceInfo
    /// The source, if registered.
    func source(_ source: Cdp_Model_V1_Source) async throws -> Cdp_Ingestion_V1_SourceInfo?
    /// Every source, ordered by type then instance.
    func listSources() async throws -> [Cdp_Ingestion_V1_SourceInfo]

    /// Starts a batch, or finds the one with the same source and idempotency key.
    func beginBatch(_ header: Cdp_Ingestion_V1_BatchHeader, errorThreshold: Double) async throws -> BatchStart
    /// Appends one chunk of a receiving batch's records. A record equal to the current (latest stored)
    /// version of its key is a duplicate and skipped; anything else is a new version, even one equal to
    /// an older version (a value changed back).
    func appendBatchRecords(_ records: [PreparedRecord], batchID: String) async throws -> AppendResult
    /// Ends a receiving batch. A completed batch's records are queued for forwarding; a failed or
    /// interrupted batch's records are deleted (an interrupted batch may be sent again under the same
    /// idempotency key). Returns the stored batch.
    func finishBatch(_ batchID: String, outcome: BatchOutcome) async throws -> Cdp_Ingestion_V1_Batch
    /// The batch with its stored errors, if it exists.
    func batch(id: String) async throws -> Cdp_Ingestion_V1_Batch?
    /// Batches newest first, without errors, after the page token of a previous call.
    func listBatches(
        pageSize: Int,
        pageToken: String
    ) async throws -> (batches: [Cdp_Ingestion_V1_Batch], nextPageToken: String)

    /// Appends streamed records and queues them for forwarding at once.
    func appendStreamRecords(_ records: [PreparedRecord], streamID: String) async throws -> AppendResult

    /// The next records to forward, oldest first: at most `limit` records and, beyond the first, at most
    /// `maxBytes` of serialized records (so a call stays under the receiver's message limit); nil when
    /// nothing is pending.
    func nextOutboxChunk(limit: Int, maxBytes: Int) async throws -> OutboxChunk?
    /// Records that the receiver acknowledged `chunk`.
    func acknowledge(_ chunk: OutboxChunk) async throws
    /// How much is pending.
    func outboxStatus() async throws -> (pending: UInt64, oldestPending: Date?, forwarded: UInt64)

    /// The hashed identities of erased persons, with the privacy request of each.
    func suppressions() async throws -> [Data: String]
    /// A privacy request's part here: keeps `hashes` as suppressed by `request`, and deletes every
    /// stored version of the records `keys` names and every record not forwarded yet that `refuses`
    /// (given its payload). Returns how many hashes were new and how many records were deleted.
    func erase(
        request: String,
        hashes: [Data],
        keys: [String],
        refuses: @Sendable (Data) -> Bool
    ) async throws -> (suppressed: Int, records: Int)
    /// Lifts every request that suppressed one of `hashes`; returns their ids.
    func allow(hashes: [Data]) async throws -> [String]
    /// Clears the write-ahead log of deleted data; false if it could not yet.
    func clearLog() async -> Bool
}

extension IngestionStore {
    /// The next records to forward: at most `limit`, and at most 3 MiB of them beyond the first, which
    /// keeps a call under the default 4 MiB receive limit of our servers.
    public func nextOutboxChunk(limit: Int) async throws -> OutboxChunk? {
        try await nextOutboxChunk(limit: limit, maxBytes: 3 << 20)
    }
}

/// A record ready to store: its key, version and serialized form.
public struct PreparedRecord: Sendable {
    /// The record's key.
    public var key: String
    /// A hash of the serialized record: with the key, it names this version of the record.
    public var version: UInt64
    /// The record's entity type (for statistics).
    public var entity: Cdp_Model_V1_EntityType
    /// The serialized `Cdp_Model_V1_Record`.
    public var payload: Data

    /// Creates a record to store.
    public init(key: String, version: UInt64, entity: Cdp_Model_V1_EntityType, payload: Data) {
        self.key = key
        self.version = version
        self.entity = entity
        self.payload = payload
    }
}

/// FNV-1a, 64 bits: fast and well spread; names a record's version together with its key.
public enum FNV1a {
    /// The hash of `bytes`.
    public static func hash(_ bytes: some Sequence<UInt8>) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01B3
        }
        return hash
    }
}

/// What an append stored.
public struct AppendResult: Sendable, Equatable {
    /// Records stored for the first time.
    public var accepted: Int
    /// Records skipped because they equal the current version of their key.
    public var duplicates: Int

    /// Creates a result.
    public init(accepted: Int, duplicates: Int) {
        self.accepted = accepted
        self.duplicates = duplicates
    }
}

/// The outcome of ``IngestionStore/beginBatch(_:errorThreshold:)``.
public enum BatchStart: Sendable {
    /// A new batch (or a retry of an interrupted one) is receiving under this id.
    case started(batchID: String)
    /// A batch with the same idempotency key already finished: its stored result.
    case finished(Cdp_Ingestion_V1_Batch)
    /// A batch with the same idempotency key is being received right now.
    case inProgress(batchID: String)
}

/// How a batch ended.
public struct BatchOutcome: Sendable {
    /// `.completed`, `.failed` or `.interrupted`.
    public var state: Cdp_Ingestion_V1_BatchState
    /// The batch's counts.
    public var counts: Cdp_Ingestion_V1_BatchCounts
    /// The first record errors (the store keeps at most ``maxStoredErrors``).
    public var errors: [Cdp_Ingestion_V1_RecordError]
    /// Why the batch failed.
    public var failure: String

    /// Creates an outcome.
    public init(
        state: Cdp_Ingestion_V1_BatchState,
        counts: Cdp_Ingestion_V1_BatchCounts,
        errors: [Cdp_Ingestion_V1_RecordError],
        failure: String
    ) {
        self.state = state
        self.counts = counts
        self.errors = errors
        self.failure = failure
    }
}

/// The number of record errors kept per batch.
public let maxStoredErrors = 1000

/// Records taken from the outbox for one forwarding attempt.
public struct OutboxChunk: Sendable {
    /// What the chunk takes from one outbox entry (one commit): its records up to `lastSequence`.
    public struct Part: Sendable, Equatable {
        /// The outbox entry.
        public var entryID: Int64
        /// The highest sequence number taken from it.
        public var lastSequence: Int64
        /// How many records were taken from it.
        public var count: Int

        /// Creates a part.
        public init(entryID: Int64, lastSequence: Int64, count: Int) {
            self.entryID = entryID
            self.lastSequence = lastSequence
            self.count = count
        }
    }

    /// The outbox entries the records come from, oldest first: several small commits (a stream's
    /// requests) travel in one chunk.
    public var parts: [Part]
    /// The records, in sequence order, each with its record still serialized as stored.
    public var records: [Cdp_Identity_V1_StoredRecordBytes]

    /// Creates a chunk (for store implementations).
    public init(parts: [Part], records: [Cdp_Identity_V1_StoredRecordBytes]) {
        self.parts = parts
        self.records = records
    }
}

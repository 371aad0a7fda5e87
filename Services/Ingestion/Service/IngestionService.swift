import CDPProto
import Foundation
import IngestionFormats
import IngestionStore
import Logging
import RPCCore
import SwiftProtobuf
import Synchronization

/// `cdp.ingestion.v1.Ingestion`: sources, batch uploads, record streams and batch status.
///
/// A batch is parsed as its bytes arrive and committed in chunks while the next chunk is parsed; its
/// records become visible to forwarding when the whole batch is accepted. Nothing is acknowledged
/// before it is committed.
public final class IngestionService: Cdp_Ingestion_V1_Ingestion.ServiceProtocol {
    /// How batches are handled.
    public struct Configuration: Sendable {
        /// Records per store transaction.
        public var chunkRecords: Int
        /// The largest rejected fraction a batch may have when its header does not say.
        public var defaultErrorThreshold: Double
        /// Record errors returned in a batch response (all are counted; the store keeps 1,000).
        public var maxReturnedErrors: Int

        /// Creates a configuration; the defaults are those of `cdp-ingestion`'s flags.
        public init(
            chunkRecords: Int = 5000,
            defaultErrorThreshold: Double = 0.05,
            maxReturnedErrors: Int = 1000
        ) {
            self.chunkRecords = chunkRecords
            self.defaultErrorThreshold = defaultErrorThreshold
            self.maxReturnedErrors = maxReturnedErrors
        }

        /// The defaults of `cdp-ingestion`'s flags.
        public static let defaults = Configuration()
    }

    private let store: any IngestionStore
    private let configuration: Configuration
    private let logger: Logger
    private let committed: @Sendable () -> Void
    private let forwardingError: @Sendable () -> String?
    private let suppression: Suppression
    /// Sources known to exist (they are never deleted), to spare a lookup per stream request.
    private let knownSources = Mutex(Set<String>())

    /// Creates the service.
    ///
    /// - Parameters:
    ///   - committed: Called after records were queued for forwarding (wakes the outbox relay).
    ///   - forwardingError: The relay's last error, for `GetOutboxStatus`.
    ///   - suppression: The erased persons whose records are refused (shared with ``IngestionErasure``).
    public init(
        store: any IngestionStore,
        configuration: Configuration = .defaults,
        logger: Logger,
        committed: @escaping @Sendable () -> Void = {},
        forwardingError: @escaping @Sendable () -> String? = { nil },
        suppression: Suppression = Suppression()
    ) {
        self.suppression = suppression
        self.store = store
        self.configuration = configuration
        self.logger = logger
        self.committed = committed
        self.forwardingError = forwardingError
    }

    // MARK: - Sources

    public func createSource(
        request: Cdp_Ingestion_V1_CreateSourceRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Ingestion_V1_SourceInfo
    {
        try Self.validate(request.source, field: "source")
        let info = try await store.createSource(request.source, description: request.description_p)
        logger.info("source registered", metadata: ["source": "\(Self.name(request.source))"])
        return info
    }

    public func listSources(
        request: Cdp_Ingestion_V1_ListSourcesRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Ingestion_V1_ListSourcesResponse
    {
        var response = Cdp_Ingestion_V1_ListSourcesResponse()
        response.sources = try await store.listSources()
        return response
    }

    // MARK: - Batches

    public func ingestBatch(
        requests: RPCAsyncSequence<Cdp_Ingestion_V1_IngestBatchRequest>,
        context: ServerContext
    )
        async throws -> Cdp_Ingestion_V1_Batch
    {
        var iterator = requests.makeAsyncIterator()
        guard let first = try await iterator.next() else {
            throw RPCError(code: .invalidArgument, message: "IngestBatch: the stream is empty; send a header first")
        }
        guard case .header(let header)? = first.part else {
            throw RPCError(code: .invalidArgument, message: "IngestBatch: the first message must be the batch header")
        }
        try Self.validate(header.source, field: "header.source")
        try await requireSource(header.source)
        let threshold = header.hasErrorThreshold ? header.errorThreshold : configuration.defaultErrorThreshold
        guard (0...1).contains(threshold) else {
            throw RPCError(
                code: .invalidArgument,
                message: "header.error_threshold must be between 0 and 1 (a fraction), not \(threshold)"
            )
        }
        let parser: BatchParser
        do {
            parser = try BatchParser(format: header.format, entity: header.entity, source: header.source)
        } catch {
            throw RPCError(code: .invalidArgument, message: "IngestBatch: \(error.message)")
        }

        let batchID: String
        switch try await store.beginBatch(header, errorThreshold: threshold) {
        case .finished(var batch):
            batch.replayed = true
            logger.info("batch re-sent; answering with its stored result", metadata: ["batch.id": "\(batch.batchID)"])
            return batch
        case .inProgress(let id):
            throw RPCError(
                code: .aborted,
                message: "batch \(id) with idempotency key \"\(header.idempotencyKey)\" is being received right now; "
                    + "wait for it to finish, then send again to get its result"
            )
        case .started(let id):
            batchID = id
        }

        var receiver = BatchReceiver(
            parser: parser,
            source: header.source,
            suppression: suppression,
            chunkRecords: configuration.chunkRecords,
            maxErrors: max(configuration.maxReturnedErrors, maxStoredErrors)
        )
        do {
            try await withThrowingTaskGroup(of: AppendResult.self) { group in
                // At most one chunk is being written while the next is parsed.
                var writing = false
                func write(_ chunk: [Cdp_Model_V1_Record]) async throws {
                    if writing, let result = try await group.next() { receiver.add(result) }
                    group.addTask { [store] in
                        let prepared = try chunk.map(RecordPreparation.prepare)
                        return try await store.appendBatchRecords(prepared, batchID: batchID)
                    }
                    writing = true
                }
                while let message = try await iterator.next() {
                    switch message.part {
                    case .data(let bytes)?:
                        receiver.counts.bytes += UInt64(bytes.count)
                        try receiver.feed(bytes)
                    case .records(let list)?:
                        try receiver.add(typed: list.records)
                    case .header?:
                        throw RPCError(
                            code: .invalidArgument,
                            message: "IngestBatch: a second header; one batch per call"
                        )
                    case nil:
                        continue
                    }
                    while let chunk = receiver.takeChunk(final: false) { try await write(chunk) }
                }
                try receiver.finish()
                while let chunk = receiver.takeChunk(final: true) { try await write(chunk) }
                while let result = try await group.next() { receiver.add(result) }
            }
        } catch let failure as BatchFailure {
            return try await finish(batchID, receiver: receiver, failure: "the file cannot be read: \(failure.message)")
        } catch {
            // The upload broke off (cancelled, connection lost, bad message) or the store failed: keep
            // nothing, allow a retry under the same key.
            let storeFailed = !(error is RPCError) && !(error is CancellationError)
            let reason =
                storeFailed
                ? "the service could not store the batch (\(error))"
                : "the upload stopped before its end: \(error)"
            let outcome = BatchOutcome(state: .interrupted, counts: receiver.counts, errors: [], failure: reason)
            do {
                _ = try await finishUncancelled(batchID, outcome)
            } catch {
                // The batch stays receiving until the next start, which interrupts it then.
                logger.error(
                    "cannot mark an interrupted batch",
                    metadata: ["batch.id": "\(batchID)", "error": "\(error)"]
                )
            }
            logger.notice("batch upload interrupted", metadata: ["batch.id": "\(batchID)", "error": "\(error)"])
            guard storeFailed else { throw error }
            throw RPCError(
                code: .unavailable,
                message: "batch \(batchID) could not be stored; nothing of it was kept; send it again "
                    + "(the service log has the cause)"
            )
        }

        let counts = receiver.counts
        let rejectedFraction = counts.records == 0 ? 0 : Double(counts.rejected) / Double(counts.records)
        if rejectedFraction > threshold {
            let failure =
                "\(counts.rejected) of \(counts.records) records (\(Self.percent(rejectedFraction))) were rejected, "
                + "more than the threshold of \(Self.percent(threshold)); nothing of the batch was kept"
            return try await finish(batchID, receiver: receiver, failure: failure)
        }
        return try await finish(batchID, receiver: receiver, failure: nil)
    }

    private func finish(
        _ batchID: String,
        receiver: BatchReceiver,
        failure: String?
    ) async throws
        -> Cdp_Ingestion_V1_Batch
    {
        var counts = receiver.counts
        if failure != nil {
            counts.accepted = 0
            counts.duplicates = 0
        }
        var batch = try await finishUncancelled(
            batchID,
            BatchOutcome(
                state: failure == nil ? .completed : .failed,
                counts: counts,
                errors: receiver.errors,
                failure: failure ?? ""
            )
        )
        batch.errors = Array(receiver.errors.prefix(configuration.maxReturnedErrors))
        logger.info(
            failure == nil ? "batch completed" : "batch failed",
            metadata: [
                "batch.id": "\(batchID)", "records": "\(counts.records)", "accepted": "\(counts.accepted)",
                "duplicates": "\(counts.duplicates)", "rejected": "\(counts.rejected)",
                "failure": "\(failure ?? "")",
            ]
        )
        return batch
    }

    /// Ends a batch in the store from a task of its own: the call's task may be cancelled by now (a
    /// deadline, a disconnect), and a batch left receiving would refuse every retry until a restart.
    private func finishUncancelled(
        _ batchID: String,
        _ outcome: BatchOutcome
    ) async throws
        -> Cdp_Ingestion_V1_Batch
    {
        let store = self.store
        let batch = try await Task { try await store.finishBatch(batchID, outcome: outcome) }.value
        // Completed records are queued; a failed batch may have handed claimed records to the outbox.
        committed()
        return batch
    }

    public func getBatch(
        request: Cdp_Ingestion_V1_GetBatchRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Ingestion_V1_Batch
    {
        guard let batch = try await store.batch(id: request.batchID) else {
            throw RPCError(code: .notFound, message: "no batch with id \"\(request.batchID)\"")
        }
        return batch
    }

    public func listBatches(
        request: Cdp_Ingestion_V1_ListBatchesRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Ingestion_V1_ListBatchesResponse
    {
        guard request.pageToken.isEmpty || Int64(request.pageToken) != nil else {
            throw RPCError(
                code: .invalidArgument,
                message: "page_token \"\(request.pageToken)\" is not one this service gave"
            )
        }
        let pageSize = request.pageSize == 0 ? 50 : min(Int(request.pageSize), 1000)
        let page = try await store.listBatches(pageSize: pageSize, pageToken: request.pageToken)
        var response = Cdp_Ingestion_V1_ListBatchesResponse()
        response.batches = page.batches
        response.nextPageToken = page.nextPageToken
        return response
    }

    // MARK: - Streams

    public func streamRecords(
        requests: RPCAsyncSequence<Cdp_Ingestion_V1_StreamRecordsRequest>,
        responses: RPCWriter<Cdp_Ingestion_V1_StreamRecordsResponse>,
        context: ServerContext
    ) async throws {
        let streamID = "stream:" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        var requestNumber: UInt64 = 0
        for try await request in requests {
            requestNumber += 1
            try Self.validate(request.source, field: "source")
            try await requireSource(request.source)
            var response = Cdp_Ingestion_V1_StreamRecordsResponse()
            response.requestNumber = requestNumber
            var prepared: [PreparedRecord] = []
            prepared.reserveCapacity(request.records.count)
            for (index, record) in request.records.enumerated() {
                switch TypedRecords.normalize(record, source: request.source) {
                case .record(let normalized):
                    if let erasure = suppression.request(refusing: normalized) {
                        response.suppressed += 1
                        response.errors.append(
                            Self.recordError(Suppression.error(erasure), line: 0, number: UInt64(index + 1))
                        )
                        continue
                    }
                    // Serialized once: the payload's size is the one the limit is about.
                    let record = try RecordPreparation.prepare(normalized)
                    if let tooLarge = RecordPreparation.sizeError(bytes: record.payload.count) {
                        response.errors.append(Self.recordError(tooLarge, line: 0, number: UInt64(index + 1)))
                    } else {
                        prepared.append(record)
                    }
                case .rejected(let errors):
                    response.errors += errors.map { Self.recordError($0, line: 0, number: UInt64(index + 1)) }
                }
            }
            if !prepared.isEmpty {
                let result = try await store.appendStreamRecords(prepared, streamID: streamID)
                response.accepted = UInt32(result.accepted)
                response.duplicates = UInt32(result.duplicates)
                if result.accepted > 0 { committed() }
            }
            try await responses.write(response)
        }
    }

    // MARK: - Privacy

    public func allowIdentities(
        request: Cdp_Ingestion_V1_AllowIdentitiesRequest,
        context: ServerContext
    ) async throws -> Cdp_Ingestion_V1_AllowIdentitiesResponse {
        let response = try await Self.allow(request, store: store, suppression: suppression)
        logger.notice("privacy requests lifted", metadata: ["requests": "\(response.requestIds)"])
        return response
    }

    // MARK: - Status

    public func getOutboxStatus(
        request: Cdp_Ingestion_V1_GetOutboxStatusRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Ingestion_V1_OutboxStatus
    {
        let status = try await store.outboxStatus()
        var response = Cdp_Ingestion_V1_OutboxStatus()
        response.pendingRecords = status.pending
        response.forwardedRecords = status.forwarded
        if let oldest = status.oldestPending { response.oldestPending = Google_Protobuf_Timestamp(date: oldest) }
        response.lastError = forwardingError() ?? ""
        return response
    }

    // MARK: - Helpers

    private func requireSource(_ source: Cdp_Model_V1_Source) async throws {
        let name = Self.name(source)
        if knownSources.withLock({ $0.contains(name) }) { return }
        guard try await store.source(source) != nil else {
            throw RPCError(
                code: .failedPrecondition,
                message: "source \(name) is not registered; create it first (CreateSource, or `cdp source create`)"
            )
        }
        knownSources.withLock { _ = $0.insert(name) }
    }

    private static func validate(_ source: Cdp_Model_V1_Source, field: String) throws {
        guard SourceName.isValidType(source.type) else {
            throw RPCError(
                code: .invalidArgument,
                message: "\(field).type \"\(source.type)\" is not a source type: it must start with an upper-case "
                    + "letter and hold only letters, digits, '-' and '_' (e.g. Marketo, Salesforce, MDM, Web)"
            )
        }
        guard SourceName.isValidInstance(source.instance) else {
            throw RPCError(
                code: .invalidArgument,
                message: "\(field).instance \"\(source.instance)\" is not an instance id: 1 to 64 letters, digits, "
                    + "'-' or '_' (e.g. mkto-1)"
            )
        }
    }

    static func name(_ source: Cdp_Model_V1_Source) -> String { source.type + ":" + source.instance }

    static func recordError(_ error: FieldError, line: UInt64, number: UInt64) -> Cdp_Ingestion_V1_RecordError {
        var recordError = Cdp_Ingestion_V1_RecordError()
        recordError.line = line
        recordError.recordNumber = number
        recordError.field = error.field
        recordError.reason = error.reason
        return recordError
    }

    private static func percent(_ fraction: Double) -> String {
        let value = (fraction * 1000).rounded() / 10
        return (value.rounded() == value ? String(Int(value)) : String(value)) + "%"
    }
}

/// Forwarding to identity: what the outbox relay calls.
public enum IdentityForwarding {
    /// Sends one outbox chunk to identity, each record as stored; returns once identity acknowledged it.
    public static func deliver(
        _ chunk: OutboxChunk,
        via client: RPCClient,
        timeout: Duration = .seconds(30)
    ) async throws {
        var request = Cdp_Identity_V1_AcceptRecordsRequestBytes()
        request.sender = "ingestion"
        request.records = chunk.records
        _ = try await client.unary(
            Cdp_Identity_V1_Identity.Method.acceptRecordsBytes,
            request,
            options: CallOptions(timeout: timeout)
        )
    }
}

/// The state of one batch upload: the parser, the records waiting for the next chunk, counts and errors.
struct BatchReceiver {
    private var parser: BatchParser
    private let source: Cdp_Model_V1_Source
    private let suppression: Suppression
    private let chunkRecords: Int
    private let maxErrors: Int
    private var parsed: [ParsedRecord] = []
    /// Valid records waiting for the next chunk; serialized by the chunk's writer task, off the parsing
    /// task, so that parsing the next piece overlaps serializing and storing this one.
    private var pending: [Cdp_Model_V1_Record] = []
    private var typedNumber: UInt64 = 0
    var counts = Cdp_Ingestion_V1_BatchCounts()
    private(set) var errors: [Cdp_Ingestion_V1_RecordError] = []

    init(
        parser: BatchParser,
        source: Cdp_Model_V1_Source,
        suppression: Suppression,
        chunkRecords: Int,
        maxErrors: Int
    ) {
        self.parser = parser
        self.source = source
        self.suppression = suppression
        self.chunkRecords = chunkRecords
        self.maxErrors = maxErrors
        pending.reserveCapacity(chunkRecords)
    }

    mutating func feed(_ bytes: Data) throws {
        guard typedNumber == 0 else {
            throw BatchFailure("a batch sends either file bytes (data) or typed records, not both")
        }
        parsed.removeAll(keepingCapacity: true)
        try bytes.withUnsafeBytes { buffer in try parser.feed(buffer, into: &parsed) }
        take(parsed)
    }

    mutating func finish() throws {
        parsed.removeAll(keepingCapacity: true)
        try parser.finish(into: &parsed)
        take(parsed)
    }

    mutating func add(typed records: [Cdp_Model_V1_Record]) throws {
        guard counts.bytes == 0 else {
            throw BatchFailure("a batch sends either file bytes (data) or typed records, not both")
        }
        for record in records {
            typedNumber += 1
            counts.records += 1
            switch TypedRecords.normalize(record, source: source) {
            case .record(let normalized):
                // Serialized here only to measure it; the chunk writer serializes it again to store it.
                let size = (try normalized.serializedBytes() as [UInt8]).count
                if let tooLarge = RecordPreparation.sizeError(bytes: size) {
                    reject([tooLarge], line: 0, number: typedNumber)
                } else {
                    keep(normalized, line: 0, number: typedNumber)
                }
            case .rejected(let fieldErrors):
                reject(fieldErrors, line: 0, number: typedNumber)
            }
        }
    }

    mutating func add(_ result: AppendResult) {
        counts.accepted += UInt64(result.accepted)
        counts.duplicates += UInt64(result.duplicates)
    }

    /// The next chunk to write: full chunks while receiving, the rest at the end.
    mutating func takeChunk(final: Bool) -> [Cdp_Model_V1_Record]? {
        guard pending.count >= chunkRecords || (final && !pending.isEmpty) else { return nil }
        let count = min(pending.count, chunkRecords)
        let chunk = Array(pending.prefix(count))
        pending.removeFirst(count)
        return chunk
    }

    private mutating func take(_ records: [ParsedRecord]) {
        for item in records {
            counts.records += 1
            switch item.result {
            case .record(let record):
                keep(record, line: item.line, number: item.number)
            case .rejected(let fieldErrors):
                reject(fieldErrors, line: item.line, number: item.number)
            }
        }
    }

    /// Queues a valid record for the next chunk, unless it names a person a privacy request erased:
    /// then it is refused and counted apart (not against the error threshold).
    private mutating func keep(_ record: Cdp_Model_V1_Record, line: UInt64, number: UInt64) {
        if let erasure = suppression.request(refusing: record) {
            counts.suppressed += 1
            if errors.count < maxErrors {
                errors.append(IngestionService.recordError(Suppression.error(erasure), line: line, number: number))
            }
            return
        }
        pending.append(record)
    }

    private mutating func reject(_ fieldErrors: [FieldError], line: UInt64, number: UInt64) {
        counts.rejected += 1
        for error in fieldErrors where errors.count < maxErrors {
            errors.append(IngestionService.recordError(error, line: line, number: number))
        }
    }
}

/// Serializes records deterministically and names their version by a hash of the bytes.
enum RecordPreparation {
    private static let options: BinaryEncodingOptions = {
        var options = BinaryEncodingOptions()
        options.useDeterministicOrdering = true
        return options
    }()

    /// Why a typed record of `bytes` serialized bytes is too large to store, if it is. (File records are
    /// limited by their input size while they are read.)
    static func sizeError(bytes: Int) -> FieldError? {
        guard bytes > maxRecordBytes else { return nil }
        return FieldError(field: "", reason: "the record is \(bytes) bytes, more than the limit of \(maxRecordBytes)")
    }

    static func prepare(_ record: Cdp_Model_V1_Record) throws -> PreparedRecord {
        let payload: Data = try record.serializedBytes(options: options)
        let version = payload.withUnsafeBytes { FNV1a.hash($0) }
        return PreparedRecord(key: record.key, version: version, entity: record.entityType, payload: payload)
    }
}

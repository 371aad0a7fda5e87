import CDPProto
import Foundation
import Logging
import RPCCore
import SegmentationEvaluation
import SegmentationLanguage
import SegmentationStore
import SwiftProtobuf

/// `cdp.segmentation.v1.Segmentation`: segment definitions, streaming evaluation of profile's views,
/// batch jobs, members, estimates and explanations.
public final class SegmentationService: Cdp_Segmentation_V1_Segmentation.ServiceProtocol {
    private let engine: SegmentationEngine
    private let source: any ViewSource
    private let jobs: EvaluationJobs
    private let logger: Logger
    private let changed: @Sendable () -> Void
    private let forwardingError: @Sendable () -> String?

    /// Creates the service.
    ///
    /// - Parameters:
    ///   - source: Profile's views, for batch jobs, estimates and explanations.
    ///   - jobs: The runner batch jobs are queued on (its partition is this replica's).
    ///   - changed: Called after memberships changed (wakes the outbox relay).
    ///   - forwardingError: The relay's last error, for `GetOutboxStatus`.
    public init(
        engine: SegmentationEngine,
        source: any ViewSource,
        jobs: EvaluationJobs,
        logger: Logger,
        changed: @escaping @Sendable () -> Void = {},
        forwardingError: @escaping @Sendable () -> String? = { nil }
    ) {
        self.engine = engine
        self.source = source
        self.jobs = jobs
        self.logger = logger
        self.changed = changed
        self.forwardingError = forwardingError
    }

    /// `AcceptStateChanges` for a caller in this process; the server serves
    /// ``acceptStateChangesKeepingBytes``.
    public func acceptStateChanges(
        request: Cdp_Segmentation_V1_AcceptStateChangesRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_AcceptStateChangesResponse {
        try await accept(try request.changes.map(ReceivedStateChange.init))
    }

    /// `AcceptStateChanges` as the server serves it: each change is decoded from the call and also kept
    /// as it came, for the state log (see `AcceptStateChangesRequestChangeBytes` in segmentation.proto).
    public var acceptStateChangesKeepingBytes: ServerMethod {
        .unary(Cdp_Segmentation_V1_Segmentation.Method.acceptStateChangesChangeBytes) { [self] request, _ in
            try await accept(try ReceivedStateChange.decode(request.changes, field: "changes"))
        }
    }

    private func accept(_ changes: [ReceivedStateChange]) async throws -> Cdp_Segmentation_V1_AcceptStateChangesResponse
    {
        let result: (accepted: Int, stale: Int, evaluated: Int, transitions: Transitions)
        do {
            result = try await engine.acceptStateChanges(changes)
        } catch let error as RPCError {
            throw error
        } catch {
            logger.error("segmentation store failed; the call was rolled back", metadata: ["error": "\(error)"])
            throw RPCError(code: .unavailable, message: "segmentation could not store the results (\(error)); retry")
        }
        if result.transitions.announced { changed() }
        var response = Cdp_Segmentation_V1_AcceptStateChangesResponse()
        response.accepted = UInt32(result.accepted)
        response.stale = UInt32(result.stale)
        response.evaluated = UInt32(result.evaluated)
        return response
    }

    // MARK: - Definitions

    public func createSegment(
        request: Cdp_Segmentation_V1_CreateSegmentRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_Segment {
        let record = try await engine.createSegment(
            name: request.name,
            pql: request.pql,
            entityType: request.entityType,
            mode: request.mode
        )
        var segment = Self.message(record, realized: 0)
        segment.evaluationJobID = try await evaluateExistingViews(of: record)
        logger.info(
            "segment created",
            metadata: ["segment": "\(record.id)", "name": "\(record.name)", "job": "\(segment.evaluationJobID)"]
        )
        return segment
    }

    /// Starts a batch job that evaluates `record` over every existing view of this replica's partition,
    /// so that a new or redefined segment has its members without a manual Evaluate; returns the job's
    /// id, or "" when there is no profile service to read views from.
    private func evaluateExistingViews(of record: SegmentRecord) async throws -> String {
        let (partition, partitions) = jobs.assignment
        let job = try await engine.newJob(
            segments: [record.id],
            asOf: await engine.currentTime(),
            partition: partition,
            partitions: partitions
        )
        jobs.submit(job)
        return job.id
    }

    public func getSegment(
        request: Cdp_Segmentation_V1_GetSegmentRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_Segment {
        let record = try await engine.segment(request.id)
        return Self.message(record, realized: try await engine.realizedCount(request.id))
    }

    public func listSegments(
        request: Cdp_Segmentation_V1_ListSegmentsRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_ListSegmentsResponse {
        var response = Cdp_Segmentation_V1_ListSegmentsResponse()
        response.segments = try await engine.listSegments().map { Self.message($0.0, realized: $0.1) }
        return response
    }

    public func updateSegment(
        request: Cdp_Segmentation_V1_UpdateSegmentRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_Segment {
        let before = try await engine.segment(request.id)
        let record = try await engine.updateSegment(
            id: request.id,
            name: request.hasName ? request.name : nil,
            pql: request.hasPql ? request.pql : nil,
            mode: request.hasMode ? request.mode : nil
        )
        var segment = Self.message(record, realized: try await engine.realizedCount(request.id))
        if record.pql != before.pql || record.mode != before.mode {
            segment.evaluationJobID = try await evaluateExistingViews(of: record)
        }
        return segment
    }

    public func deleteSegment(
        request: Cdp_Segmentation_V1_DeleteSegmentRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_DeleteSegmentResponse {
        let exited = try await engine.deleteSegment(id: request.id)
        if exited > 0 { changed() }
        var response = Cdp_Segmentation_V1_DeleteSegmentResponse()
        response.exited = UInt64(exited)
        return response
    }

    static func message(_ record: SegmentRecord, realized: UInt64) -> Cdp_Segmentation_V1_Segment {
        var segment = Cdp_Segmentation_V1_Segment()
        segment.id = record.id
        segment.name = record.name
        segment.pql = record.pql
        segment.entityType = record.entityType
        segment.mode = record.mode
        segment.createdAt = Google_Protobuf_Timestamp(date: record.createdAt)
        segment.updatedAt = Google_Protobuf_Timestamp(date: record.updatedAt)
        segment.realized = realized
        segment.dependsOn = record.dependsOn
        segment.dependsOnTime = record.dependsOnTime
        return segment
    }

    // MARK: - Evaluation

    public func estimate(
        request: Cdp_Segmentation_V1_EstimateRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_EstimateResponse {
        guard [.unspecified, .person, .account].contains(request.entityType) else {
            throw RPCError(
                code: .invalidArgument,
                message: "entity_type must be PERSON or ACCOUNT, not \(request.entityType)"
            )
        }
        let entityType: Cdp_Model_V1_EntityType = request.entityType == .account ? .account : .person
        let segment = try await engine.compile(request.pql, entityType)
        let asOf = request.hasAsOf ? request.asOf.date : await engine.currentTime()
        let (partition, partitions) = jobs.assignment
        var (matched, evaluated, after) = (UInt64(0), UInt64(0), UInt64(0))
        // In chunks, so that streaming changes are taken between them.
        while true {
            let chunk = try await engine.estimate(
                segment,
                entityType: entityType,
                asOf: asOf,
                partition: partition,
                partitions: partitions,
                after: after,
                limit: 2000
            )
            guard let last = chunk.clusters.last else { break }
            matched += UInt64(chunk.matched)
            evaluated += UInt64(chunk.evaluated)
            after = last
        }
        var response = Cdp_Segmentation_V1_EstimateResponse()
        (response.matched, response.evaluated) = (matched, evaluated)
        response.asOf = Google_Protobuf_Timestamp(date: asOf)
        return response
    }

    public func evaluate(
        request: Cdp_Segmentation_V1_EvaluateRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_EvaluationJob {
        let asOf = request.hasAsOf ? request.asOf.date : await engine.currentTime()
        let ids = try await engine.jobSegments(request.segmentIds, asOf: asOf)
        let (partition, partitions) = jobs.assignment
        let job = try await engine.newJob(segments: ids, asOf: asOf, partition: partition, partitions: partitions)
        jobs.submit(job)
        return job
    }

    public func getEvaluation(
        request: Cdp_Segmentation_V1_GetEvaluationRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_EvaluationJob {
        try await engine.job(request.id)
    }

    public func getMembers(
        request: Cdp_Segmentation_V1_GetMembersRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_GetMembersResponse {
        let limit = request.pageSize == 0 ? 100 : Int(min(request.pageSize, 1000))
        var after: UInt64 = 0
        if !request.pageToken.isEmpty {
            guard let token = UInt64(request.pageToken), token <= UInt64(Int64.max) else {
                throw RPCError(
                    code: .invalidArgument,
                    message: "page_token \"\(request.pageToken)\" is not one GetMembers returned"
                )
            }
            after = token
        }
        let realized: Bool? =
            switch request.status {
            case .realized: true
            case .exited: false
            default: nil
            }
        let members = try await engine.members(of: request.segmentID, realized: realized, after: after, limit: limit)
        var response = Cdp_Segmentation_V1_GetMembersResponse()
        response.members = members.map { membership in
            var member = Cdp_Segmentation_V1_Member()
            member.entityType = membership.entityType
            member.clusterID = membership.cluster
            member.status = membership.realized ? .realized : .exited
            member.since = Google_Protobuf_Timestamp(date: membership.since)
            member.record = membership.record
            member.version = membership.version
            return member
        }
        if members.count == limit, let last = members.last { response.nextPageToken = String(last.cluster) }
        return response
    }

    public func explain(
        request: Cdp_Segmentation_V1_ExplainRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_Explanation {
        let segment = try await engine.segment(request.segmentID)
        let asOf = request.hasAsOf ? request.asOf.date : await engine.currentTime()
        guard
            let view = try await source.view(segment.entityType, identity: request.identity, asOf: asOf)
        else {
            throw RPCError(
                code: .notFound,
                message: "profile has no \(segment.entityType == .account ? "account" : "person") with "
                    + "\(request.identity.namespace):\(request.identity.value)"
            )
        }
        let (outcome, steps) = try await engine.explain(request.segmentID, view, asOf: asOf)
        var explanation = Cdp_Segmentation_V1_Explanation()
        explanation.segmentID = request.segmentID
        explanation.clusterID = view.cluster
        explanation.matched = outcome.matched
        explanation.asOf = Google_Protobuf_Timestamp(date: asOf)
        explanation.steps = steps.map { step in
            var message = Cdp_Segmentation_V1_ExplanationStep()
            message.text = step.text
            message.line = UInt32(step.position.line)
            message.column = UInt32(step.position.column)
            message.result = step.result
            message.entities = step.entities.map { entity in
                var message = Cdp_Segmentation_V1_ExplainedEntity()
                message.kind = entity.kind.rawValue
                message.clusterID = entity.clusterID
                message.key = entity.key
                message.label = entity.label
                message.value = entity.value ?? ""
                return message
            }
            return message
        }
        return explanation
    }

    public func getOutboxStatus(
        request: Cdp_Segmentation_V1_GetOutboxStatusRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_OutboxStatus {
        let status = try await engine.status()
        var response = Cdp_Segmentation_V1_OutboxStatus()
        response.pendingChanges = UInt64(status.pending)
        if let oldest = status.oldest { response.oldestPending = Google_Protobuf_Timestamp(date: oldest) }
        response.sentChanges = UInt64(status.sent)
        response.lastError = forwardingError() ?? ""
        response.scheduledRechecks = UInt64(status.rechecks)
        if let next = status.nextRecheck { response.nextRecheck = Google_Protobuf_Timestamp(date: next) }
        return response
    }
}

/// Sends membership changes to the destination service.
public enum DestinationForwarding {
    /// Sends one chunk, its changes as the outbox stored them; returns once destination acknowledged it.
    ///
    /// - Parameter sender: Who sends: sequences are numbered per sender (each replica has its own store),
    ///   so a receiver dedupes by sender and sequence.
    public static func deliver(
        _ chunk: ChangeChunk,
        sender: String,
        via client: RPCClient,
        timeout: Duration = .seconds(30)
    ) async throws {
        var request = Cdp_Destination_V1_AcceptMembershipChangesRequestBytes()
        request.sender = sender
        request.changes = chunk.serialized
        _ = try await client.unary(
            Cdp_Destination_V1_Destination.Method.acceptMembershipChangesBytes,
            request,
            options: CallOptions(timeout: timeout)
        )
    }
}

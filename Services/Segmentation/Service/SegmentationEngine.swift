import CDPProto
import Foundation
import NIOCore
import RPCCore
import SegmentationEvaluation
import SegmentationLanguage
import SegmentationStore
import SwiftProtobuf

/// Segmentation's state and evaluation on a thread of its own (every store call blocks): the compiled
/// segments, the evaluation of incoming views against every streaming segment, time re-checks, batch
/// chunks, and the bookkeeping of definitions.
public actor SegmentationEngine {
    /// A saved segment and its compiled definition.
    struct Loaded {
        var record: SegmentRecord
        var compiled: CompiledSegment
    }

    /// Segments to evaluate on a view, in dependency order, and the segments they name that are not
    /// among them (read from stored memberships).
    struct Plan {
        var segments: [Loaded]
        var external: Set<String>
    }

    private let executor: any SerialExecutor
    private let store: SQLiteSegmentationStore
    private let now: @Sendable () -> Date
    private var segments: [String: Loaded] = [:]
    private var streamingPlans: [Audience: Plan] = [:]
    private let frame = Frame()
    /// Person clusters erased by privacy requests: views of them are dropped.
    private var forgotten: Set<UInt64>

    /// The dedicated event loop the actor runs on.
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    /// An engine over `store`, on `loop` (one no other work shares), with a clock (tests move it).
    public init(
        store: SQLiteSegmentationStore,
        loop: any EventLoop,
        now: @escaping @Sendable () -> Date = Date.init
    )
        throws
    {
        self.executor = loop.executor
        self.store = store
        self.now = now
        self.forgotten = try store.forgotten()
        let records = try store.segments()
        let audiences = Dictionary(uniqueKeysWithValues: records.map { ($0.id, Self.audience($0.entityType)) })
        for record in records {
            // Saved definitions passed the checker when saved; the checker only grows more permissive.
            let compiled = try CompiledSegment(record.pql, audience: Self.audience(record.entityType)) {
                audiences[$0]
            }
            segments[record.id] = Loaded(record: record, compiled: compiled)
        }
        try store.failInterruptedJobs(at: now())
        streamingPlans = Self.streamingPlans(segments)
    }

    static func audience(_ entityType: Cdp_Model_V1_EntityType) -> Audience {
        entityType == .account ? .account : .person
    }

    // MARK: - Definitions

    /// Checks and saves a segment.
    public func createSegment(
        name: String,
        pql: String,
        entityType: Cdp_Model_V1_EntityType,
        mode: Cdp_Segmentation_V1_EvaluationMode
    ) throws -> SegmentRecord {
        guard entityType == .person || entityType == .account || entityType == .unspecified else {
            throw RPCError(code: .invalidArgument, message: "entity_type must be PERSON or ACCOUNT, not \(entityType)")
        }
        let entityType: Cdp_Model_V1_EntityType = entityType == .account ? .account : .person
        let definition = try check(pql, entityType)
        let record = try store.createSegment(
            name: name.isEmpty ? "unnamed" : name,
            pql: pql,
            entityType: entityType,
            mode: mode == .batch ? .batch : .streaming,
            dependsOn: definition.segmentReferences.sorted(),
            dependsOnTime: definition.dependsOnTime,
            at: now()
        )
        install(record, definition)
        return record
    }

    /// Changes a segment's name, definition or mode.
    public func updateSegment(
        id: String,
        name: String?,
        pql: String?,
        mode: Cdp_Segmentation_V1_EvaluationMode?
    )
        throws -> SegmentRecord
    {
        var record = try loaded(id).record
        var definition = segments[id]!.compiled.definition
        if let pql {
            definition = try check(pql, record.entityType)
            if let cycle = cycle(from: id, through: definition.segmentReferences) {
                throw RPCError(
                    code: .invalidArgument,
                    message: "inSegment would make a cycle: \(cycle.joined(separator: " → "))"
                )
            }
            record.pql = pql
            record.dependsOn = definition.segmentReferences.sorted()
            record.dependsOnTime = definition.dependsOnTime
        }
        if let name {
            guard !name.isEmpty else {
                throw RPCError(code: .invalidArgument, message: "a segment's name cannot be empty")
            }
            record.name = name
        }
        if let mode { record.mode = mode == .batch ? .batch : .streaming }
        record.updatedAt = now()
        try store.updateSegment(record)
        install(record, definition)
        return record
    }

    /// Deletes a segment; its members exit. Refused while another segment names it.
    public func deleteSegment(id: String) throws -> Int {
        _ = try loaded(id)
        let dependents = segments.values.filter { $0.record.dependsOn.contains(id) }.map(\.record.id).sorted()
        guard dependents.isEmpty else {
            throw RPCError(
                code: .failedPrecondition,
                message:
                    "segment \(id) is named by inSegment in \(dependents.joined(separator: ", ")); change those first"
            )
        }
        let exited = try store.deleteSegment(id, at: now())
        segments[id] = nil
        streamingPlans = Self.streamingPlans(segments)
        return exited
    }

    /// A segment by id.
    public func segment(_ id: String) throws -> SegmentRecord { try loaded(id).record }

    /// Every segment with its realized count.
    public func listSegments() throws -> [(SegmentRecord, UInt64)] {
        let counts = try store.realizedCounts()
        return segments.values.map(\.record).sorted { Self.number($0.id) < Self.number($1.id) }.map {
            ($0, counts[$0.id] ?? 0)
        }
    }

    /// How many members a segment has realized.
    public func realizedCount(_ id: String) throws -> UInt64 { try store.realizedCount(of: id) }

    /// A definition checked and compiled for an estimate.
    public func compile(_ pql: String, _ entityType: Cdp_Model_V1_EntityType) throws -> CompiledSegment {
        CompiledSegment(try check(pql, entityType == .account ? .account : .person))
    }

    private func loaded(_ id: String) throws -> Loaded {
        guard let loaded = segments[id] else { throw RPCError(code: .notFound, message: "no segment has the id \(id)") }
        return loaded
    }

    private static func number(_ id: String) -> Int { Int(id.dropFirst()) ?? 0 }

    private func check(_ pql: String, _ entityType: Cdp_Model_V1_EntityType) throws -> Definition {
        let known = segments.mapValues { Self.audience($0.record.entityType) }
        do {
            return try Definition(pql, audience: Self.audience(entityType)) { known[$0] }
        } catch {
            throw RPCError(code: .invalidArgument, message: "invalid definition: \(error)")
        }
    }

    private func install(_ record: SegmentRecord, _ definition: Definition) {
        segments[record.id] = Loaded(record: record, compiled: CompiledSegment(definition))
        streamingPlans = Self.streamingPlans(segments)
    }

    /// The path by which `id` would reach itself through `references`, if any.
    private func cycle(from id: String, through references: Set<String>) -> [String]? {
        func path(_ from: String, _ visited: [String]) -> [String]? {
            if from == id { return visited + [from] }
            guard !visited.contains(from), let next = segments[from] else { return nil }
            for reference in next.record.dependsOn {
                if let found = path(reference, visited + [from]) { return found }
            }
            return nil
        }
        for reference in references.sorted() {
            if let found = path(reference, [id]) { return found }
        }
        return nil
    }

    /// The plans of the streaming segments per audience.
    static func streamingPlans(_ segments: [String: Loaded]) -> [Audience: Plan] {
        var plans: [Audience: Plan] = [:]
        for kind in Audience.allCases {
            let ids = segments.values.filter { $0.record.isStreaming && audience(for: $0) == kind }.map(\.record.id)
            plans[kind] = plan(ids, segments)
        }
        return plans
    }

    private static func audience(for loaded: Loaded) -> Audience { audience(loaded.record.entityType) }

    /// The segments `ids` in dependency order (a segment after those it names).
    static func plan(_ ids: [String], _ segments: [String: Loaded]) -> Plan {
        var ordered: [Loaded] = []
        var placed: Set<String> = []
        let wanted = Set(ids)
        func place(_ id: String) {
            guard wanted.contains(id), !placed.contains(id), let loaded = segments[id] else { return }
            placed.insert(id)
            for reference in loaded.record.dependsOn { place(reference) }
            ordered.append(loaded)
        }
        for id in ids.sorted(by: { number($0) < number($1) }) { place(id) }
        let external = Set(ordered.flatMap(\.record.dependsOn)).subtracting(wanted)
        return Plan(segments: ordered, external: external)
    }

    // MARK: - Evaluation

    /// Evaluates the frame's view against a plan as of the frame's time: each segment's result, and
    /// the earliest time the result of a streaming one can change with time alone (batch segments
    /// change only when evaluated).
    private func evaluate(_ plan: Plan, entityType: Cdp_Model_V1_EntityType) throws -> ([String: Bool], Double?) {
        if !plan.external.isEmpty {
            frame.memberships = try store.realizedSegments(entityType, frame.clusterID).intersection(plan.external)
        }
        var results: [String: Bool] = [:]
        results.reserveCapacity(plan.segments.count)
        var validUntil: Double?
        for loaded in plan.segments {
            let outcome = loaded.compiled.evaluate(in: frame)
            results[loaded.record.id] = outcome.matched
            if outcome.matched { frame.memberships.insert(loaded.record.id) }
            if loaded.record.isStreaming, let until = outcome.validUntil {
                validUntil = min(validUntil ?? until, until)
            }
        }
        return (results, validUntil)
    }

    /// Takes changed views from profile: each newer than the one held is evaluated against every
    /// streaming segment of its audience; memberships, transitions and re-checks commit together.
    public func acceptViews(
        _ changes: [Cdp_Segmentation_V1_ViewChange]
    ) throws -> (
        accepted: Int, stale: Int, transitions: Transitions
    ) {
        let time = now()
        var evaluations: [EntityEvaluation] = []
        var latest: [String: UInt64] = [:]
        var stale = 0
        for change in changes {
            let entityType: Cdp_Model_V1_EntityType
            let cluster: UInt64
            var view: EntityView?
            switch change.view {
            case .person(let person)?:
                (entityType, cluster, view) = (.person, person.person.clusterID, .person(person))
            case .account(let account)?:
                (entityType, cluster, view) = (.account, account.account.clusterID, .account(account))
            case .removed(let removed)?:
                guard removed.entityType == .person || removed.entityType == .account else {
                    throw RPCError(
                        code: .invalidArgument,
                        message: "a removed entity is a PERSON or an ACCOUNT, not \(removed.entityType)"
                    )
                }
                (entityType, cluster) = (removed.entityType, removed.clusterID)
            case nil:
                throw RPCError(code: .invalidArgument, message: "a view change carries no view")
            }
            // The store keeps ids and versions as SQLite integers (signed 64-bit).
            guard cluster <= UInt64(Int64.max), change.version <= UInt64(Int64.max) else {
                throw RPCError(
                    code: .invalidArgument,
                    message:
                        "cluster_id \(cluster) or version \(change.version) is above 2^63 - 1, the largest this service "
                        + "stores"
                )
            }
            // An erased person's view that was on its way: dropped (counted as stale).
            if entityType == .person, forgotten.contains(cluster) {
                stale += 1
                continue
            }
            let name = "\(entityType.rawValue)/\(cluster)"
            let held = try latest[name] ?? store.viewVersion(entityType, cluster)
            if let held, held >= change.version {
                stale += 1
                continue
            }
            latest[name] = change.version
            guard let view else {
                evaluations.append(
                    EntityEvaluation(
                        entityType: entityType,
                        cluster: cluster,
                        version: change.version,
                        record: nil,
                        results: [:],
                        recheck: .clear
                    )
                )
                continue
            }
            evaluations.append(try evaluateStreaming(view, version: change.version, at: time))
        }
        let transitions = try store.commit(evaluations, at: time)
        return (changes.count - stale, stale, transitions)
    }

    private func evaluateStreaming(_ view: EntityView, version: UInt64?, at time: Date) throws -> EntityEvaluation {
        frame.load(view, asOf: time.timeIntervalSince1970)
        let plan = streamingPlans[view.audience] ?? Plan(segments: [], external: [])
        let (results, validUntil) = try evaluate(plan, entityType: view.entityType)
        let recheck: Recheck =
            try validUntil.map { .schedule(due: Date(timeIntervalSince1970: $0), view: try Self.bytes(of: view)) }
            ?? .clear
        return EntityEvaluation(
            entityType: view.entityType,
            cluster: view.cluster,
            version: version,
            record: view.record,
            results: results,
            recheck: recheck
        )
    }

    private static func bytes(of view: EntityView) throws -> Data {
        switch view {
        case .person(let person): try person.serializedBytes()
        case .account(let account): try account.serializedBytes()
        }
    }

    /// Re-evaluates the stored views whose memberships can have changed with time by now. Returns how
    /// many views were re-checked.
    public func runDueRechecks(limit: Int = 1000) throws -> (checked: Int, transitions: Transitions) {
        let time = now()
        let due = try store.dueRechecks(at: time, limit: limit)
        guard !due.isEmpty else { return (0, Transitions()) }
        let evaluations = try due.map { recheck in
            let view: EntityView =
                recheck.entityType == .account
                ? .account(try Cdp_Profile_V1_AccountView(serializedBytes: recheck.view))
                : .person(try Cdp_Profile_V1_PersonView(serializedBytes: recheck.view))
            return try evaluateStreaming(view, version: nil, at: time)
        }
        return (due.count, try store.commit(evaluations, at: time))
    }

    /// The segments a batch job as of `asOf` evaluates: `requested` (all if empty), checked to exist.
    ///
    /// A streaming segment's memberships always mean now, so a job as of a past time (more than a
    /// minute back, for clock skew) leaves streaming segments alone: named ones are refused, and "all"
    /// means all batch segments.
    public func jobSegments(_ requested: [String], asOf: Date) throws -> [String] {
        var ids = try batchSegments(requested)
        if asOf < now().addingTimeInterval(-60) {
            let streaming = ids.filter { segments[$0]?.record.isStreaming ?? false }
            if !requested.isEmpty && !streaming.isEmpty {
                throw RPCError(
                    code: .failedPrecondition,
                    message: "\(streaming.joined(separator: ", ")) "
                        + (streaming.count == 1 ? "is a streaming segment" : "are streaming segments")
                        + ", whose members are always as of now: evaluate as of now, or give a past as_of to a "
                        + "batch segment (or to Estimate)"
                )
            }
            ids.removeAll { streaming.contains($0) }
        }
        guard !ids.isEmpty else {
            throw RPCError(
                code: .failedPrecondition,
                message: requested.isEmpty && !segments.isEmpty
                    ? "there are no batch segments to evaluate as of a past time" : "there are no segments to evaluate"
            )
        }
        return ids
    }

    /// The ids of `requested` segments (all if empty) for a batch job, checked to exist; only those of
    /// `entityType` if given.
    public func batchSegments(_ requested: [String], of entityType: Cdp_Model_V1_EntityType? = nil) throws -> [String] {
        let ids = requested.isEmpty ? segments.keys.sorted { Self.number($0) < Self.number($1) } : requested
        for id in ids { _ = try loaded(id) }
        guard let entityType else { return ids }
        return ids.filter { segments[$0]?.record.entityType == entityType }
    }

    /// Evaluates a chunk of a batch job's views against `ids` as of `asOf` and commits the results.
    /// For an entity whose streaming view was taken since `started` (the job's start), the results for
    /// streaming segments yield to that view's: the scan may have read an older one.
    public func evaluateBatch(
        _ views: [EntityView],
        segments ids: [String],
        asOf: Date,
        started: Date = .distantFuture
    ) throws -> Transitions {
        let streaming = Set(ids.filter { segments[$0]?.record.isStreaming ?? false })
        var plans: [Audience: Plan] = [:]
        for kind in Audience.allCases {
            plans[kind] = Self.plan(
                ids.filter { segments[$0].map { Self.audience(for: $0) == kind } ?? false },
                segments
            )
        }
        let views = views.filter { $0.entityType != .person || !forgotten.contains($0.cluster) }
        let evaluations = try views.map { view in
            frame.load(view, asOf: asOf.timeIntervalSince1970)
            let (results, validUntil) = try evaluate(plans[view.audience]!, entityType: view.entityType)
            // A streaming segment's time-dependent membership is re-checked like one from a streaming
            // view (jobs evaluate streaming segments only as of now).
            let recheck: Recheck =
                validUntil.map {
                    .scheduleUnlessEarlier(due: Date(timeIntervalSince1970: $0), view: { try Self.bytes(of: view) })
                } ?? .keep
            var evaluation = EntityEvaluation(
                entityType: view.entityType,
                cluster: view.cluster,
                version: nil,
                record: view.record,
                results: results,
                recheck: recheck
            )
            if !streaming.isEmpty { evaluation.yieldsToStreaming = (started, streaming) }
            return evaluation
        }
        return try store.commit(evaluations, at: now())
    }

    /// After a batch job: entities of the partition realized in `ids` that the scan did not see
    /// (profile no longer has them) exit; not those whose streaming view was taken since the job
    /// `started` (they may have come after the scan passed their place; profile's stream tells their
    /// removals).
    public func exitUnseen(
        segments ids: [String],
        seen: Set<UInt64>,
        partition: Int,
        partitions: Int,
        started: Date = .distantFuture
    ) throws
        -> Transitions
    {
        let missing = try store.realizedClusters(
            in: ids,
            partition: partition,
            partitions: partitions,
            streamedBefore: started
        ).filter { !seen.contains($0.cluster) }
        let evaluations = missing.map { entity in
            EntityEvaluation(
                entityType: entity.entityType,
                cluster: entity.cluster,
                version: nil,
                record: nil,
                results: [:],
                recheck: .clear
            )
        }
        return try store.commit(evaluations, at: now())
    }

    /// The segments an entity is realized in (for inSegment in estimates and explanations).
    public func realizedSegments(_ entityType: Cdp_Model_V1_EntityType, _ cluster: UInt64) throws -> Set<String> {
        try store.realizedSegments(entityType, cluster)
    }

    /// Explains a segment's result on a view.
    public func explain(_ id: String, _ view: EntityView, asOf: Date) throws -> (Outcome, [ExplanationStep]) {
        let loaded = try loaded(id)
        frame.load(view, asOf: asOf.timeIntervalSince1970)
        frame.memberships = try store.realizedSegments(view.entityType, view.cluster)
        return loaded.compiled.explain(in: frame)
    }

    // MARK: - Privacy

    /// Erases persons (a privacy request): see ``SQLiteSegmentationStore/erase(clusters:at:)``. From
    /// now on their views are dropped.
    public func erase(clusters: [UInt64]) throws -> (exited: Int, records: Int) {
        let erased = try store.erase(clusters: clusters, at: now())
        forgotten.formUnion(clusters)
        return erased
    }

    /// How many changes made before `clusters` were erased, with their records, wait in the outbox.
    public func unsentChanges(of clusters: [UInt64]) throws -> Int { try store.unsentChanges(of: clusters) }

    /// Clears the write-ahead log of deleted data; false if it could not yet.
    public func clearLog() -> Bool { store.clearLog() }

    // MARK: - Members, jobs, outbox

    /// One page of a segment's members.
    public func members(of id: String, realized: Bool?, after: UInt64, limit: Int) throws -> [MembershipRecord] {
        _ = try loaded(id)
        return try store.members(of: id, realized: realized, after: after, limit: limit)
    }

    /// Starts a job record.
    public func newJob(
        segments ids: [String],
        asOf: Date,
        partition: Int,
        partitions: Int
    ) throws
        -> Cdp_Segmentation_V1_EvaluationJob
    {
        var job = Cdp_Segmentation_V1_EvaluationJob()
        job.id = "job-\(try store.nextJobNumber())"
        job.state = .running
        job.segmentIds = ids
        job.asOf = Google_Protobuf_Timestamp(date: asOf)
        job.partition = UInt32(partition)
        job.partitions = UInt32(partitions)
        job.startedAt = Google_Protobuf_Timestamp(date: now())
        try store.save(job)
        return job
    }

    /// Saves a job's progress.
    public func save(_ job: Cdp_Segmentation_V1_EvaluationJob) throws { try store.save(job) }

    /// A job by id.
    public func job(_ id: String) throws -> Cdp_Segmentation_V1_EvaluationJob {
        guard let job = try store.job(id) else { throw RPCError(code: .notFound, message: "no evaluation job \(id)") }
        return job
    }

    /// The clock.
    public func currentTime() -> Date { now() }

    /// The next chunk of membership changes for destination.
    public func nextChangeChunk(limit: Int) throws -> ChangeChunk? { try store.nextChangeChunk(limit: limit) }

    /// Marks a chunk delivered.
    public func acknowledge(_ chunk: ChangeChunk) throws { try store.acknowledge(chunk) }

    /// The outbox and the re-checks.
    public func status() throws -> (
        pending: Int, oldest: Date?, sent: Int64, rechecks: Int, nextRecheck: Date?
    ) {
        let outbox = try store.outboxStatus()
        let rechecks = try store.rechecks()
        return (outbox.pending, outbox.oldest, outbox.sent, rechecks.count, rechecks.next)
    }
}

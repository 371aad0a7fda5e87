import CDPProto
import Foundation
import NIOCore
import RPCCore
import SegmentationEvaluation
import SegmentationLanguage
import SegmentationState
import SegmentationStore
import SwiftProtobuf

/// Segmentation's state and evaluation on a thread of its own (every store call blocks): the compiled
/// segments, the entity state profile's changes keep up to date (in memory, saved with every commit),
/// the evaluation of the persons and accounts each change touches against every streaming segment,
/// time re-checks, batch jobs and estimates over the state, and the bookkeeping of definitions.
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
    /// The frames a batch job's chunk or an estimate is evaluated in, one per slice (``frame`` first).
    private let sliceFrames: [Frame]
    /// What segments are evaluated on.
    private var state: EntityState
    private let stateConfiguration: EntityState.Configuration
    /// Person clusters erased by privacy requests: changes about them are dropped.
    private var forgotten: Set<UInt64>
    /// The last chunk a batch job evaluated, not yet committed: the job's next chunk commits it on
    /// another core while it evaluates, and every other call that writes memberships or changes the
    /// state commits it first, so that commits keep the order of the evaluations.
    private var pendingBatch: [EntityEvaluation] = []
    /// What committing pending chunks did in other calls, for the job's next chunk to report.
    private var batchOutcome: Result<Transitions, any Error> = .success(Transitions())
    /// Where a job's chunk is committed while the next one is evaluated.
    private let batchCommits = DispatchQueue(label: "segmentation.batch-commits")

    /// The dedicated event loop the actor runs on.
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    /// An engine over `store`, on `loop` (one no other work shares), with a clock (tests move it);
    /// while streaming changes arrive, each chunk of a batch job or an estimate holds the engine for
    /// about `chunkTime` at most (one entity at least), on one thread; otherwise (no streaming change
    /// for `streamingQuiet`) a chunk is evaluated on `evaluationThreads` threads at once (by default,
    /// one per core).
    public init(
        store: SQLiteSegmentationStore,
        loop: any EventLoop,
        state configuration: EntityState.Configuration = .init(),
        chunkTime: Duration = SegmentationEngine.defaultChunkTime,
        streamingQuiet: Duration = SegmentationEngine.streamingQuiet,
        evaluationThreads: Int = System.coreCount,
        now: @escaping @Sendable () -> Date = Date.init
    )
        throws
    {
        self.executor = loop.executor
        self.store = store
        self.chunkTime = chunkTime
        self.quietAfterStreaming = streamingQuiet
        self.now = now
        self.stateConfiguration = configuration
        self.sliceFrames = [frame] + (1..<Self.sliceCount(threads: evaluationThreads)).map { _ in Frame() }
        self.state = try Self.loadState(store, configuration)
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
        commitPendingBatch()
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
    private static func evaluate(
        _ plan: Plan,
        in frame: Frame,
        entityType: Cdp_Model_V1_EntityType,
        store: SQLiteSegmentationStore
    ) throws -> ([String: Bool], Double?) {
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

    /// The state as saved: every item as last applied.
    private static func loadState(
        _ store: SQLiteSegmentationStore,
        _ configuration: EntityState.Configuration
    ) throws -> EntityState {
        let state = EntityState(configuration: configuration)
        try state.load { apply in try store.forEachStateChange(apply) }
        return state
    }

    /// How many persons and accounts the state holds.
    public func stateCounts() -> (persons: Int, accounts: Int) {
        (state.count(of: .person), state.count(of: .account))
    }

    /// Takes changes to the state from profile, serialized here for the state log (in process: tests and
    /// benchmarks); the service passes them on as they came.
    public func acceptStateChanges(
        _ changes: [Cdp_Profile_V1_StateChange]
    ) throws -> (accepted: Int, stale: Int, evaluated: Int, transitions: Transitions) {
        try acceptStateChanges(changes.map(ReceivedStateChange.init))
    }

    /// Takes changes to the state from profile: each newer than the item held is applied; then every
    /// person and account the applied changes touch is evaluated against the streaming segments of its
    /// audience, and the changes (their bytes as profile wrote them), memberships, transitions and
    /// re-checks commit together. A change about an erased person is dropped (counted as stale).
    public func acceptStateChanges(
        _ changes: [ReceivedStateChange]
    ) throws -> (accepted: Int, stale: Int, evaluated: Int, transitions: Transitions) {
        lastStreamingCall = clock.now
        commitPendingBatch()
        for received in changes {
            do {
                try EntityState.check(received.message)
            } catch {
                throw RPCError(code: .invalidArgument, message: "\(error)")
            }
        }
        let time = now()
        state.touchedRoots = streamingRoots
        var touched: Set<EntityState.EntityKey> = []
        var applied: [ReceivedStateChange] = []
        var stale = 0
        let supersededBefore = state.supersededChanges
        do {
            for received in changes {
                if isAboutForgotten(received.message) {
                    stale += 1
                    continue
                }
                switch try state.apply(received.message, touched: &touched) {
                case .applied: applied.append(received)
                case .stale: stale += 1
                }
            }
            let version = changes.map(\.message.version).max()
            let evaluations = try touched.sorted(by: Self.order).compactMap { key in
                try evaluateStreaming(key, version: version, at: time)
            }
            let transitions = try commit(
                evaluations,
                state: applied,
                superseding: state.supersededChanges - supersededBefore,
                at: time
            )
            return (applied.count, stale, evaluations.count, transitions)
        } catch {
            // The state in memory may be ahead of the store: start again from what was committed.
            state = try Self.loadState(store, stateConfiguration)
            throw error
        }
    }

    /// Commits evaluations (with the state changes they were made on) through the store, telling it
    /// which records no change replaced since their last commit, then notes every record evaluated as
    /// committed: the next evaluation of an entity whose record no change replaced since neither reads
    /// nor compares it.
    private func commit(
        _ evaluations: [EntityEvaluation],
        state changes: [ReceivedStateChange] = [],
        superseding superseded: Int = 0,
        forgetting: StateItems = StateItems(),
        at time: Date
    ) throws -> Transitions {
        let evaluations = notingSavedRecords(evaluations)
        let transitions = try store.commit(
            evaluations,
            state: changes,
            superseding: superseded,
            forgetting: forgetting,
            at: time
        )
        markRecordsSaved(evaluations)
        return transitions
    }

    /// `evaluations` with each one's record noted as saved where no change replaced it since the last
    /// commit that evaluated it.
    private func notingSavedRecords(_ evaluations: [EntityEvaluation]) -> [EntityEvaluation] {
        var evaluations = evaluations
        for index in evaluations.indices where evaluations[index].record != nil {
            let key = EntityState.EntityKey(evaluations[index].entityType, evaluations[index].cluster)
            evaluations[index].recordSaved = state.isRecordSaved(key)
        }
        return evaluations
    }

    /// Notes the records of committed evaluations as saved (no change replaced them since: changes are
    /// applied only after what was evaluated before them is committed).
    private func markRecordsSaved(_ evaluations: [EntityEvaluation]) {
        for evaluation in evaluations where evaluation.record != nil {
            state.markRecordSaved(EntityState.EntityKey(evaluation.entityType, evaluation.cluster))
        }
    }

    /// Commits the chunk a batch job evaluated last, if it waits, before anything else writes
    /// memberships or changes the state: commits keep the order of the evaluations. What it did (or
    /// why it failed) goes to the job's next chunk.
    private func commitPendingBatch() {
        guard !pendingBatch.isEmpty else { return }
        let evaluations = pendingBatch
        pendingBatch = []
        do {
            let transitions = try commit(evaluations, at: now())
            batchOutcome = batchOutcome.map { $0.adding(transitions) }
        } catch {
            batchOutcome = .failure(error)
        }
    }

    /// Commits a batch job's last chunk if it waits (the job stopped early) and returns what was
    /// committed for the job since its last chunk.
    ///
    /// - Throws: why a commit of its chunks failed.
    public func endBatch() throws -> Transitions {
        commitPendingBatch()
        let outcome = batchOutcome
        batchOutcome = .success(Transitions())
        return try outcome.get()
    }

    private static func order(_ left: EntityState.EntityKey, _ right: EntityState.EntityKey) -> Bool {
        left.entity.rawValue != right.entity.rawValue
            ? left.entity.rawValue < right.entity.rawValue : left.cluster < right.cluster
    }

    /// The roots a change is evaluated again on, beyond one whose own record it replaces: those of an
    /// audience some streaming segment evaluates.
    private var streamingRoots: EntityState.Roots {
        var roots: EntityState.Roots = []
        if streamingPlans[.person]?.segments.isEmpty == false { roots.insert(.persons) }
        if streamingPlans[.account]?.segments.isEmpty == false { roots.insert(.accounts) }
        return roots
    }

    /// Whether a change gives data of a person a privacy request erased.
    private func isAboutForgotten(_ change: Cdp_Profile_V1_StateChange) -> Bool {
        guard !forgotten.isEmpty else { return false }
        switch change.item {
        case .entity(let entity)?: return entity.entityType == .person && forgotten.contains(entity.clusterID)
        case .link(let link)?:
            return link.entityType != .opportunity && link.present && forgotten.contains(link.fromClusterID)
        case .event(let event)?: return forgotten.contains(event.personClusterID)
        case nil: return false
        }
    }

    /// Evaluates a touched person or account against the streaming segments as of `time`; an entity
    /// without a record exits everything. Nil for what is not a root or was erased.
    private func evaluateStreaming(
        _ key: EntityState.EntityKey,
        version: UInt64?,
        at time: Date
    ) throws -> EntityEvaluation? {
        guard key.entity == .person || key.entity == .account, key.cluster != 0 else { return nil }
        if key.entity == .person, forgotten.contains(key.cluster) { return nil }
        guard state.hasRecord(key.entity, key.cluster) else {
            return EntityEvaluation(
                entityType: key.entity,
                cluster: key.cluster,
                version: nil,
                record: nil,
                results: [:],
                recheck: .clear
            )
        }
        // Without streaming segments of its audience there is nothing to decide (batch segments change
        // only when evaluated; a removal above still exits them).
        guard streamingPlans[Self.audience(key.entity)]?.segments.isEmpty == false,
            let view = state.view(key, asOf: time)
        else { return nil }
        return try evaluateStreaming(view, version: version, at: time)
    }

    private func evaluateStreaming(_ view: EntityView, version: UInt64?, at time: Date) throws -> EntityEvaluation {
        frame.load(view, asOf: time.timeIntervalSince1970)
        let plan = streamingPlans[view.audience] ?? Plan(segments: [], external: [])
        let (results, validUntil) = try Self.evaluate(plan, in: frame, entityType: view.entityType, store: store)
        let recheck: Recheck =
            Self.recheckTime(view, validUntil, after: time, streaming: !plan.segments.isEmpty, state: state).map {
                .schedule(due: $0)
            }
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

    /// When an entity's memberships in streaming segments (`streaming`: some were evaluated) can next
    /// change with time alone: when a condition's value changes (`validUntil`), or when a person's event
    /// dated after `time` comes into the view.
    private static func recheckTime(
        _ view: EntityView,
        _ validUntil: Double?,
        after time: Date,
        streaming: Bool,
        state: EntityState
    ) -> Date? {
        var due = validUntil.map { Date(timeIntervalSince1970: $0) }
        if streaming, view.entityType == .person,
            let next = state.nextEventTime(ofPerson: view.cluster, after: time)
        {
            due = min(due ?? next, next)
        }
        return due
    }

    /// Re-evaluates the entities whose memberships can have changed with time by now, from the state.
    /// Returns how many were re-checked.
    public func runDueRechecks(limit: Int = 1000) throws -> (checked: Int, transitions: Transitions) {
        commitPendingBatch()
        let time = now()
        let due = try store.dueRechecks(at: time, limit: limit)
        guard !due.isEmpty else { return (0, Transitions()) }
        var evaluations: [EntityEvaluation] = []
        var absent: [DueRecheck] = []
        for recheck in due {
            let key = EntityState.EntityKey(recheck.entityType, recheck.cluster)
            // An entity the state does not hold leaves by its removal, not by a re-check.
            guard let view = state.view(key, asOf: time) else {
                absent.append(recheck)
                continue
            }
            evaluations.append(try evaluateStreaming(view, version: nil, at: time))
        }
        if !absent.isEmpty { try store.clearRechecks(absent) }
        return (due.count, try commit(evaluations, at: time))
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

    /// Evaluates the next chunk of a batch job: at most `limit` entities of `entityType` in the
    /// partition with clusters above `after`, fewer while streaming changes arrive (see
    /// ``defaultChunkTime``), from the state as of `asOf`, against `ids`. Returns the clusters
    /// evaluated (empty at the end) and the transitions committed since the job's last chunk.
    ///
    /// A chunk's results are committed by the next call, on another core while it evaluates its own
    /// chunk (so a job uses both cores), or by the first call that writes memberships or changes the
    /// state in between, whichever comes first; the call that returns no clusters commits the last.
    ///
    /// `asOf` nil means now, at each chunk: a job as of now evaluates streaming segments, whose members
    /// are always as of now, and changes that arrive while it runs must not be judged as of the job's
    /// start (an event after it would not count, and the member the stream just realized would exit).
    ///
    /// - Throws: why committing an earlier chunk failed, or this chunk's error.
    public func evaluateBatch(
        _ entityType: Cdp_Model_V1_EntityType,
        segments ids: [String],
        asOf: Date?,
        partition: Int,
        partitions: Int,
        after: UInt64,
        limit: Int
    ) throws -> (clusters: [UInt64], transitions: Transitions) {
        let previous = notingSavedRecords(pendingBatch)
        pendingBatch = []
        let outcome = batchOutcome
        batchOutcome = .success(Transitions())
        var transitions = try outcome.get()
        let asOf = asOf ?? now()
        let store = self.store
        let time = now()
        let commitPrevious: (@Sendable () throws -> Transitions)? =
            previous.isEmpty ? nil : { @Sendable in try store.commit(previous, at: time) }
        let (committed, chunk) = try overlapping(commitPrevious, on: batchCommits) {
            () throws -> (clusters: [UInt64], results: [EntityEvaluation]) in
            let plans = batchPlans(ids)
            let (state, store) = (self.state, self.store)
            return try mapViews(
                entityType,
                asOf: asOf,
                partition: partition,
                partitions: partitions,
                after: after,
                limit: limit
            ) { view, frame in
                try Self.batchEvaluation(view, plans: plans, asOf: asOf, in: frame, state: state, store: store)
            }
        }
        if let committed {
            markRecordsSaved(previous)
            transitions = transitions.adding(committed)
        }
        pendingBatch = chunk.results
        return (chunk.clusters, transitions)
    }

    /// How long one chunk of a batch job or an estimate may hold the engine while streaming changes
    /// arrive, by default. They wait behind the chunk being evaluated, and a chunk's whole `limit` (500
    /// persons) takes 25–50 ms at the rates jobs ran with the other services busy: a stream at 1,000
    /// events/s reached its members in 90 ms at the median while a job ran, against 5 ms without one
    /// (`pipeline_benchmark.py`). Without streaming changes, chunks take their whole `limit`: each
    /// chunk costs a commit, and 5-millisecond chunks made a job 20% slower.
    public static let defaultChunkTime: Duration = .milliseconds(5)
    private let chunkTime: Duration
    /// Chunks are short for this long after a streaming change (an `acceptStateChanges` call), by
    /// default.
    public static let streamingQuiet: Duration = .seconds(2)
    private let quietAfterStreaming: Duration
    private let clock = ContinuousClock()
    private var lastStreamingCall: ContinuousClock.Instant?

    /// Maps through `transform` the view, as of `asOf`, of each entity of `entityType` in the partition
    /// with a cluster above `after`, in cluster order, for at most `limit` entities. While streaming
    /// changes arrive, on this thread and until ``defaultChunkTime`` (or the engine's `chunkTime`) is
    /// spent (at least one entity); otherwise in slices on every evaluation thread at once, each slice
    /// with its own frame (`transform` runs concurrently: it may only read the state and the store).
    /// Erased persons are passed over. Returns the clusters taken, viewed or passed over (the last is
    /// where the next chunk starts), and the results in cluster order.
    private func mapViews<Result>(
        _ entityType: Cdp_Model_V1_EntityType,
        asOf: Date,
        partition: Int,
        partitions: Int,
        after: UInt64,
        limit: Int,
        _ transform: @escaping (EntityView, Frame) throws -> Result
    ) throws -> (clusters: [UInt64], results: [Result]) {
        let clusters = state.clusters(
            of: entityType,
            partition: partition,
            partitions: partitions,
            after: after,
            limit: limit
        )
        let (state, erased) = (self.state, entityType == .person ? forgotten : [])
        func view(_ cluster: UInt64) -> EntityView? {
            erased.contains(cluster) ? nil : state.view(EntityState.EntityKey(entityType, cluster), asOf: asOf)
        }
        let start = clock.now
        guard let last = lastStreamingCall, start - last < quietAfterStreaming else {
            let results = try slicedMap(clusters, workers: sliceFrames) { cluster, frame in
                try view(cluster).map { try transform($0, frame) }
            }
            return (clusters, results)
        }
        // Streaming changes wait behind this chunk.
        let deadline = start.advanced(by: chunkTime)
        var results: [Result] = []
        for (index, cluster) in clusters.enumerated() {
            if let view = view(cluster) { results.append(try transform(view, frame)) }
            if clock.now >= deadline { return (Array(clusters[...index]), results) }
        }
        return (clusters, results)
    }

    /// How many slices a chunk is evaluated in on `threads` threads: a few per thread, so that a thread
    /// whose slice was quick takes another while a slow one ends.
    private static func sliceCount(threads: Int) -> Int { threads > 1 ? threads * 4 : 1 }

    /// The plans of a batch job's segments `ids`, by audience.
    private func batchPlans(_ ids: [String]) -> [Audience: Plan] {
        var plans: [Audience: Plan] = [:]
        for kind in Audience.allCases {
            plans[kind] = Self.plan(
                ids.filter { segments[$0].map { Self.audience(for: $0) == kind } ?? false },
                segments
            )
        }
        return plans
    }

    /// Evaluates a view in `frame` against a batch job's `plans` as of `asOf`.
    private static func batchEvaluation(
        _ view: EntityView,
        plans: [Audience: Plan],
        asOf: Date,
        in frame: Frame,
        state: EntityState,
        store: SQLiteSegmentationStore
    ) throws -> EntityEvaluation {
        let plan = plans[view.audience]!
        frame.load(view, asOf: asOf.timeIntervalSince1970)
        let (results, validUntil) = try evaluate(plan, in: frame, entityType: view.entityType, store: store)
        // A streaming segment's time-dependent membership is re-checked like one from a streaming
        // change (jobs evaluate streaming segments only as of now).
        let streaming = plan.segments.contains { $0.record.isStreaming }
        let recheck: Recheck =
            recheckTime(view, validUntil, after: asOf, streaming: streaming, state: state).map {
                .scheduleUnlessEarlier(due: $0)
            }
            ?? .keep
        return EntityEvaluation(
            entityType: view.entityType,
            cluster: view.cluster,
            version: nil,
            record: view.record,
            results: results,
            recheck: recheck
        )
    }

    /// Counts the entities of the next chunk (as ``evaluateBatch(_:segments:asOf:partition:partitions:after:limit:)``
    /// takes them) that satisfy `segment` as of `asOf`, without committing anything.
    public func estimate(
        _ segment: CompiledSegment,
        entityType: Cdp_Model_V1_EntityType,
        asOf: Date,
        partition: Int,
        partitions: Int,
        after: UInt64,
        limit: Int
    ) throws -> (clusters: [UInt64], matched: Int, evaluated: Int) {
        let needsMemberships = !segment.definition.segmentReferences.isEmpty
        let store = self.store
        let (clusters, results) = try mapViews(
            entityType,
            asOf: asOf,
            partition: partition,
            partitions: partitions,
            after: after,
            limit: limit
        ) { view, frame in
            frame.load(view, asOf: asOf.timeIntervalSince1970)
            if needsMemberships { frame.memberships = try store.realizedSegments(entityType, view.cluster) }
            return segment.evaluate(in: frame).matched
        }
        return (clusters, results.count { $0 }, results.count)
    }

    /// After a batch job: entities of the partition realized in `ids` that the job did not see (the
    /// state no longer has them) exit.
    public func exitUnseen(
        segments ids: [String],
        seen: Set<UInt64>,
        partition: Int,
        partitions: Int
    ) throws
        -> Transitions
    {
        commitPendingBatch()
        let missing = try store.realizedClusters(in: ids, partition: partition, partitions: partitions)
            .filter { !seen.contains($0.cluster) && !state.hasRecord($0.entityType, $0.cluster) }
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
        return try commit(evaluations, at: now())
    }

    /// The segments an entity is realized in (for inSegment in estimates and explanations).
    public func realizedSegments(_ entityType: Cdp_Model_V1_EntityType, _ cluster: UInt64) throws -> Set<String> {
        try store.realizedSegments(entityType, cluster)
    }

    /// Explains a segment's result on an entity: on the view the state builds, the one its memberships
    /// were decided on (on `view`, profile's, if the state does not hold the entity).
    public func explain(_ id: String, _ view: EntityView, asOf: Date) throws -> (Outcome, [ExplanationStep]) {
        let loaded = try loaded(id)
        let view = state.view(EntityState.EntityKey(view.entityType, view.cluster), asOf: asOf) ?? view
        frame.load(view, asOf: asOf.timeIntervalSince1970)
        frame.memberships = try store.realizedSegments(view.entityType, view.cluster)
        return loaded.compiled.explain(in: frame)
    }

    // MARK: - Privacy

    /// Erases persons (a privacy request): see ``SQLiteSegmentationStore/erase(clusters:at:)``; their
    /// state (record, links, events) goes too, and the accounts that showed them are evaluated again.
    /// From now on changes about them are dropped.
    public func erase(clusters: [UInt64]) throws -> (exited: Int, records: Int) {
        commitPendingBatch()
        let time = now()
        let erased = try store.erase(clusters: clusters, at: time)
        forgotten.formUnion(clusters)
        state.touchedRoots = streamingRoots
        var touched: Set<EntityState.EntityKey> = []
        var items = StateItems()
        for cluster in clusters {
            let dropped = state.forget(person: cluster, touched: &touched)
            items.persons.append(cluster)
            items.links += dropped.links.map { ($0.entity, $0.key) }
            items.events += dropped.events
        }
        do {
            let evaluations = try touched.sorted(by: Self.order).compactMap { key in
                try evaluateStreaming(key, version: nil, at: time)
            }
            _ = try commit(evaluations, forgetting: items, at: time)
        } catch {
            state = try Self.loadState(store, stateConfiguration)
            throw error
        }
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
    public func nextChangeChunk(limit: Int, after: ChangeChunk? = nil) throws -> ChangeChunk? {
        try store.nextChangeChunk(limit: limit, after: after)
    }

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

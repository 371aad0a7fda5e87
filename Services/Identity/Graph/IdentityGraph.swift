/// An identity: a value in a namespace, e.g. (`email`, `p2@townsend.com`) or
/// (`sourceKey`, `102@mkto-1.Marketo`).
public struct Identity: Hashable, Sendable, CustomStringConvertible {
    /// The namespace: `sourceKey`, `email`, `crmId`, `ecid`, `dunsNumber`, `mdm`, …
    public var namespace: String
    /// The value, already normalized (emails trimmed and lowercased by ingestion).
    public var value: String

    /// Creates an identity.
    public init(_ namespace: String, _ value: String) {
        self.namespace = namespace
        self.value = value
    }

    public var description: String { namespace + ":" + value }
}

/// A cluster's id: the sequence number of its oldest identity, so it is deterministic (the oldest
/// cluster survives a merge) and unique at any time (every identity is in exactly one cluster).
public struct ClusterID: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The sequence number of the cluster's oldest identity.
    public var rawValue: UInt64

    /// Creates an id.
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    public static func < (lhs: ClusterID, rhs: ClusterID) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String { "c\(rawValue)" }
}

/// What a change did to the clusters.
public enum GraphEvent: Hashable, Sendable {
    /// Clusters `from` joined `into` (the oldest, which keeps its id).
    case merged(into: ClusterID, from: [ClusterID])
    /// Cluster `from` fell apart into the clusters `into` (one of which may keep the id `from`), each
    /// with what it now holds, so that whoever keeps data under `from` knows where each piece goes. A
    /// split into one cluster is a renaming (the cluster lost the identity that gave it its id); a
    /// split into none, a dissolution (its last identity was removed).
    case split(from: ClusterID, into: [ClusterPart])
}

/// One of the clusters a split left: its id, identities (oldest first) and the keys of the records
/// that link it (sorted).
public struct ClusterPart: Hashable, Sendable {
    /// The cluster's id.
    public var id: ClusterID
    /// Its identities, oldest first.
    public var identities: [Identity]
    /// The keys of the records linking it, sorted.
    public var recordKeys: [String]

    /// Creates a part.
    public init(id: ClusterID, identities: [Identity], recordKeys: [String]) {
        self.id = id
        self.identities = identities
        self.recordKeys = recordKeys
    }
}

/// Why a link was not made.
public struct Conflict: Hashable, Sendable {
    /// Why.
    public enum Kind: Hashable, Sendable {
        /// Both clusters hold a different value of a namespace a cluster may hold only once.
        case uniqueNamespace(String)
        /// The merged cluster would hold more identities than the cap.
        case clusterCap(Int)
    }

    /// The record whose link was refused.
    public var recordKey: String
    /// The identity it could not be linked through.
    public var identity: Identity
    /// Why.
    public var kind: Kind
    /// The clusters that stayed apart.
    public var clusters: [ClusterID]

    /// Creates a conflict.
    public init(recordKey: String, identity: Identity, kind: Kind, clusters: [ClusterID]) {
        self.recordKey = recordKey
        self.identity = identity
        self.kind = kind
        self.clusters = clusters
    }
}

/// A value pattern that is never linked, e.g. test addresses: `email` values matching
/// `.*@example\.com`.
public struct BlockedPattern: Sendable {
    /// The namespace it applies to; nil for every namespace.
    public let namespace: String?
    /// The pattern's source text.
    public let pattern: String
    // Regex is not declared Sendable, but a compiled one is immutable: its lazily lowered program is
    // published with an atomic compare-and-exchange, so matching from several threads is safe.
    nonisolated(unsafe) private let regex: Regex<AnyRegexOutput>

    /// Compiles a pattern; it blocks a value it matches completely, ignoring case.
    ///
    /// - Throws: An error naming the pattern if it is not a valid regular expression.
    public init(namespace: String?, pattern: String) throws {
        self.namespace = namespace
        self.pattern = pattern
        self.regex = try Regex(pattern).ignoresCase()
    }

    /// Whether the pattern blocks `identity`.
    public func blocks(_ identity: Identity) -> Bool {
        if let namespace, namespace != identity.namespace { return false }
        return (try? regex.wholeMatch(in: identity.value)) != nil
    }
}

/// The identity graph of one entity type: identities are nodes, a record links all of its
/// identities, clusters are the connected components.
///
/// An in-memory union-find (path compression, union by size) with member lists, so that a removal
/// can recompute just the affected component and report a split. Every change returns the events it
/// caused and is journaled (``takeChanges()``) for a store to persist. Guardrails: blocked values and
/// patterns, identities that already link too many records, a cap on identities per cluster, and
/// namespaces a cluster may hold one value of; links they refuse are reported and the record keeps
/// the links it could make.
///
/// Identity values and record keys are held as bytes in two ``KeyTable``s and everything else in flat
/// arrays, not as strings in dictionaries: about 290 bytes of heap per linked person record with its
/// two identities, against 500 (`identity-benchmark graph`).
public struct IdentityGraph: Sendable {
    /// The guardrails.
    public struct Configuration: Sendable {
        /// The most identities a cluster may hold; a link that would exceed it is refused.
        public var maxIdentitiesPerCluster: Int
        /// Namespaces of which a cluster may hold only one value (e.g. `crmId` for persons).
        public var uniqueNamespaces: Set<String>
        /// Values never linked (compared in lower case): placeholders sources write for "unknown".
        public var blockedValues: Set<String>
        /// Patterns of values never linked.
        public var blockedPatterns: [BlockedPattern]
        /// An identity linked by this many records links no further ones (a shared mailbox, a default
        /// value a source started to write): it is reported as blocked for them.
        public var maxRecordsPerIdentity: Int

        /// The placeholders blocked by default.
        public static let defaultBlockedValues: Set<String> = [
            "", "null", "nil", "n/a", "na", "none", "unknown", "-1", "0", "undefined",
        ]

        /// Creates a configuration.
        public init(
            maxIdentitiesPerCluster: Int = 50,
            uniqueNamespaces: Set<String> = [],
            blockedValues: Set<String> = Configuration.defaultBlockedValues,
            blockedPatterns: [BlockedPattern] = [],
            maxRecordsPerIdentity: Int = 1000
        ) {
            self.maxIdentitiesPerCluster = maxIdentitiesPerCluster
            self.uniqueNamespaces = uniqueNamespaces
            self.blockedValues = blockedValues
            self.blockedPatterns = blockedPatterns
            self.maxRecordsPerIdentity = maxRecordsPerIdentity
        }
    }

    /// What a record's upsert did.
    public struct Outcome: Sendable, Equatable {
        /// The record's cluster (of its first identity), nil if it had no usable identity.
        public var cluster: ClusterID?
        /// Merges and splits it caused. Only clusters that existed before the upsert count: a record's
        /// identities new to the graph joining its cluster is no merge.
        public var events: [GraphEvent]
        /// Links it could not make.
        public var conflicts: [Conflict]
        /// Identities it named that are blocked.
        public var blocked: [Identity]
        /// True if the record was already in the graph with the same version: nothing changed.
        public var unchanged: Bool
    }

    private typealias Node = Int
    /// Where a record's nodes are in ``listedNodes``.
    private struct NodeList {
        var start: UInt32
        var count: UInt32
    }

    /// The guardrails in force.
    public let configuration: Configuration
    /// Namespace names by tag (a handful: found by a linear search).
    private var namespaces: [String] = []
    /// Every identity's namespace tag and value, numbered as its node (a removed identity's number
    /// stays taken).
    private var values = KeyTable()
    private var sequence: [UInt64] = []
    private var parent: [Node] = []
    // Each cluster's members are a linked list threaded through flat arrays (no allocation per node;
    // a union splices two lists): the root holds its list's first and last member and its size.
    private var nextMember: [Int32] = []
    private var firstMember: [Int32] = []
    private var lastMember: [Int32] = []
    private var clusterSize: [Int32] = []
    /// The oldest member's sequence number of each root: the cluster's id.
    private var oldest: [UInt64] = []
    // The records linking each node: a linked list of edges in flat arrays (most identities have one or
    // two records), with a free list for the edges of removed links.
    private var firstEdge: [Int32] = []
    private var recordCountOfNode: [Int32] = []
    private var edgeRecord: [Int32] = []
    private var nextEdge: [Int32] = []
    private var freeEdge: Int32 = -1
    /// Every record's key (tag 0), numbered as its index; indexes of removed records are not reused.
    private var recordKeys = KeyTable()
    /// Each record's version, by index.
    private var recordVersion: [UInt64] = []
    /// The nodes each record links (the first is its primary identity), by index; none once removed.
    private var nodeLists: [NodeList] = []
    /// The records' node lists, one after the other. A list that grows moves to the end (records
    /// rarely change their identities); one that shrinks stays where it is.
    private var listedNodes: [Int32] = []
    private var nextSequence: UInt64 = 1
    private var journal: [GraphChange] = []
    private let lowercasedBlockedValues: Set<String>

    /// Creates an empty graph.
    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        self.lowercasedBlockedValues = Set(configuration.blockedValues.map { $0.lowercased() })
    }

    /// Rebuilds the graph a store persisted. The links are made again without the guardrails, which
    /// already decided them; cluster ids come out the same because they are the identities' sequence
    /// numbers.
    public init(configuration: Configuration = Configuration(), restoring state: GraphState) {
        self.init(configuration: configuration)
        load(state)
    }

    private mutating func load(_ state: GraphState) {
        values.reserveCapacity(state.identities.count)
        recordKeys.reserveCapacity(state.records.count)
        sequence.reserveCapacity(state.identities.count)
        parent.reserveCapacity(state.identities.count)
        for array in [
            \IdentityGraph.nextMember, \.firstMember, \.lastMember, \.clusterSize, \.firstEdge, \.recordCountOfNode,
        ] {
            self[keyPath: array].reserveCapacity(state.identities.count)
        }
        oldest.reserveCapacity(state.identities.count)
        recordVersion.reserveCapacity(state.records.count)
        nodeLists.reserveCapacity(state.records.count)
        // Sequence numbers are increasing, so a node is found by binary search among them.
        let sortedIdentities = state.identities.sorted { $0.sequence < $1.sequence }
        for (sequence, identity) in sortedIdentities { _ = addNode(identity, sequence: sequence) }
        nextSequence = state.nextSequence
        for record in state.records {
            var nodes: [Node] = []
            nodes.reserveCapacity(record.identities.count)
            for number in record.identities {
                if let node = node(withSequence: number) { nodes.append(node) }
            }
            let index = addRecord(record.key, version: record.version, nodes: nodes)
            for node in nodes { addEdge(node, record: index) }
            guard let first = nodes.first else { continue }
            for node in nodes.dropFirst() {
                let (a, b) = (root(first), root(node))
                if a != b { union(a, b) }
            }
        }
    }

    /// The node with sequence number `number` (nodes are in sequence order until a removal, which
    /// keeps its node: a binary search finds it).
    private func node(withSequence number: UInt64) -> Node? {
        var (low, high) = (0, sequence.count)
        while low < high {
            let middle = (low + high) / 2
            if sequence[middle] < number { low = middle + 1 } else { high = middle }
        }
        return low < sequence.count && sequence[low] == number ? low : nil
    }

    /// The number of identities.
    public var identityCount: Int { values.count }

    /// The number of records linked.
    public var recordCount: Int { recordKeys.count }

    /// The changes made since the last call, in order, for a store to persist.
    public mutating func takeChanges() -> [GraphChange] {
        defer { journal = [] }
        return journal
    }

    /// The cluster of `identity`, if the graph has it.
    public mutating func cluster(of identity: Identity) -> ClusterID? {
        guard let node = existingNode(identity) else { return nil }
        return clusterID(of: node)
    }

    /// The identities of the cluster that holds `identity`, oldest first.
    public mutating func members(of identity: Identity) -> [Identity] {
        guard let node = existingNode(identity) else { return [] }
        let root = root(node)
        return memberNodes(ofRoot: root).sorted { sequence[$0] < sequence[$1] }.map(identity(of:))
    }

    /// The keys of the records that link identities of the cluster holding `identity`, in the order
    /// they were linked.
    public mutating func recordKeys(inClusterOf identity: Identity) -> [String] {
        guard let node = existingNode(identity) else { return [] }
        let root = root(node)
        var indexes = Set<Int>()
        for member in memberNodes(ofRoot: root) { indexes.formUnion(records(of: member)) }
        return indexes.sorted().filter(recordKeys.isPresent).map(recordKeys.string)
    }

    /// The identity with sequence number `number`, if it is still in the graph. The id of a cluster
    /// names its oldest identity this way.
    public func identity(withSequence number: UInt64) -> Identity? {
        guard let node = node(withSequence: number), values.isPresent(node) else { return nil }
        return identity(of: node)
    }

    /// The version of the record `key` as linked, if it is.
    public func version(ofRecord key: String) -> UInt64? {
        guard let index = recordKeys.find(0, key) else { return nil }
        return recordVersion[index]
    }

    /// Whether the graph would refuse to link `identity` because of its value (blocked values and
    /// patterns; not the per-identity record limit, which depends on the graph's state).
    public func isBlocked(_ identity: Identity) -> Bool {
        if lowercasedBlockedValues.contains(identity.value.lowercased()) { return true }
        return configuration.blockedPatterns.contains { $0.blocks(identity) }
    }

    /// The cluster of `identity`, creating a lone node for it if it is new: how a reference to a record
    /// not seen yet gets the id that record will join. Nil for a blocked value.
    public mutating func resolveOrCreate(_ identity: Identity) -> ClusterID? {
        guard !isBlocked(identity) else { return nil }
        let node = node(for: identity)
        return clusterID(of: node)
    }

    /// Adds or replaces a record: links its identities (the first is its primary one, e.g. its source
    /// key). The same key and version again changes nothing; a new version replaces the old links.
    public mutating func upsert(record key: String, version: UInt64, identities named: [Identity]) -> Outcome {
        let previousIndex = recordKeys.find(0, key)
        if let index = previousIndex, recordVersion[index] == version {
            let cluster = primaryNode(ofRecord: index).map { clusterID(of: $0) }
            return Outcome(cluster: cluster, events: [], conflicts: [], blocked: [], unchanged: true)
        }
        if let previousIndex, let blocked = sameLinks(as: previousIndex, named) {
            // A new version naming the same identities (an edited name, a new lastUpdated): the links
            // stand; no split and merge back, no conflict recorded again.
            recordVersion[previousIndex] = version
            let nodes = linkedNodes(ofRecord: previousIndex)
            journal.append(.recordLinked(key: key, version: version, identities: nodes.map { sequence[$0] }))
            let cluster = nodes.first.map { clusterID(of: $0) }
            return Outcome(cluster: cluster, events: [], conflicts: [], blocked: blocked, unchanged: false)
        }
        var events: [GraphEvent] = []
        if let previousIndex {
            journal.append(.recordUnlinked(key: key))
            events += unlink(previousIndex)
        }

        let firstNewSequence = nextSequence
        var blocked: [Identity] = []
        var nodes: [Node] = []
        nodes.reserveCapacity(named.count)
        for identity in named {
            if isBlocked(identity) {
                blocked.append(identity)
                continue
            }
            let node = node(for: identity)
            if Int(recordCountOfNode[node]) >= configuration.maxRecordsPerIdentity {
                blocked.append(identity)
                continue
            }
            if !nodes.contains(node) { nodes.append(node) }
        }
        guard let primary = nodes.first else {
            // The record links nothing now: it leaves the graph.
            if let previousIndex { recordKeys.remove(previousIndex) }
            return Outcome(cluster: nil, events: events, conflicts: [], blocked: blocked, unchanged: false)
        }
        // The record's own values of unique namespaces join it first, so that a later identity leading
        // into a cluster with another value is the link refused, not the record's own value.
        if !configuration.uniqueNamespaces.isEmpty && nodes.count > 2 {
            let rest = nodes.dropFirst()
            let unique = rest.filter { configuration.uniqueNamespaces.contains(namespace(of: $0)) }
            let other = rest.filter { !configuration.uniqueNamespaces.contains(namespace(of: $0)) }
            nodes = [primary] + unique + other
        }
        var conflicts: [Conflict] = []
        var linked = [primary]
        linked.reserveCapacity(nodes.count)
        for node in nodes.dropFirst() {
            let (a, b) = (root(primary), root(node))
            if a == b {
                linked.append(node)
                continue
            }
            if let refusal = refusal(joining: a, b) {
                conflicts.append(
                    Conflict(
                        recordKey: key,
                        identity: identity(of: node),
                        kind: refusal,
                        clusters: [clusterID(ofRoot: a), clusterID(ofRoot: b)].sorted()
                    )
                )
                continue
            }
            let (survivor, absorbed) = (clusterID(ofRoot: a), clusterID(ofRoot: b))
            let (into, from) = survivor < absorbed ? (survivor, absorbed) : (absorbed, survivor)
            union(a, b)
            // A cluster made of identities new in this upsert was never handed out: nobody keeps anything
            // under its id, so its joining is not news.
            if from.rawValue < firstNewSequence { events.append(.merged(into: into, from: [from])) }
            linked.append(node)
        }
        // A new version keeps its record's index, so the indexes do not grow with edits.
        let index: Int
        if let previousIndex {
            index = previousIndex
            recordVersion[index] = version
            setNodes(ofRecord: index, linked)
        } else {
            index = addRecord(key, version: version, nodes: linked)
        }
        for node in linked { addEdge(node, record: index) }
        journal.append(.recordLinked(key: key, version: version, identities: linked.map { sequence[$0] }))
        return Outcome(
            cluster: clusterID(of: primary),
            events: events,
            conflicts: conflicts,
            blocked: blocked,
            unchanged: false
        )
    }

    /// Removes a record's links (a deleted record, a source's data removed); its component is
    /// recomputed and may split. Identities stay, in clusters of their own if nothing else links them.
    public mutating func remove(record key: String) -> [GraphEvent] {
        guard let index = recordKeys.find(0, key) else { return [] }
        journal.append(.recordUnlinked(key: key))
        recordKeys.remove(index)
        return unlink(index)
    }

    /// Removes an identity (a privacy request): it is unlinked from every record and dropped from the
    /// graph; its component is recomputed and may split. Records left without identities are removed.
    public mutating func remove(identity: Identity) -> [GraphEvent] {
        guard let node = existingNode(identity) else { return [] }
        values.remove(node)
        let component = root(node)
        journal.append(.identityRemoved(sequence: sequence[node]))
        for index in records(of: node) where recordKeys.isPresent(index) {
            var nodes = linkedNodes(ofRecord: index)
            nodes.removeAll { $0 == node }
            setNodes(ofRecord: index, nodes)
            if nodes.isEmpty {
                recordKeys.remove(index)
                journal.append(.recordUnlinked(key: recordKeys.string(index)))
            } else {
                journal.append(
                    .recordLinked(
                        key: recordKeys.string(index),
                        version: recordVersion[index],
                        identities: nodes.map { sequence[$0] }
                    )
                )
            }
        }
        for index in records(of: node) { removeEdge(node, record: index) }
        // The node stays (its index is taken) but unreachable: the table no longer finds its value.
        return recompute(component: component)
    }

    // MARK: - Internals

    /// Whether `named` would link exactly the identities the record at `index` links now (the same
    /// primary, nothing new, nothing refused before); with the identities that are blocked.
    private func sameLinks(as index: Int, _ named: [Identity]) -> [Identity]? {
        let existing = linkedNodes(ofRecord: index)
        guard let primary = existing.first else { return nil }
        var blocked: [Identity] = []
        var nodes = Set<Node>()
        var first: Node?
        for identity in named {
            if isBlocked(identity) {
                blocked.append(identity)
                continue
            }
            guard let node = existingNode(identity) else { return nil }
            if Int(recordCountOfNode[node]) >= configuration.maxRecordsPerIdentity && !existing.contains(node) {
                blocked.append(identity)
                continue
            }
            if first == nil { first = node }
            nodes.insert(node)
        }
        guard first == primary, nodes == Set(existing) else { return nil }
        return blocked
    }

    private func existingNode(_ identity: Identity) -> Node? {
        guard let tag = namespaces.firstIndex(of: identity.namespace) else { return nil }
        return values.find(UInt8(tag), identity.value)
    }

    /// The identity of `node` (also of a removed one).
    private func identity(of node: Node) -> Identity { Identity(namespace(of: node), values.string(node)) }

    private func namespace(of node: Node) -> String { namespaces[Int(values.tag(node))] }

    /// The nodes record `index` links, its primary first (none once removed).
    private func linkedNodes(ofRecord index: Int) -> [Node] {
        let list = nodeLists[index]
        let start = Int(list.start)
        return listedNodes[start..<(start + Int(list.count))].map { Node($0) }
    }

    /// The primary node of record `index`, if it links any.
    private func primaryNode(ofRecord index: Int) -> Node? {
        let list = nodeLists[index]
        return list.count == 0 ? nil : Node(listedNodes[Int(list.start)])
    }

    /// Makes record `index` link `nodes`: in place if they fit where its list is, else at the end.
    private mutating func setNodes(ofRecord index: Int, _ nodes: [Node]) {
        var list = nodeLists[index]
        if nodes.count > Int(list.count) {
            precondition(listedNodes.count + nodes.count <= Int(UInt32.max), "more than 2^32 record links")
            list.start = UInt32(listedNodes.count)
            listedNodes.append(contentsOf: nodes.lazy.map { Int32($0) })
        } else {
            for (offset, node) in nodes.enumerated() { listedNodes[Int(list.start) + offset] = Int32(node) }
        }
        list.count = UInt32(nodes.count)
        nodeLists[index] = list
    }

    /// Adds a record that is not in the graph; its index.
    private mutating func addRecord(_ key: String, version: UInt64, nodes: [Node]) -> Int {
        let (index, inserted) = recordKeys.insert(0, key)
        precondition(inserted && index == nodeLists.count, "record \(key) added twice")
        recordVersion.append(version)
        nodeLists.append(NodeList(start: 0, count: 0))
        setNodes(ofRecord: index, nodes)
        return index
    }

    private mutating func tag(of namespace: String) -> UInt8 {
        if let tag = namespaces.firstIndex(of: namespace) { return UInt8(tag) }
        precondition(namespaces.count < 255, "more than 255 identity namespaces")
        namespaces.append(namespace)
        return UInt8(namespaces.count - 1)
    }

    private mutating func node(for identity: Identity) -> Node {
        let tag = tag(of: identity.namespace)
        if let node = values.find(tag, identity.value) { return node }
        let node = addNode(identity, sequence: nextSequence)
        journal.append(.identityAdded(sequence: nextSequence, identity: identity))
        nextSequence += 1
        return node
    }

    private mutating func addNode(_ identity: Identity, sequence number: UInt64) -> Node {
        let (node, inserted) = values.insert(tag(of: identity.namespace), identity.value)
        precondition(inserted && node == sequence.count, "identity \(identity) added twice")
        sequence.append(number)
        parent.append(node)
        nextMember.append(-1)
        firstMember.append(Int32(node))
        lastMember.append(Int32(node))
        clusterSize.append(1)
        oldest.append(number)
        firstEdge.append(-1)
        recordCountOfNode.append(0)
        return node
    }

    /// Drops record `index`'s links (its key stays: the caller removes it or links it again) and
    /// recomputes its component.
    private mutating func unlink(_ index: Int) -> [GraphEvent] {
        let removed = linkedNodes(ofRecord: index)
        nodeLists[index].count = 0
        for node in removed { removeEdge(node, record: index) }
        guard let first = removed.first else { return [] }
        let component = root(first)
        return recompute(component: component)
    }

    private mutating func root(_ node: Node) -> Node {
        var root = node
        while parent[root] != root { root = parent[root] }
        var current = node
        while parent[current] != root {
            let next = parent[current]
            parent[current] = root
            current = next
        }
        return root
    }

    /// The id of the cluster that holds `node`. (A separate statement for the root: a nested mutating
    /// call in the argument of a method on `self` would run against a copy of `self` taken before it.)
    private mutating func clusterID(of node: Node) -> ClusterID {
        let root = root(node)
        return clusterID(ofRoot: root)
    }

    /// The id of the cluster whose root is `root`: its oldest member's sequence number.
    private func clusterID(ofRoot root: Node) -> ClusterID {
        ClusterID(oldest[root])
    }

    private func refusal(joining a: Node, _ b: Node) -> Conflict.Kind? {
        let total = Int(clusterSize[a]) + Int(clusterSize[b])
        if total > configuration.maxIdentitiesPerCluster { return .clusterCap(configuration.maxIdentitiesPerCluster) }
        guard !configuration.uniqueNamespaces.isEmpty else { return nil }
        // A cluster holds at most one value of each unique namespace (this check keeps it so; a single
        // record naming two is the exception, and then its first value counts).
        for namespace in configuration.uniqueNamespaces {
            guard let tag = namespaces.firstIndex(of: namespace),
                let left = firstNode(tagged: UInt8(tag), in: a),
                let right = firstNode(tagged: UInt8(tag), in: b)
            else { continue }
            // One node per value: two nodes are two values.
            if left != right { return .uniqueNamespace(namespace) }
        }
        return nil
    }

    private func firstNode(tagged tag: UInt8, in root: Node) -> Node? {
        var member = Int(firstMember[root])
        while member >= 0 {
            if values.tag(member) == tag { return member }
            member = Int(nextMember[member])
        }
        return nil
    }

    /// The members of the cluster whose root is `root`.
    private func memberNodes(ofRoot root: Node) -> [Node] {
        var nodes: [Node] = []
        nodes.reserveCapacity(Int(clusterSize[root]))
        var member = Int(firstMember[root])
        while member >= 0 {
            nodes.append(member)
            member = Int(nextMember[member])
        }
        return nodes
    }

    /// The indexes of the records linking `node`.
    private func records(of node: Node) -> [Int] {
        var indexes: [Int] = []
        var edge = Int(firstEdge[node])
        while edge >= 0 {
            indexes.append(Int(edgeRecord[edge]))
            edge = Int(nextEdge[edge])
        }
        return indexes
    }

    private mutating func addEdge(_ node: Node, record index: Int) {
        let edge: Int
        if freeEdge >= 0 {
            edge = Int(freeEdge)
            freeEdge = nextEdge[edge]
            edgeRecord[edge] = Int32(index)
            nextEdge[edge] = firstEdge[node]
        } else {
            edge = edgeRecord.count
            edgeRecord.append(Int32(index))
            nextEdge.append(firstEdge[node])
        }
        firstEdge[node] = Int32(edge)
        recordCountOfNode[node] += 1
    }

    private mutating func removeEdge(_ node: Node, record index: Int) {
        var previous = -1
        var edge = Int(firstEdge[node])
        while edge >= 0 {
            if edgeRecord[edge] == Int32(index) {
                if previous >= 0 { nextEdge[previous] = nextEdge[edge] } else { firstEdge[node] = nextEdge[edge] }
                nextEdge[edge] = freeEdge
                freeEdge = Int32(edge)
                recordCountOfNode[node] -= 1
                return
            }
            previous = edge
            edge = Int(nextEdge[edge])
        }
    }

    /// Joins two roots, the smaller under the larger.
    private mutating func union(_ a: Node, _ b: Node) {
        let (big, small) = clusterSize[a] >= clusterSize[b] ? (a, b) : (b, a)
        parent[small] = big
        nextMember[Int(lastMember[big])] = firstMember[small]
        lastMember[big] = lastMember[small]
        clusterSize[big] += clusterSize[small]
        oldest[big] = min(oldest[big], oldest[small])
    }

    /// Rebuilds the component of `oldRoot` from the records that still link its nodes. Reports a split
    /// when it fell apart, and a split into one cluster when it stayed whole but lost the identity that
    /// gave it its id (so whoever keeps data by cluster id moves it).
    private mutating func recompute(component oldRoot: Node) -> [GraphEvent] {
        let before = clusterID(ofRoot: oldRoot)
        let nodes = memberNodes(ofRoot: oldRoot)
        for node in nodes {
            parent[node] = node
            nextMember[node] = -1
            firstMember[node] = Int32(node)
            lastMember[node] = Int32(node)
            clusterSize[node] = 1
            oldest[node] = sequence[node]
        }
        var indexes = Set<Int>()
        for node in nodes { indexes.formUnion(records(of: node)) }
        for index in indexes.sorted() {
            let linked = linkedNodes(ofRecord: index)
            guard let first = linked.first else { continue }
            for node in linked.dropFirst() {
                let (a, b) = (root(first), root(node))
                if a != b { union(a, b) }
            }
        }
        // Nodes of a removed identity no longer count as clusters.
        let live = nodes.filter(values.isPresent)
        var roots = Set<Node>()
        for node in live { roots.insert(root(node)) }
        let after = roots.sorted { clusterID(ofRoot: $0) < clusterID(ofRoot: $1) }
        guard after.count != 1 || clusterID(ofRoot: after[0]) != before else { return [] }
        let parts = after.map { root in
            let members = memberNodes(ofRoot: root).sorted { sequence[$0] < sequence[$1] }
            var indexes = Set<Int>()
            for member in members { indexes.formUnion(records(of: member)) }
            return ClusterPart(
                id: clusterID(ofRoot: root),
                identities: members.map(identity(of:)),
                recordKeys: indexes.filter(recordKeys.isPresent).map(recordKeys.string).sorted()
            )
        }
        return [.split(from: before, into: parts)]
    }
}

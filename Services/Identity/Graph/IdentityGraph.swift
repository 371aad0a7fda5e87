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
    /// Cluster `from` fell apart into `into` (one of which may keep the id `from`).
    case split(from: ClusterID, into: [ClusterID])
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
}

/// The identity graph of one entity type: identities are nodes, a record links all of its
/// identities, clusters are the connected components.
///
/// An in-memory union-find (path compression, union by size) with member lists, so that a removal
/// can recompute just the affected component and report a split. Every change returns the events it
/// caused. Guardrails: blocked values, a cap on identities per cluster, and namespaces a cluster may
/// hold one value of; links they refuse are reported as conflicts and the record stays in its own
/// cluster.
public struct IdentityGraph: Sendable {
    /// The guardrails.
    public struct Configuration: Sendable {
        /// The most identities a cluster may hold; a link that would exceed it is refused.
        public var maxIdentitiesPerCluster: Int
        /// Namespaces of which a cluster may hold only one value (e.g. `crmId` for persons).
        public var uniqueNamespaces: Set<String>
        /// Values never linked (compared in lower case): placeholders sources write for "unknown".
        public var blockedValues: Set<String>
        /// An identity linked by more records than this is treated as blocked for further records (a
        /// shared mailbox, a default value a source started to write).
        public var maxRecordsPerIdentity: Int

        /// Creates a configuration.
        public init(
            maxIdentitiesPerCluster: Int = 50,
            uniqueNamespaces: Set<String> = [],
            blockedValues: Set<String> = ["", "null", "n/a", "na", "none", "unknown", "-1", "0", "undefined"],
            maxRecordsPerIdentity: Int = 1000
        ) {
            self.maxIdentitiesPerCluster = maxIdentitiesPerCluster
            self.uniqueNamespaces = uniqueNamespaces
            self.blockedValues = blockedValues
            self.maxRecordsPerIdentity = maxRecordsPerIdentity
        }
    }

    /// What a record's upsert did.
    public struct Outcome: Sendable, Equatable {
        /// The record's cluster (of its first identity), nil if it had no usable identity.
        public var cluster: ClusterID?
        /// Merges and splits it caused.
        public var events: [GraphEvent]
        /// Links it could not make.
        public var conflicts: [Conflict]
        /// Identities it named that are blocked.
        public var blocked: [Identity]
        /// True if the record was already in the graph with the same version: nothing changed.
        public var unchanged: Bool
    }

    private typealias Node = Int

    public let configuration: Configuration
    private var nodeByIdentity: [Identity: Node] = [:]
    private var identities: [Identity] = []
    private var sequence: [UInt64] = []
    private var parent: [Node] = []
    /// Members of each root (empty for non-roots).
    private var members: [[Node]] = []
    /// The oldest member's sequence number of each root: the cluster's id.
    private var oldest: [UInt64] = []
    /// The records linking each node, by record index (small arrays: most identities have one or two).
    private var recordsOfNode: [[Int]] = []
    /// Record index by key; indexes of removed records are not reused.
    private var recordIndex: [String: Int] = [:]
    /// Each record's key, version and the nodes it links (the first is its primary identity); nil once
    /// removed.
    private var records: [(key: String, version: UInt64, nodes: [Node])?] = []
    private var nextSequence: UInt64 = 1

    /// Creates an empty graph.
    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    /// The number of identities.
    public var identityCount: Int { identities.count }

    /// The number of records linked.
    public var recordCount: Int { recordIndex.count }

    /// The cluster of `identity`, if the graph has it.
    public mutating func cluster(of identity: Identity) -> ClusterID? {
        guard let node = nodeByIdentity[identity] else { return nil }
        return clusterID(of: node)
    }

    /// The identities of the cluster that holds `identity`, oldest first.
    public mutating func members(of identity: Identity) -> [Identity] {
        guard let node = nodeByIdentity[identity] else { return [] }
        let root = root(node)
        return members[root].sorted { sequence[$0] < sequence[$1] }.map { identities[$0] }
    }

    /// The cluster of `identity`, creating a lone node for it if it is new: how a reference to a record
    /// not seen yet gets the id that record will join. Nil for a blocked value.
    public mutating func resolveOrCreate(_ identity: Identity) -> ClusterID? {
        guard !isBlocked(identity) else { return nil }
        return clusterID(of: node(for: identity))
    }

    /// Adds or replaces a record: links its identities (the first is its primary one, e.g. its source
    /// key). The same key and version again changes nothing; a new version replaces the old links.
    public mutating func upsert(record key: String, version: UInt64, identities named: [Identity]) -> Outcome {
        if let index = recordIndex[key], let existing = records[index], existing.version == version {
            let cluster = existing.nodes.first.map { clusterID(of: $0) }
            return Outcome(cluster: cluster, events: [], conflicts: [], blocked: [], unchanged: true)
        }
        var events: [GraphEvent] = []
        if recordIndex[key] != nil { events += remove(record: key) }
        let index = records.count

        var blocked: [Identity] = []
        var nodes: [Node] = []
        for identity in named {
            if isBlocked(identity) {
                blocked.append(identity)
                continue
            }
            let node = node(for: identity)
            if recordsOfNode[node].count >= configuration.maxRecordsPerIdentity {
                blocked.append(identity)
                continue
            }
            if !nodes.contains(node) { nodes.append(node) }
        }
        guard let primary = nodes.first else {
            return Outcome(cluster: nil, events: events, conflicts: [], blocked: blocked, unchanged: false)
        }
        var conflicts: [Conflict] = []
        var linked = [primary]
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
                        identity: identities[node],
                        kind: refusal,
                        clusters: [clusterID(ofRoot: a), clusterID(ofRoot: b)].sorted()
                    )
                )
                continue
            }
            let (survivor, absorbed) = (clusterID(ofRoot: a), clusterID(ofRoot: b))
            let (into, from) = survivor < absorbed ? (survivor, absorbed) : (absorbed, survivor)
            union(a, b)
            events.append(.merged(into: into, from: [from]))
            linked.append(node)
        }
        recordIndex[key] = index
        records.append((key, version, linked))
        for node in linked { recordsOfNode[node].append(index) }
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
        guard let index = recordIndex.removeValue(forKey: key), let removed = records[index] else { return [] }
        records[index] = nil
        for node in removed.nodes { recordsOfNode[node].removeAll { $0 == index } }
        guard let first = removed.nodes.first else { return [] }
        let component = root(first)
        return recompute(component: component)
    }

    /// Removes an identity (a privacy request): it is unlinked from every record and dropped from the
    /// graph's lookups; its component is recomputed and may split.
    public mutating func remove(identity: Identity) -> [GraphEvent] {
        guard let node = nodeByIdentity.removeValue(forKey: identity) else { return [] }
        let component = root(node)
        for index in recordsOfNode[node] {
            records[index]?.nodes.removeAll { $0 == node }
        }
        recordsOfNode[node] = []
        return recompute(component: component)
    }

    // MARK: - Internals

    private func isBlocked(_ identity: Identity) -> Bool {
        configuration.blockedValues.contains(identity.value.lowercased())
    }

    private mutating func node(for identity: Identity) -> Node {
        if let node = nodeByIdentity[identity] { return node }
        let node = identities.count
        nodeByIdentity[identity] = node
        identities.append(identity)
        sequence.append(nextSequence)
        nextSequence += 1
        parent.append(node)
        members.append([node])
        oldest.append(sequence[node])
        recordsOfNode.append([])
        return node
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
        let total = members[a].count + members[b].count
        if total > configuration.maxIdentitiesPerCluster { return .clusterCap(configuration.maxIdentitiesPerCluster) }
        guard !configuration.uniqueNamespaces.isEmpty else { return nil }
        // A cluster holds at most one value of each unique namespace (this check keeps it so; a single
        // record naming two is the exception, and then its first value counts).
        for namespace in configuration.uniqueNamespaces {
            guard let left = firstValue(of: namespace, in: a), let right = firstValue(of: namespace, in: b) else {
                continue
            }
            if left != right { return .uniqueNamespace(namespace) }
        }
        return nil
    }

    private func firstValue(of namespace: String, in root: Node) -> String? {
        for node in members[root] where identities[node].namespace == namespace { return identities[node].value }
        return nil
    }

    /// Joins two roots, the smaller under the larger.
    private mutating func union(_ a: Node, _ b: Node) {
        let (big, small) = members[a].count >= members[b].count ? (a, b) : (b, a)
        parent[small] = big
        members[big] += members[small]
        members[small] = []
        oldest[big] = min(oldest[big], oldest[small])
    }

    /// Rebuilds the component of `oldRoot` from the records that still link its nodes.
    private mutating func recompute(component oldRoot: Node) -> [GraphEvent] {
        let before = clusterID(ofRoot: oldRoot)
        let nodes = members[oldRoot]
        for node in nodes {
            parent[node] = node
            members[node] = [node]
            oldest[node] = sequence[node]
        }
        var indexes = Set<Int>()
        for node in nodes { indexes.formUnion(recordsOfNode[node]) }
        for index in indexes.sorted() {
            guard let record = records[index], let first = record.nodes.first else { continue }
            for node in record.nodes.dropFirst() {
                let (a, b) = (root(first), root(node))
                if a != b { union(a, b) }
            }
        }
        // Nodes of a removed identity no longer count as clusters.
        let live = nodes.filter { nodeByIdentity[identities[$0]] == $0 }
        let roots = Set(live.map { root($0) })
        guard roots.count > 1 else { return [] }
        let after = roots.map { clusterID(ofRoot: $0) }.sorted()
        return [.split(from: before, into: after)]
    }
}

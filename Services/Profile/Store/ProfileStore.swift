import CDPProto
import Foundation

/// Profile's storage: fragments (every source record, by entity type and key, with its cluster),
/// the references between them, events by person, the identities each fragment names (for lookups),
/// and the items of segmentation's state (unified records, links, events) that changed and wait to be
/// sent.
///
/// The service talks to storage only through this protocol. Every method is one transaction.
public protocol ProfileStore: Sendable {
    /// The sequence number of the last identity update applied (0 before the first).
    func appliedSequence() throws -> UInt64
    /// Applies identity's updates in order, skipping any whose sequence was applied before, and marks
    /// the state items they change. Records are stored as received (``ReceivedRecord/bytes``).
    func apply(_ updates: [ReceivedUpdate]) throws -> (applied: Int, duplicates: Int)

    /// The cluster of the entity of type `entity` that `identity` names, if a fragment names it.
    func cluster(of entity: Cdp_Model_V1_EntityType, named identity: Cdp_Identity_V1_IdentityValue) throws -> UInt64?
    /// The person view of `cluster` as of `asOf`; nil if no fragment belongs to it.
    func personView(cluster: UInt64, asOf: Date) throws -> Cdp_Profile_V1_PersonView?
    /// The account view of `cluster`; nil if no fragment belongs to it.
    func accountView(cluster: UInt64) throws -> Cdp_Profile_V1_AccountView?
    /// The views of several persons and accounts, from one snapshot and in the order asked, nil where
    /// no fragment belongs to the cluster. Work the views share (an account's unified record and its
    /// opportunities, which every person of the account shows) is done once per call.
    func views(of keys: [ViewKey], asOf: Date) throws -> [ProfileView?]
    /// Clusters of `entity` with a fragment, in one partition (cluster modulo `partitions`), greater than
    /// `after`, ascending, at most `limit`.
    func clusters(
        of entity: Cdp_Model_V1_EntityType,
        partition: Int,
        partitions: Int,
        after: UInt64,
        limit: Int
    ) throws -> [UInt64]
    /// A person's events between `from` and `to`, newest first.
    func events(person cluster: UInt64, from: Date, to: Date, limit: Int) throws -> [Cdp_Profile_V1_Event]
    /// What a privacy delete of the person removes: its fragments, the relations and memberships naming
    /// it, its events, and the identities its fragments name (to remove from identity).
    func personData(cluster: UInt64) throws -> PersonData
    /// Deletes what `personData` listed, wherever it is now (identity's splits, caused by removing the
    /// person's identities, may have moved some of it to other clusters meanwhile); marks the state
    /// items that change. Returns the fragments and events deleted.
    func delete(_ data: PersonData) throws -> (fragments: Int, events: Int)

    /// Takes state items waiting to be sent, each with a fresh version, and reads their values, in one
    /// transaction: the `limit` oldest items of the mark log (each item at its last mark, so that it
    /// travels with the last apply that changed it), and those of every other mark of the apply that
    /// made the last of them (a chunk holds whole transactions); and up
    /// to `limit` of the events added since the last chunk sent, in the order they were added (the
    /// event log). With `after` (a chunk taken and being sent, not yet marked sent), from the marks
    /// and events that follow its last.
    func takeStateChanges(limit: Int, after: StateChunk?) throws -> StateChunk
    /// Marks a sent chunk done: the mark log up to its last mark (an item changed again since it was
    /// taken has a later mark, and is sent again), and the event log up to its last event.
    func markSent(_ chunk: StateChunk) throws
    /// How much is pending.
    func outboxStatus() throws -> (pending: UInt64, oldestPending: Date?, sent: UInt64)

    /// Starts a privacy request (`pr-1`, `pr-2`, …) for the person whose identities hash to `hashes`,
    /// with the work it still needs in clear.
    func newPrivacyRequest(hashes: [Data], work: Data, at now: Date) throws -> StoredPrivacyRequest
    /// Saves a request's progress (and drops its work once it is nil).
    func savePrivacyRequest(_ stored: StoredPrivacyRequest) throws
    /// Every privacy request, newest first.
    func privacyRequests() throws -> [StoredPrivacyRequest]
    /// A privacy request by id.
    func privacyRequest(id: String) throws -> StoredPrivacyRequest?
    /// The newest privacy request of a person one of whose identities hashes to `hash`.
    func privacyRequest(hash: Data) throws -> StoredPrivacyRequest?
    /// Clears the write-ahead log of deleted data; false if it could not yet.
    func clearLog() -> Bool
}

extension ProfileStore {
    /// Applies decoded updates (callers in process: tests, tools), each record encoded once for it.
    public func apply(_ updates: [Cdp_Profile_V1_IdentityUpdate]) throws -> (applied: Int, duplicates: Int) {
        try apply(try updates.map(ReceivedUpdate.init))
    }
}

extension ProfileStore {
    /// Takes state items from the head of the logs (see ``takeStateChanges(limit:after:)``).
    public func takeStateChanges(limit: Int) throws -> StateChunk { try takeStateChanges(limit: limit, after: nil) }
}

/// A privacy request as stored: its progress, and while it runs the work it needs in clear.
public struct StoredPrivacyRequest: Sendable {
    public var request: Cdp_Privacy_V1_PrivacyRequest
    /// Encoded by the coordinator; nil once the request is done.
    public var work: Data?

    /// Creates a stored request.
    public init(request: Cdp_Privacy_V1_PrivacyRequest, work: Data?) {
        self.request = request
        self.work = work
    }
}

/// A person's data, as listed for a privacy delete.
public struct PersonData: Sendable, Equatable {
    /// The fragments: the person's records, and the relations and memberships naming the person.
    public var fragments: [FragmentKey] = []
    /// The keys of the person's events.
    public var events: [String] = []
    /// The identities the person's records name.
    public var identities: [Cdp_Identity_V1_IdentityValue] = []

    /// Creates an empty list.
    public init() {}
}

/// A fragment's entity type (raw value) and key.
public struct FragmentKey: Sendable, Hashable {
    /// `Cdp_Model_V1_EntityType.rawValue`.
    public var entity: Int64
    /// The record's key.
    public var key: String

    /// Creates a fragment key.
    public init(entity: Int64, key: String) {
        self.entity = entity
        self.key = key
    }
}

/// A person or an account, by cluster.
public struct ViewKey: Sendable, Hashable {
    /// `.person` or `.account`.
    public var entity: Cdp_Model_V1_EntityType
    /// The cluster identity gave it.
    public var cluster: UInt64

    /// Creates a key.
    public init(entity: Cdp_Model_V1_EntityType, cluster: UInt64) {
        self.entity = entity
        self.cluster = cluster
    }
}

/// A built person or account view.
public enum ProfileView: Sendable {
    case person(Cdp_Profile_V1_PersonView)
    case account(Cdp_Profile_V1_AccountView)
}

/// Changed state items taken for one delivery to segmentation.
public struct StateChunk: Sendable {
    /// The changed items taken from the store.
    public var items: [PendingItem]
    /// The position in the mark log of the last mark taken (0 if none was).
    public var marksThrough: Int64
    /// How many marks were taken (an item marked by several applies has a mark of each).
    public var markCount: Int
    /// The position in the event log of the last event taken (0 if none was).
    public var eventsThrough: Int64
    /// How many events of the log were taken.
    public var eventCount: Int
    /// The changes as sent, each a serialized `StateChange`: each item's value when it was taken, in
    /// the same order, then the events of the log (their events copied from the stored records).
    public var serialized: [Data]

    /// Creates a chunk.
    public init(
        items: [PendingItem],
        marksThrough: Int64 = 0,
        markCount: Int = 0,
        eventsThrough: Int64 = 0,
        eventCount: Int = 0,
        serialized: [Data]
    ) {
        self.items = items
        self.marksThrough = marksThrough
        self.markCount = markCount
        self.eventsThrough = eventsThrough
        self.eventCount = eventCount
        self.serialized = serialized
    }

    /// The changes decoded (in process: tests and the pipeline that feeds segmentation's engine).
    public var changes: [Cdp_Profile_V1_StateChange] {
        get throws { try serialized.map { try Cdp_Profile_V1_StateChange(serializedBytes: $0) } }
    }

    /// Whether it holds nothing to send.
    public var isEmpty: Bool { serialized.isEmpty }
}

/// An item of segmentation's state whose value changed and waits to be sent.
public struct PendingItem: Sendable, Hashable {
    /// What kind of item.
    public enum Kind: Int64, Sendable {
        /// A clustered entity's unified record, by `entity` and `cluster`.
        case entity = 1
        /// The link a fragment makes, by `entity` and `key`.
        case link = 2
        /// An event, by `key`.
        case event = 3
    }

    public var kind: Kind
    public var entity: Cdp_Model_V1_EntityType
    /// The cluster of an entity item; 0 otherwise.
    public var cluster: UInt64
    /// The fragment key of a link, the event key of an event; empty otherwise.
    public var key: String
    /// The version its change is sent with (increasing across all sends).
    public var version: UInt64

    /// Creates an item.
    public init(
        kind: Kind,
        entity: Cdp_Model_V1_EntityType,
        cluster: UInt64,
        key: String,
        version: UInt64
    ) {
        self.kind = kind
        self.entity = entity
        self.cluster = cluster
        self.key = key
        self.version = version
    }
}

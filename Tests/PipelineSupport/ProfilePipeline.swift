import CDPProto
import Foundation
import IdentityService
import IdentityStore
import NIOPosix
import ProfileStore
import TestSupport

/// Identity in process, feeding a profile store: records go through the identity engine, and its
/// outbox is applied to the profile store, as the relay would.
public struct ProfilePipeline: Sendable {
    /// Identity's store.
    public let identityStore: SQLiteIdentityStore
    /// Identity's engine.
    public let identity: IdentityEngine
    /// The profile store fed.
    public let profile: any ProfileStore

    /// Creates an in-memory identity feeding `profile`.
    public init(profile: any ProfileStore) throws {
        identityStore = try SQLiteIdentityStore()
        identity = try IdentityEngine(store: identityStore, loop: MultiThreadedEventLoopGroup.singleton.next())
        self.profile = profile
    }

    private init(identityStore: SQLiteIdentityStore, identity: IdentityEngine, profile: any ProfileStore) {
        self.identityStore = identityStore
        self.identity = identity
        self.profile = profile
    }

    /// The same identity feeding another profile store (one reopened, say).
    public func feeding(_ profile: any ProfileStore) -> ProfilePipeline {
        ProfilePipeline(identityStore: identityStore, identity: identity, profile: profile)
    }

    /// Sends `records` through identity, then applies identity's pending updates to profile.
    @discardableResult
    public func ingest(_ records: [Cdp_Identity_V1_StoredRecord]) async throws -> (applied: Int, duplicates: Int) {
        _ = try await identity.accept(records)
        return try forward()
    }

    /// Applies identity's pending updates to profile and marks them forwarded.
    public func forward() throws -> (applied: Int, duplicates: Int) {
        var total = (applied: 0, duplicates: 0)
        while let chunk = try identityStore.nextOutboxChunk(limit: 1000, maxBytes: .max) {
            let updates = try chunk.updates.map { try Cdp_Profile_V1_IdentityUpdate(serializedBytes: $0) }
            let result = try profile.apply(updates)
            total.applied += result.applied
            total.duplicates += result.duplicates
            try identityStore.acknowledge(chunk)
        }
        return total
    }

    /// The updates identity has queued, without forwarding them.
    public func pendingUpdates() throws -> [Cdp_Profile_V1_IdentityUpdate] {
        guard let chunk = try identityStore.nextOutboxChunk(limit: 1_000_000, maxBytes: .max) else { return [] }
        return try chunk.updates.map { try Cdp_Profile_V1_IdentityUpdate(serializedBytes: $0) }
    }
}

/// An identity by namespace and value.
public func identity(_ namespace: String, _ value: String) -> Cdp_Identity_V1_IdentityValue {
    var identity = Cdp_Identity_V1_IdentityValue()
    identity.namespace = namespace
    identity.value = value
    return identity
}

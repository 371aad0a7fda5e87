import CDPProto
import Foundation
import RPCCore
import SegmentationEvaluation
import SwiftProtobuf

/// Where batch jobs, estimates and explanations read views: profile.
public protocol ViewSource: Sendable {
    /// Whether views can be read at all (false when no profile service is configured).
    var isAvailable: Bool { get }

    /// Every view of one partition of `entityType`'s clusters, as of `asOf`, in chunks.
    func scan(
        _ entityType: Cdp_Model_V1_EntityType,
        partition: Int,
        partitions: Int,
        asOf: Date,
        chunk: @Sendable ([EntityView]) async throws -> Void
    ) async throws

    /// The view of the entity an identity names, or nil if there is none.
    func view(
        _ entityType: Cdp_Model_V1_EntityType,
        identity: Cdp_Identity_V1_IdentityValue,
        asOf: Date
    ) async throws -> EntityView?
}

/// Views from the profile service over RPC (`ScanPersonViews`, `GetPerson`, …).
public struct ProfileViewSource: ViewSource {
    public var isAvailable: Bool { true }
    private let client: Cdp_Profile_V1_Profile.Client
    private let chunkSize: Int

    /// A source calling profile through `client`, handing views on in chunks of `chunkSize`.
    public init(client: RPCClient, chunkSize: Int = 500) {
        self.client = Cdp_Profile_V1_Profile.Client(client)
        self.chunkSize = chunkSize
    }

    public func scan(
        _ entityType: Cdp_Model_V1_EntityType,
        partition: Int,
        partitions: Int,
        asOf: Date,
        chunk: @Sendable ([EntityView]) async throws -> Void
    ) async throws {
        var request = Cdp_Profile_V1_ScanRequest()
        request.partition = UInt32(partition)
        request.partitions = UInt32(partitions)
        request.asOf = Google_Protobuf_Timestamp(date: asOf)
        if entityType == .account {
            try await client.scanAccountViews(request) { call in
                try await Self.forward(call.responses, in: chunkSize, as: EntityView.account, to: chunk)
            }
        } else {
            try await client.scanPersonViews(request) { call in
                try await Self.forward(call.responses, in: chunkSize, as: EntityView.person, to: chunk)
            }
        }
    }

    /// Hands a scan's views on in chunks of `size`.
    private static func forward<View: Sendable>(
        _ views: RPCAsyncSequence<View>,
        in size: Int,
        as wrap: (View) -> EntityView,
        to chunk: @Sendable ([EntityView]) async throws -> Void
    ) async throws {
        var pending: [EntityView] = []
        for try await view in views {
            pending.append(wrap(view))
            if pending.count == size {
                try await chunk(pending)
                pending.removeAll(keepingCapacity: true)
            }
        }
        if !pending.isEmpty { try await chunk(pending) }
    }

    public func view(
        _ entityType: Cdp_Model_V1_EntityType,
        identity: Cdp_Identity_V1_IdentityValue,
        asOf: Date
    ) async throws -> EntityView? {
        var request = Cdp_Profile_V1_GetEntityRequest()
        request.identity = identity
        request.asOf = Google_Protobuf_Timestamp(date: asOf)
        do {
            return entityType == .account
                ? .account(try await client.getAccount(request, options: CallOptions(timeout: .seconds(30))))
                : .person(try await client.getPerson(request, options: CallOptions(timeout: .seconds(30))))
        } catch let error as RPCError where error.code == .notFound {
            return nil
        }
    }
}

/// The source when no profile service is configured: every read is refused with the reason.
public struct NoViewSource: ViewSource {
    /// Creates the source.
    public init() {}

    public var isAvailable: Bool { false }

    /// Why every read is refused.
    public static let refusal = RPCError(
        code: .failedPrecondition,
        message: "segmentation has no profile service configured (--profile or CDP_PROFILE_ADDR) to read views from"
    )

    public func scan(
        _ entityType: Cdp_Model_V1_EntityType,
        partition: Int,
        partitions: Int,
        asOf: Date,
        chunk: @Sendable ([EntityView]) async throws -> Void
    ) async throws {
        throw Self.refusal
    }

    public func view(
        _ entityType: Cdp_Model_V1_EntityType,
        identity: Cdp_Identity_V1_IdentityValue,
        asOf: Date
    ) async throws -> EntityView? {
        throw Self.refusal
    }
}

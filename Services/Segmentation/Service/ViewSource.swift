import CDPProto
import Foundation
import RPCCore
import SegmentationEvaluation
import SwiftProtobuf

/// Where explanations find the entity an identity names: profile (segmentation's state knows
/// clusters, not identities).
public protocol ViewSource: Sendable {
    /// Whether views can be read at all (false when no profile service is configured).
    var isAvailable: Bool { get }

    /// The view of the entity an identity names, or nil if there is none.
    func view(
        _ entityType: Cdp_Model_V1_EntityType,
        identity: Cdp_Identity_V1_IdentityValue,
        asOf: Date
    ) async throws -> EntityView?
}

/// Views from the profile service over RPC (`GetPerson`, `GetAccount`).
public struct ProfileViewSource: ViewSource {
    public var isAvailable: Bool { true }
    private let client: Cdp_Profile_V1_Profile.Client

    /// A source calling profile through `client`.
    public init(client: RPCClient) {
        self.client = Cdp_Profile_V1_Profile.Client(client)
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
        message:
            "segmentation has no profile service configured (--profile or CDP_PROFILE_ADDR) to find entities by identity"
    )

    public func view(
        _ entityType: Cdp_Model_V1_EntityType,
        identity: Cdp_Identity_V1_IdentityValue,
        asOf: Date
    ) async throws -> EntityView? {
        throw Self.refusal
    }
}

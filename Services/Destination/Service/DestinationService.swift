import CDPProto
import DestinationStore
import Foundation
import Logging
import RPCCore
import SwiftProtobuf

/// `cdp.destination.v1.Destination`: segmentation's membership changes in; destinations,
/// activations and the delivery log out.
public final class DestinationService: Cdp_Destination_V1_Destination.ServiceProtocol {
    private let engine: DestinationEngine
    private let workers: DeliveryWorkers
    private let logger: Logger

    /// Creates the service over an engine and its delivery workers.
    public init(engine: DestinationEngine, workers: DeliveryWorkers, logger: Logger) {
        self.engine = engine
        self.workers = workers
        self.logger = logger
    }

    public func acceptMembershipChanges(
        request: Cdp_Destination_V1_AcceptMembershipChangesRequest,
        context: ServerContext
    ) async throws -> Cdp_Destination_V1_AcceptMembershipChangesResponse {
        guard !request.sender.isEmpty else {
            throw RPCError(code: .invalidArgument, message: "sender is empty: sequences are numbered per sender")
        }
        let result: (accepted: Int, duplicates: Int)
        do {
            result = try await engine.accept(sender: request.sender, request.changes)
        } catch {
            logger.error("destination store failed; the call was rolled back", metadata: ["error": "\(error)"])
            throw RPCError(code: .unavailable, message: "destination could not store the changes (\(error)); retry")
        }
        if result.accepted > 0 { workers.wake() }
        var response = Cdp_Destination_V1_AcceptMembershipChangesResponse()
        response.accepted = UInt32(result.accepted)
        response.duplicates = UInt32(result.duplicates)
        return response
    }

    public func createDestination(
        request: Cdp_Destination_V1_CreateDestinationRequest,
        context: ServerContext
    ) async throws -> Cdp_Destination_V1_DestinationInfo {
        let record = try await engine.createDestination(
            type: request.type,
            name: request.name,
            settings: request.settings
        )
        logger.info("destination created", metadata: ["destination": "\(record.id)", "type": "\(record.type)"])
        workers.wake()
        return try await info(record)
    }

    public func updateDestination(
        request: Cdp_Destination_V1_UpdateDestinationRequest,
        context: ServerContext
    ) async throws -> Cdp_Destination_V1_DestinationInfo {
        let record = try await engine.updateDestination(
            id: request.id,
            name: request.hasName ? request.name : nil,
            set: request.settings,
            unset: request.unset
        )
        logger.info("destination updated", metadata: ["destination": "\(record.id)"])
        // Its worker starts again with the new settings.
        workers.restart(record.id)
        return try await info(record)
    }

    public func deleteDestination(
        request: Cdp_Destination_V1_DeleteDestinationRequest,
        context: ServerContext
    ) async throws -> Cdp_Destination_V1_DeleteDestinationResponse {
        try await engine.deleteDestination(request.id)
        logger.info("destination deleted", metadata: ["destination": "\(request.id)"])
        workers.restart(request.id)
        return .init()
    }

    public func listDestinations(
        request: Cdp_Destination_V1_ListDestinationsRequest,
        context: ServerContext
    ) async throws -> Cdp_Destination_V1_ListDestinationsResponse {
        var response = Cdp_Destination_V1_ListDestinationsResponse()
        for record in try await engine.destinations() { response.destinations.append(try await info(record)) }
        return response
    }

    /// A destination as the API shows it: never its credentials' values.
    private func info(_ record: DestinationRecord) async throws -> Cdp_Destination_V1_DestinationInfo {
        var info = Cdp_Destination_V1_DestinationInfo()
        info.id = record.id
        info.type = record.type
        info.name = record.name
        info.settings = record.settings
        info.credentials = record.credentials.keys.sorted()
        info.createdAt = Google_Protobuf_Timestamp(date: record.createdAt)
        let pending = try await engine.pending(record.id)
        info.pending = UInt64(pending.count)
        if let oldest = pending.oldest { info.oldestPending = Google_Protobuf_Timestamp(date: oldest) }
        info.lastError = workers.lastError(record.id) ?? ""
        return info
    }

    public func activate(
        request: Cdp_Destination_V1_ActivateRequest,
        context: ServerContext
    ) async throws -> Cdp_Destination_V1_Activation {
        let (activation, backfill) = try await engine.activate(
            segment: request.segmentID,
            destination: request.destinationID,
            identity: request.identity,
            attributes: request.attributes
        )
        logger.info(
            "activation created",
            metadata: [
                "activation": "\(activation.id)", "segment": "\(activation.segmentID)", "backfill": "\(backfill)",
            ]
        )
        workers.wake()
        return Self.message(activation)
    }

    public func deactivate(
        request: Cdp_Destination_V1_DeactivateRequest,
        context: ServerContext
    ) async throws -> Cdp_Destination_V1_Activation {
        Self.message(try await engine.deactivate(request.activationID))
    }

    public func listActivations(
        request: Cdp_Destination_V1_ListActivationsRequest,
        context: ServerContext
    ) async throws -> Cdp_Destination_V1_ListActivationsResponse {
        var response = Cdp_Destination_V1_ListActivationsResponse()
        response.activations = try await engine.activations().filter {
            (request.segmentID.isEmpty || $0.segmentID == request.segmentID)
                && (request.destinationID.isEmpty || $0.destinationID == request.destinationID)
        }.map(Self.message)
        return response
    }

    static func message(_ activation: ActivationRecord) -> Cdp_Destination_V1_Activation {
        var message = Cdp_Destination_V1_Activation()
        message.id = activation.id
        message.segmentID = activation.segmentID
        message.destinationID = activation.destinationID
        message.identity = activation.identity
        message.attributes = activation.attributes
        message.active = activation.active
        message.createdAt = Google_Protobuf_Timestamp(date: activation.createdAt)
        return message
    }

    public func listDeliveries(
        request: Cdp_Destination_V1_ListDeliveriesRequest,
        context: ServerContext
    ) async throws -> Cdp_Destination_V1_ListDeliveriesResponse {
        guard try await engine.destinations().contains(where: { $0.id == request.destinationID }) else {
            throw RPCError(code: .notFound, message: "no destination has the id \(request.destinationID)")
        }
        let limit = request.pageSize == 0 ? 20 : Int(min(request.pageSize, 100))
        var before: Int64 = 0
        if !request.pageToken.isEmpty {
            guard let token = Int64(request.pageToken), token > 0 else {
                throw RPCError(
                    code: .invalidArgument,
                    message: "page_token \"\(request.pageToken)\" is not one ListDeliveries returned"
                )
            }
            before = token
        }
        let runs = try await engine.runs(destination: request.destinationID, before: before, limit: limit)
        var response = Cdp_Destination_V1_ListDeliveriesResponse()
        response.deliveries = runs.map(\.1)
        if runs.count == limit, let last = runs.last { response.nextPageToken = String(last.0) }
        return response
    }
}

import Foundation
import InteropProto
import RPCCore

/// The gRPC interop `grpc.testing.TestService`, as the interop test descriptions specify it.
///
/// `UnimplementedCall` is deliberately left unimplemented (the `unimplemented_method` case).
struct TestService: Grpc_Testing_TestService.ServiceProtocol {
    /// Echo of `x-grpc-test-echo-initial` into the response headers and
    /// `x-grpc-test-echo-trailing-bin` into the trailers, for the `custom_metadata` case.
    private func echoMetadata(_ context: ServerContext) {
        var initial = Metadata()
        for value in context.requestMetadata[stringValues: "x-grpc-test-echo-initial"] {
            initial.add("x-grpc-test-echo-initial", value)
        }
        if !initial.isEmpty { context.addInitialMetadata(initial) }
        var trailing = Metadata()
        for value in context.requestMetadata[binaryValues: "x-grpc-test-echo-trailing-bin"] {
            trailing.add("x-grpc-test-echo-trailing-bin", bytes: value)
        }
        if !trailing.isEmpty { context.addTrailingMetadata(trailing) }
    }

    /// Fails the call with the requested status, if the request asks for one.
    private func applyResponseStatus(_ status: Grpc_Testing_EchoStatus?) throws {
        guard let status, status.code != 0 else { return }
        let code = Status.Code(rawValue: Int(status.code)) ?? .unknown
        throw RPCError(code: code, message: status.message)
    }

    private func payload(size: Int32) -> Grpc_Testing_Payload {
        var payload = Grpc_Testing_Payload()
        payload.body = Data(count: Int(max(0, size)))
        return payload
    }

    func emptyCall(request: Grpc_Testing_Empty, context: ServerContext) async throws -> Grpc_Testing_Empty {
        self.echoMetadata(context)
        return Grpc_Testing_Empty()
    }

    func unaryCall(
        request: Grpc_Testing_SimpleRequest,
        context: ServerContext
    ) async throws
        -> Grpc_Testing_SimpleResponse
    {
        self.echoMetadata(context)
        try self.applyResponseStatus(request.hasResponseStatus ? request.responseStatus : nil)
        var response = Grpc_Testing_SimpleResponse()
        response.payload = self.payload(size: request.responseSize)
        return response
    }

    func streamingOutputCall(
        request: Grpc_Testing_StreamingOutputCallRequest,
        responses: RPCWriter<Grpc_Testing_StreamingOutputCallResponse>,
        context: ServerContext
    ) async throws {
        self.echoMetadata(context)
        for parameters in request.responseParameters {
            try await self.respond(parameters, to: responses)
        }
        try self.applyResponseStatus(request.hasResponseStatus ? request.responseStatus : nil)
    }

    func streamingInputCall(
        requests: RPCAsyncSequence<Grpc_Testing_StreamingInputCallRequest>,
        context: ServerContext
    ) async throws -> Grpc_Testing_StreamingInputCallResponse {
        self.echoMetadata(context)
        var total = 0
        for try await request in requests { total += request.payload.body.count }
        var response = Grpc_Testing_StreamingInputCallResponse()
        response.aggregatedPayloadSize = Int32(total)
        return response
    }

    func fullDuplexCall(
        requests: RPCAsyncSequence<Grpc_Testing_StreamingOutputCallRequest>,
        responses: RPCWriter<Grpc_Testing_StreamingOutputCallResponse>,
        context: ServerContext
    ) async throws {
        self.echoMetadata(context)
        for try await request in requests {
            try self.applyResponseStatus(request.hasResponseStatus ? request.responseStatus : nil)
            for parameters in request.responseParameters {
                try await self.respond(parameters, to: responses)
            }
        }
    }

    func halfDuplexCall(
        requests: RPCAsyncSequence<Grpc_Testing_StreamingOutputCallRequest>,
        responses: RPCWriter<Grpc_Testing_StreamingOutputCallResponse>,
        context: ServerContext
    ) async throws {
        self.echoMetadata(context)
        var buffered: [Grpc_Testing_StreamingOutputCallRequest] = []
        for try await request in requests { buffered.append(request) }
        for request in buffered {
            try self.applyResponseStatus(request.hasResponseStatus ? request.responseStatus : nil)
            for parameters in request.responseParameters {
                try await self.respond(parameters, to: responses)
            }
        }
    }

    func unimplementedCall(request: Grpc_Testing_Empty, context: ServerContext) async throws -> Grpc_Testing_Empty {
        throw RPCError(code: .unimplemented, message: "grpc.testing.TestService/UnimplementedCall is not implemented.")
    }

    private func respond(
        _ parameters: Grpc_Testing_ResponseParameters,
        to responses: RPCWriter<Grpc_Testing_StreamingOutputCallResponse>
    ) async throws {
        if parameters.intervalUs > 0 {
            try await Task.sleep(for: .microseconds(Int64(parameters.intervalUs)))
        }
        var response = Grpc_Testing_StreamingOutputCallResponse()
        response.payload = self.payload(size: parameters.size)
        try await responses.write(response)
    }
}

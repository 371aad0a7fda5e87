import ArgumentParser
import Foundation
import InteropProto
import RPCCore
import RPCHTTP2

/// Runs one gRPC interop test case against a server, with the project's client transport.
@main
struct InteropClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cdp-interop-client",
        abstract: "Runs a gRPC interop test case against a server; exits non-zero when it fails.",
        discussion: "Cases: \(InteropCase.allCases.map(\.rawValue).joined(separator: ", ")), or 'all'."
    )

    @Option(help: "The server's host.")
    var serverHost: String = "127.0.0.1"

    @Option(help: "The server's port.")
    var serverPort: Int

    @Option(help: "The case to run, or 'all'.")
    var testCase: String = "all"

    func validate() throws {
        guard self.testCase == "all" || InteropCase(rawValue: self.testCase) != nil else {
            throw ValidationError("Unknown test case '\(self.testCase)'. \(Self.configuration.discussion)")
        }
    }

    func run() async throws {
        let transport = HTTP2ClientTransport(configuration: .init(host: self.serverHost, port: self.serverPort))
        let cases = self.testCase == "all" ? InteropCase.allCases : [InteropCase(rawValue: self.testCase)!]
        var failed = 0
        for testCase in cases {
            do {
                try await testCase.run(RPCClient(transport: transport))
                print("PASS \(testCase.rawValue)")
            } catch {
                failed += 1
                print("FAIL \(testCase.rawValue): \(error)")
            }
        }
        await transport.close()
        print("\(cases.count - failed) passed, \(failed) failed")
        if failed > 0 { throw ExitCode.failure }
    }
}

/// A check inside a case failed.
struct InteropFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func check(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw InteropFailure(message()) }
}

/// Expects `body` to fail with `code` (and `message` when given).
func expectStatus(_ code: Status.Code, message: String? = nil, _ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as RPCError {
        try check(error.code == code, "expected \(code), got \(error.code): \(error.message)")
        if let message {
            try check(
                error.message == message,
                "expected message \(message.debugDescription), got \(error.message.debugDescription)"
            )
        }
        return
    }
    throw InteropFailure("expected \(code), but the call succeeded")
}

/// The standard interop cases (gRPC's interop test descriptions) plus gzip variants.
enum InteropCase: String, CaseIterable {
    case emptyUnary = "empty_unary"
    case largeUnary = "large_unary"
    case clientStreaming = "client_streaming"
    case serverStreaming = "server_streaming"
    case pingPong = "ping_pong"
    case emptyStream = "empty_stream"
    case customMetadata = "custom_metadata"
    case statusCodeAndMessage = "status_code_and_message"
    case specialStatusMessage = "special_status_message"
    case unimplementedMethod = "unimplemented_method"
    case unimplementedService = "unimplemented_service"
    case cancelAfterBegin = "cancel_after_begin"
    case cancelAfterFirstResponse = "cancel_after_first_response"
    case timeoutOnSleepingServer = "timeout_on_sleeping_server"
    case gzipLargeUnary = "gzip_large_unary"
    case gzipClientStreaming = "gzip_client_streaming"

    private static let requestSizes: [Int] = [27182, 8, 1828, 45904]
    private static let responseSizes: [Int32] = [31415, 9, 2653, 58979]

    private static func payload(_ size: Int) -> Grpc_Testing_Payload {
        var payload = Grpc_Testing_Payload()
        payload.body = Data(count: size)
        return payload
    }

    private static func streamingRequest(
        responseSize: Int32,
        payloadSize: Int
    ) -> Grpc_Testing_StreamingOutputCallRequest {
        var request = Grpc_Testing_StreamingOutputCallRequest()
        var parameters = Grpc_Testing_ResponseParameters()
        parameters.size = responseSize
        request.responseParameters = [parameters]
        request.payload = self.payload(payloadSize)
        return request
    }

    func run(_ rpc: RPCClient) async throws {
        let client = Grpc_Testing_TestService.Client(rpc)
        let deadline = CallOptions(timeout: .seconds(30))
        switch self {
        case .emptyUnary:
            _ = try await client.emptyCall(Grpc_Testing_Empty(), options: deadline)

        case .largeUnary, .gzipLargeUnary:
            var request = Grpc_Testing_SimpleRequest()
            request.responseSize = 314159
            request.payload = Self.payload(271828)
            let options = CallOptions(timeout: .seconds(30), compressRequests: self == .gzipLargeUnary)
            let response = try await client.unaryCall(request, options: options)
            try check(
                response.payload.body.count == 314159,
                "response payload has \(response.payload.body.count) bytes"
            )
            try check(response.payload.body.allSatisfy { $0 == 0 }, "response payload is not all zeros")

        case .clientStreaming, .gzipClientStreaming:
            let requests = Self.requestSizes.map { size in
                var request = Grpc_Testing_StreamingInputCallRequest()
                request.payload = Self.payload(size)
                return request
            }
            let options = CallOptions(timeout: .seconds(30), compressRequests: self == .gzipClientStreaming)
            let response = try await client.streamingInputCall(requests, options: options)
            try check(response.aggregatedPayloadSize == 74922, "aggregated size \(response.aggregatedPayloadSize)")

        case .serverStreaming:
            var request = Grpc_Testing_StreamingOutputCallRequest()
            request.responseParameters = Self.responseSizes.map { size in
                var parameters = Grpc_Testing_ResponseParameters()
                parameters.size = size
                return parameters
            }
            let sizes = try await client.streamingOutputCall(request, options: deadline) { call in
                var sizes: [Int32] = []
                for try await response in call.responses { sizes.append(Int32(response.payload.body.count)) }
                return sizes
            }
            try check(sizes == Self.responseSizes, "response sizes \(sizes)")

        case .pingPong:
            try await client.fullDuplexCall(options: deadline) { call in
                for (requestSize, responseSize) in zip(Self.requestSizes, Self.responseSizes) {
                    try await call.send(Self.streamingRequest(responseSize: responseSize, payloadSize: requestSize))
                    let response = try await call.receive()
                    try check(
                        response?.payload.body.count == Int(responseSize),
                        "expected \(responseSize) bytes, got \(String(describing: response?.payload.body.count))"
                    )
                }
                try await call.closeSend()
                try check(try await call.receive() == nil, "a response after the last request")
            }

        case .emptyStream:
            try await client.fullDuplexCall(options: deadline) { call in
                try await call.closeSend()
                try check(try await call.receive() == nil, "a response on an empty stream")
            }

        case .customMetadata:
            var metadata = Metadata()
            metadata.add("x-grpc-test-echo-initial", "test_initial_metadata_value")
            metadata.add("x-grpc-test-echo-trailing-bin", bytes: [0xAB, 0xAB, 0xAB])
            var request = Grpc_Testing_SimpleRequest()
            request.responseSize = 314159
            request.payload = Self.payload(271828)
            let response = try await rpc.unary(
                Grpc_Testing_TestService.Method.unaryCall,
                request,
                metadata: metadata,
                options: deadline
            )
            try self.checkEchoed(initial: response.initialMetadata, trailing: response.trailingMetadata)
            try await client.fullDuplexCall(metadata: metadata, options: deadline) { call in
                try await call.send(Self.streamingRequest(responseSize: 314159, payloadSize: 271828))
                try await call.closeSend()
                while try await call.receive() != nil {}
                try self.checkEchoed(initial: try await call.initialMetadata(), trailing: call.trailingMetadata)
            }

        case .statusCodeAndMessage, .specialStatusMessage:
            let message =
                self == .statusCodeAndMessage
                ? "test status message" : "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"
            var status = Grpc_Testing_EchoStatus()
            status.code = 2
            status.message = message
            var request = Grpc_Testing_SimpleRequest()
            request.responseStatus = status
            try await expectStatus(.unknown, message: message) {
                _ = try await client.unaryCall(request, options: deadline)
            }
            guard self == .statusCodeAndMessage else { return }
            var streaming = Grpc_Testing_StreamingOutputCallRequest()
            streaming.responseStatus = status
            try await expectStatus(.unknown, message: message) {
                try await client.fullDuplexCall(options: deadline) { call in
                    try await call.send(streaming)
                    try await call.closeSend()
                    while try await call.receive() != nil {}
                }
            }

        case .unimplementedMethod:
            try await expectStatus(.unimplemented) {
                _ = try await client.unimplementedCall(Grpc_Testing_Empty(), options: deadline)
            }

        case .unimplementedService:
            try await expectStatus(.unimplemented) {
                _ = try await Grpc_Testing_UnimplementedService.Client(rpc).unimplementedCall(
                    Grpc_Testing_Empty(),
                    options: deadline
                )
            }

        case .cancelAfterBegin:
            try await expectStatus(.cancelled) {
                try await rpc.withCall(Grpc_Testing_TestService.Method.streamingInputCall, options: deadline) { call in
                    call.cancel()
                    _ = try await call.receive()
                }
            }

        case .cancelAfterFirstResponse:
            try await expectStatus(.cancelled) {
                try await client.fullDuplexCall(options: deadline) { call in
                    try await call.send(Self.streamingRequest(responseSize: 31415, payloadSize: 27182))
                    _ = try await call.receive()
                    call.cancel()
                    while try await call.receive() != nil {}
                }
            }

        case .timeoutOnSleepingServer:
            try await expectStatus(.deadlineExceeded) {
                try await client.fullDuplexCall(options: CallOptions(timeout: .milliseconds(1))) { call in
                    try await call.send(Self.streamingRequest(responseSize: 31415, payloadSize: 27182))
                    while try await call.receive() != nil {}
                }
            }
        }
    }

    private func checkEchoed(initial: Metadata, trailing: Metadata) throws {
        try check(
            initial.first("x-grpc-test-echo-initial") == "test_initial_metadata_value",
            "initial metadata \(initial)"
        )
        try check(
            trailing[binaryValues: "x-grpc-test-echo-trailing-bin"] == [[0xAB, 0xAB, 0xAB]],
            "trailing metadata \(trailing)"
        )
    }
}

import InteropProto
import Logging
import RPCCore
import RPCHTTP2
import RPCServices
import SwiftProtobuf
import Testing

/// Health and reflection, over a real connection, as grpcurl and load balancers use them.
@Suite struct StandardServicesTests {
    private struct Interop: Grpc_Testing_TestService.ServiceProtocol {
        func emptyCall(request: Grpc_Testing_Empty, context: ServerContext) async throws -> Grpc_Testing_Empty {
            request
        }
        func unaryCall(
            request: Grpc_Testing_SimpleRequest,
            context: ServerContext
        ) async throws
            -> Grpc_Testing_SimpleResponse
        { Grpc_Testing_SimpleResponse() }
        func streamingOutputCall(
            request: Grpc_Testing_StreamingOutputCallRequest,
            responses: RPCWriter<Grpc_Testing_StreamingOutputCallResponse>,
            context: ServerContext
        ) async throws {}
        func streamingInputCall(
            requests: RPCAsyncSequence<Grpc_Testing_StreamingInputCallRequest>,
            context: ServerContext
        ) async throws -> Grpc_Testing_StreamingInputCallResponse { Grpc_Testing_StreamingInputCallResponse() }
        func fullDuplexCall(
            requests: RPCAsyncSequence<Grpc_Testing_StreamingOutputCallRequest>,
            responses: RPCWriter<Grpc_Testing_StreamingOutputCallResponse>,
            context: ServerContext
        ) async throws {}
        func halfDuplexCall(
            requests: RPCAsyncSequence<Grpc_Testing_StreamingOutputCallRequest>,
            responses: RPCWriter<Grpc_Testing_StreamingOutputCallResponse>,
            context: ServerContext
        ) async throws {}
        func unimplementedCall(request: Grpc_Testing_Empty, context: ServerContext) async throws -> Grpc_Testing_Empty {
            throw RPCError(code: .unimplemented, message: "not implemented")
        }
    }

    private func withServer(
        _ body: (RPCClient, HealthService) async throws -> Void
    ) async throws {
        let health = HealthService()
        let served: [any RPCService] = [Interop(), health]
        let server = RPCServer(
            configuration: .init(),
            services: served + [ReflectionService(services: served)],
            logger: Logger(label: "test")
        )
        let address = try await server.start()
        let transport = HTTP2ClientTransport(configuration: .init(host: "127.0.0.1", port: address.port!))
        var failure: (any Error)?
        do {
            try await body(RPCClient(transport: transport), health)
        } catch {
            failure = error
        }
        await transport.close()
        await server.shutdown()
        if let failure { throw failure }
    }

    private func reflect(
        _ client: RPCClient,
        _ request: Grpc_Reflection_V1_ServerReflectionRequest
    ) async throws -> Grpc_Reflection_V1_ServerReflectionResponse {
        try await Grpc_Reflection_V1_ServerReflection.Client(client).serverReflectionInfo { call in
            try await call.send(request)
            try await call.closeSend()
            return try #require(try await call.receive())
        }
    }

    @Test func reflectionListsEveryService() async throws {
        try await self.withServer { client, _ in
            var request = Grpc_Reflection_V1_ServerReflectionRequest()
            request.listServices = ""
            let names = try await self.reflect(client, request).listServicesResponse.service.map(\.name)
            #expect(
                names == [
                    "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                    "grpc.reflection.v1alpha.ServerReflection", "grpc.testing.TestService",
                ]
            )
        }
    }

    @Test func reflectionFindsTheFileOfASymbolWithItsImports() async throws {
        try await self.withServer { client, _ in
            for symbol in [
                "grpc.testing.TestService", "grpc.testing.TestService.UnaryCall", "grpc.testing.SimpleRequest",
            ] {
                var request = Grpc_Reflection_V1_ServerReflectionRequest()
                request.fileContainingSymbol = symbol
                let files = try await self.reflect(client, request).fileDescriptorResponse.fileDescriptorProto.map {
                    try Google_Protobuf_FileDescriptorProto(serializedBytes: $0)
                }
                let names = Set(files.map(\.name))
                #expect(names.isSuperset(of: ["grpc_testing/messages.proto"]), "\(symbol): \(names)")
                if symbol.hasPrefix("grpc.testing.TestService") {
                    #expect(files.first?.name == "grpc_testing/test.proto")
                    #expect(
                        names == ["grpc_testing/test.proto", "grpc_testing/empty.proto", "grpc_testing/messages.proto"]
                    )
                    #expect(files.first?.service.first?.method.map(\.name).contains("FullDuplexCall") == true)
                }
            }
        }
    }

    @Test func reflectionReportsUnknownSymbolsAsNotFound() async throws {
        try await self.withServer { client, _ in
            var request = Grpc_Reflection_V1_ServerReflectionRequest()
            request.fileContainingSymbol = "no.such.Thing"
            let response = try await self.reflect(client, request)
            #expect(response.errorResponse.errorCode == Int32(Status.Code.notFound.rawValue))
        }
    }

    @Test func healthChecksAndWatchesStatusChanges() async throws {
        try await self.withServer { client, health in
            let stub = Grpc_Health_V1_Health.Client(client)
            #expect(try await stub.check(Grpc_Health_V1_HealthCheckRequest()).status == .serving)
            var unknown = Grpc_Health_V1_HealthCheckRequest()
            unknown.service = "cdp.Unknown"
            await #expect {
                _ = try await stub.check(unknown)
            } throws: { ($0 as? RPCError)?.code == .notFound }

            var request = Grpc_Health_V1_HealthCheckRequest()
            request.service = "cdp.Profile"
            health.setStatus(.notServing, for: "cdp.Profile")
            let seen = try await stub.watch(request) { call in
                var seen: [HealthService.ServingStatus] = []
                while let response = try await call.receive() {
                    seen.append(response.status)
                    if seen.count == 1 { health.setStatus(.serving, for: "cdp.Profile") }
                    if seen.count == 2 { break }
                }
                return seen
            }
            #expect(seen == [.notServing, .serving])
        }
    }
}

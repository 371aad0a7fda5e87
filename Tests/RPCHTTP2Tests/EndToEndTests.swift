import Foundation
import InteropProto
import Logging
import NIOCore
import NIOPosix
import RPCCore
import Testing

@testable import RPCHTTP2

/// Methods of a small test service, built from descriptors (no generated protocol needed).
private enum Echo {
    static let service = "cdp.test.Echo"
    static let unary = RPCMethod<Grpc_Testing_SimpleRequest, Grpc_Testing_SimpleResponse>(
        service: service,
        method: "Unary",
        kind: .unary
    )
    static let collect = RPCMethod<Grpc_Testing_StreamingInputCallRequest, Grpc_Testing_StreamingInputCallResponse>(
        service: service,
        method: "Collect",
        kind: .clientStreaming
    )
    static let expand = RPCMethod<Grpc_Testing_StreamingOutputCallRequest, Grpc_Testing_StreamingOutputCallResponse>(
        service: service,
        method: "Expand",
        kind: .serverStreaming
    )
    static let chat = RPCMethod<Grpc_Testing_StreamingOutputCallRequest, Grpc_Testing_StreamingOutputCallResponse>(
        service: service,
        method: "Chat",
        kind: .bidirectional
    )
    static let sleep = RPCMethod<Grpc_Testing_Empty, Grpc_Testing_Empty>(
        service: service,
        method: "Sleep",
        kind: .unary
    )
    static let fail = RPCMethod<Grpc_Testing_Empty, Grpc_Testing_Empty>(service: service, method: "Fail", kind: .unary)
    /// Reads nothing until `slowReaderGate` opens, then counts the requests.
    static let slowCollect = RPCMethod<Grpc_Testing_StreamingInputCallRequest, Grpc_Testing_StreamingInputCallResponse>(
        service: service,
        method: "SlowCollect",
        kind: .clientStreaming
    )
}

private struct InternalDetail: Error {}

/// Opens to let the `SlowCollect` handler start reading.
private let slowReaderGate = LockedBox(false)

/// Records whether a handler observed cancellation.
private let sleepCancelled = LockedBox(0)

private struct EchoService: RPCService {
    var serviceDescriptor: ServiceDescriptor {
        ServiceDescriptor(fullName: Echo.service, fileName: "echo.proto", fileDescriptors: [:])
    }

    var methods: [ServerMethod] {
        [
            .unary(Echo.unary) { request, context in
                context.addInitialMetadata(Metadata([("x-initial", context.requestMetadata.first("x-echo") ?? "")]))
                context.addTrailingMetadata(Metadata([("x-trailing", "done")]))
                var response = Grpc_Testing_SimpleResponse()
                response.payload.body = request.payload.body + Data(repeating: 1, count: Int(request.responseSize))
                return response
            },
            .clientStreaming(Echo.collect) { requests, _ in
                var total = 0
                for try await request in requests { total += request.payload.body.count }
                var response = Grpc_Testing_StreamingInputCallResponse()
                response.aggregatedPayloadSize = Int32(total)
                return response
            },
            .serverStreaming(Echo.expand) { request, responses, _ in
                for parameters in request.responseParameters {
                    var response = Grpc_Testing_StreamingOutputCallResponse()
                    response.payload.body = Data(repeating: 2, count: Int(parameters.size))
                    try await responses.write(response)
                }
            },
            .bidirectional(Echo.chat) { requests, responses, _ in
                for try await request in requests {
                    var response = Grpc_Testing_StreamingOutputCallResponse()
                    response.payload = request.payload
                    try await responses.write(response)
                }
            },
            .unary(Echo.sleep) { _, _ in
                do {
                    try await Task.sleep(for: .seconds(30))
                } catch {
                    sleepCancelled.withLock { $0 += 1 }
                    throw error
                }
                return Grpc_Testing_Empty()
            },
            .unary(Echo.fail) { _, _ in throw InternalDetail() },
            .clientStreaming(Echo.slowCollect) { requests, _ in
                while !slowReaderGate.value { try await Task.sleep(for: .milliseconds(10)) }
                var count = 0
                for try await _ in requests { count += 1 }
                var response = Grpc_Testing_StreamingInputCallResponse()
                response.aggregatedPayloadSize = Int32(count)
                return response
            },
        ]
    }
}

/// Runs `body` with a started server and a client connected to it.
private func withServerAndClient(
    _ configuration: RPCServer.Configuration = .init(),
    clientMetadata: Metadata = Metadata(),
    _ body: (RPCClient) async throws -> Void
) async throws {
    let server = RPCServer(configuration: configuration, services: [EchoService()], logger: Logger(label: "test"))
    let address = try await server.start()
    let transport = HTTP2ClientTransport(configuration: .init(host: "127.0.0.1", port: address.port!))
    var failure: (any Error)?
    do {
        try await body(RPCClient(transport: transport, defaultMetadata: clientMetadata))
    } catch {
        failure = error
    }
    await transport.close()
    await server.shutdown()
    if let failure { throw failure }
}

@Suite struct EndToEndTests {
    @Test func unaryCarriesMessagesAndMetadataBothWays() async throws {
        try await withServerAndClient { client in
            var request = Grpc_Testing_SimpleRequest()
            request.payload.body = Data([9, 9])
            request.responseSize = 3
            let response = try await client.unary(Echo.unary, request, metadata: Metadata([("x-echo", "hello")]))
            #expect(response.message.payload.body == Data([9, 9, 1, 1, 1]))
            #expect(response.initialMetadata.first("x-initial") == "hello")
            #expect(response.trailingMetadata.first("x-trailing") == "done")
        }
    }

    @Test func clientStreamingAggregates() async throws {
        try await withServerAndClient { client in
            let requests = [10, 0, 70_000].map { size in
                var request = Grpc_Testing_StreamingInputCallRequest()
                request.payload.body = Data(count: size)
                return request
            }
            let response = try await client.clientStreaming(Echo.collect, requests)
            #expect(response.message.aggregatedPayloadSize == 70_010)
            let compressed = try await client.clientStreaming(
                Echo.collect,
                requests,
                options: CallOptions(compressRequests: true)
            )
            #expect(compressed.message.aggregatedPayloadSize == 70_010)
        }
    }

    @Test func serverStreamingDeliversEveryResponseInOrder() async throws {
        try await withServerAndClient { client in
            var request = Grpc_Testing_StreamingOutputCallRequest()
            request.responseParameters = (0..<200).map { index in
                var parameters = Grpc_Testing_ResponseParameters()
                parameters.size = Int32(index * 100)
                return parameters
            }
            let sizes = try await client.serverStreaming(Echo.expand, request) { call in
                var sizes: [Int] = []
                for try await response in call.responses { sizes.append(response.payload.body.count) }
                return sizes
            }
            #expect(sizes == (0..<200).map { $0 * 100 })
        }
    }

    @Test func bidirectionalPingPong() async throws {
        try await withServerAndClient { client in
            try await client.withCall(Echo.chat) { call in
                for index in 0..<50 {
                    var request = Grpc_Testing_StreamingOutputCallRequest()
                    request.payload.body = Data([UInt8(index)])
                    try await call.send(request)
                    let response = try await call.receive()
                    #expect(response?.payload.body == Data([UInt8(index)]))
                }
                try await call.closeSend()
                #expect(try await call.receive() == nil)
                #expect(call.status == .ok)
            }
        }
    }

    @Test func manyConcurrentCallsShareOneConnection() async throws {
        try await withServerAndClient { client in
            try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<300 {
                    group.addTask {
                        var request = Grpc_Testing_SimpleRequest()
                        request.responseSize = Int32(index % 7)
                        return try await client.unary(Echo.unary, request).message.payload.body.count
                    }
                }
                var total = 0
                for try await count in group { total += count }
                #expect(total == (0..<300).reduce(0) { $0 + $1 % 7 })
            }
        }
    }

    @Test func aDeadlineCancelsTheHandlerAndReportsDeadlineExceeded() async throws {
        try await withServerAndClient { client in
            let before = sleepCancelled.value
            let clock = ContinuousClock()
            let started = clock.now
            await #expect {
                _ = try await client.unary(
                    Echo.sleep,
                    Grpc_Testing_Empty(),
                    options: CallOptions(timeout: .milliseconds(200))
                )
            } throws: { ($0 as? RPCError)?.code == .deadlineExceeded }
            #expect(clock.now - started < .seconds(5))
            // The server's deadline fires at the same time; give its handler a moment to unwind.
            for _ in 0..<50 where sleepCancelled.value == before { try await Task.sleep(for: .milliseconds(20)) }
            #expect(sleepCancelled.value > before)
        }
    }

    @Test func clientCancellationReachesTheHandler() async throws {
        try await withServerAndClient { client in
            let before = sleepCancelled.value
            await #expect {
                try await client.withCall(Echo.sleep) { call in
                    try await call.send(Grpc_Testing_Empty())
                    try await call.closeSend()
                    try await Task.sleep(for: .milliseconds(100))
                    call.cancel()
                    _ = try await call.receive()
                }
            } throws: { ($0 as? RPCError)?.code == .cancelled }
            for _ in 0..<100 where sleepCancelled.value == before { try await Task.sleep(for: .milliseconds(20)) }
            #expect(sleepCancelled.value > before)
        }
    }

    @Test func unexpectedHandlerErrorsDoNotLeakDetails() async throws {
        try await withServerAndClient { client in
            await #expect {
                _ = try await client.unary(Echo.fail, Grpc_Testing_Empty())
            } throws: { error in
                guard let error = error as? RPCError else { return false }
                return error.code == .unknown && !error.message.contains("InternalDetail")
            }
        }
    }

    @Test func unknownMethodsAndServicesAreUnimplemented() async throws {
        try await withServerAndClient { client in
            let missingMethod = RPCMethod<Grpc_Testing_Empty, Grpc_Testing_Empty>(
                service: Echo.service,
                method: "Nope",
                kind: .unary
            )
            let missingService = RPCMethod<Grpc_Testing_Empty, Grpc_Testing_Empty>(
                service: "cdp.test.Nothing",
                method: "Nope",
                kind: .unary
            )
            for method in [missingMethod, missingService] {
                await #expect {
                    _ = try await client.unary(method, Grpc_Testing_Empty())
                } throws: { ($0 as? RPCError)?.code == .unimplemented }
            }
        }
    }

    @Test func oversizedRequestsAreResourceExhausted() async throws {
        try await withServerAndClient(.init(maxReceiveMessageBytes: 1000)) { client in
            var request = Grpc_Testing_SimpleRequest()
            request.payload.body = Data(count: 5000)
            await #expect {
                _ = try await client.unary(Echo.unary, request)
            } throws: { ($0 as? RPCError)?.code == .resourceExhausted }
            // The connection stays usable.
            _ = try await client.unary(Echo.unary, Grpc_Testing_SimpleRequest())
        }
    }

    @Test func aHandlerThatDoesNotReadStopsTheClientAfterAboutOneWindow() async throws {
        let window = 64 * 1024
        try await withServerAndClient(.init(initialStreamWindowBytes: window)) { client in
            let sent = LockedBox(0)
            try await client.withCall(Echo.slowCollect) { call in
                var request = Grpc_Testing_StreamingInputCallRequest()
                request.payload.body = Data(count: 1024)
                let sender = Task {
                    for _ in 0..<4000 {
                        try await call.send(request)
                        sent.withLock { $0 += 1 }
                    }
                    try await call.closeSend()
                }
                try await Task.sleep(for: .milliseconds(500))
                // Held back by the server's window (64 KiB) and the client's own send buffer
                // (256 KiB): far fewer than the 4000 messages (4 MiB) the sender wants to send.
                let whileBlocked = sent.value
                #expect(whileBlocked < 500, "sent \(whileBlocked) messages while the handler was not reading")
                slowReaderGate.withLock { $0 = true }
                try await sender.value
                #expect(try await call.receive()?.aggregatedPayloadSize == 4000)
            }
        }
    }

    @Test func oversizedResponsesAreResourceExhaustedForTheClient() async throws {
        let server = RPCServer(configuration: .init(), services: [EchoService()], logger: Logger(label: "test"))
        let address = try await server.start()
        let transport = HTTP2ClientTransport(
            configuration: .init(host: "127.0.0.1", port: address.port!, maxReceiveMessageBytes: 1000)
        )
        let client = RPCClient(transport: transport)
        var request = Grpc_Testing_SimpleRequest()
        request.responseSize = 5000
        await #expect {
            _ = try await client.unary(Echo.unary, request)
        } throws: { ($0 as? RPCError)?.code == .resourceExhausted }
        // Small responses still arrive on the same connection.
        request.responseSize = 10
        #expect(try await client.unary(Echo.unary, request).message.payload.body.count == 10)
        await transport.close()
        await server.shutdown()
    }

    @Test func tokensAreRequiredWhenConfigured() async throws {
        try await withServerAndClient(.init(authorizationTokens: ["s3cret"])) { client in
            await #expect {
                _ = try await client.unary(Echo.unary, Grpc_Testing_SimpleRequest())
            } throws: { ($0 as? RPCError)?.code == .unauthenticated }
            await #expect {
                _ = try await client.unary(
                    Echo.unary,
                    Grpc_Testing_SimpleRequest(),
                    metadata: Metadata([("authorization", "Bearer wrong")])
                )
            } throws: { ($0 as? RPCError)?.code == .unauthenticated }
        }
        try await withServerAndClient(
            .init(authorizationTokens: ["s3cret"]),
            clientMetadata: Metadata([("authorization", "Bearer s3cret")])
        ) { client in
            _ = try await client.unary(Echo.unary, Grpc_Testing_SimpleRequest())
        }
    }

    @Test func anUnreachableServerIsUnavailable() async throws {
        // Bind and close a port so nothing listens on it.
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).get()
        let port = channel.localAddress!.port!
        try await channel.close()
        let transport = HTTP2ClientTransport(configuration: .init(host: "127.0.0.1", port: port))
        let client = RPCClient(transport: transport)
        for _ in 0..<2 {
            await #expect {
                _ = try await client.unary(Echo.unary, Grpc_Testing_SimpleRequest())
            } throws: { ($0 as? RPCError)?.code == .unavailable }
        }
        await transport.close()
    }

    @Test func backoffGrowsToItsMaximum() {
        let configuration = HTTP2ClientTransport.Configuration(
            host: "h",
            port: 1,
            initialBackoff: .seconds(1),
            maxBackoff: .seconds(5),
            backoffMultiplier: 2
        )
        var delays: [Duration] = []
        var delay = Duration.zero
        for _ in 0..<5 {
            delay = HTTP2ClientTransport.nextBackoff(after: delay, configuration: configuration)
            delays.append(delay)
        }
        #expect(delays == [.seconds(1), .seconds(2), .seconds(4), .seconds(5), .seconds(5)])
    }

    @Test func theClientReconnectsAfterTheServerRestarts() async throws {
        let first = RPCServer(configuration: .init(), services: [EchoService()], logger: Logger(label: "test"))
        let port = try await first.start().port!
        let transport = HTTP2ClientTransport(
            configuration: .init(host: "127.0.0.1", port: port, initialBackoff: .milliseconds(100))
        )
        let client = RPCClient(transport: transport)
        _ = try await client.unary(Echo.unary, Grpc_Testing_SimpleRequest())
        await first.shutdown()

        // While nothing listens, calls fail fast with UNAVAILABLE.
        await #expect {
            _ = try await client.unary(Echo.unary, Grpc_Testing_SimpleRequest())
        } throws: { ($0 as? RPCError)?.code == .unavailable }

        let second = RPCServer(
            configuration: .init(port: port),
            services: [EchoService()],
            logger: Logger(label: "test")
        )
        try await second.start()
        // After the backoff the transport connects again.
        var succeeded = false
        for _ in 0..<50 where !succeeded {
            succeeded = (try? await client.unary(Echo.unary, Grpc_Testing_SimpleRequest())) != nil
            if !succeeded { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(succeeded)
        await transport.close()
        await second.shutdown()
    }

    @Test func gracefulShutdownLetsCallsInFlightFinish() async throws {
        let server = RPCServer(configuration: .init(), services: [EchoService()], logger: Logger(label: "test"))
        let address = try await server.start()
        let transport = HTTP2ClientTransport(configuration: .init(host: "127.0.0.1", port: address.port!))
        let client = RPCClient(transport: transport)
        var request = Grpc_Testing_StreamingOutputCallRequest()
        request.payload.body = Data([1])
        try await client.withCall(Echo.chat) { call in
            try await call.send(request)
            _ = try await call.receive()
            // Shutdown starts while the call is open; the call can still complete.
            async let stopped: Void = server.shutdown()
            try await call.send(request)
            #expect(try await call.receive()?.payload.body == Data([1]))
            try await call.closeSend()
            #expect(try await call.receive() == nil)
            await stopped
        }
        await transport.close()
    }
}

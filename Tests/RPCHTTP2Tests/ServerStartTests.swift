import Logging
import NIOCore
import RPCCore
import RPCHTTP2
import Testing

/// A server that cannot bind fails its start with the cause, and stays safely stopped.
@Suite("Server start")
struct ServerStartTests {
    @Test func aPortInUseFailsTheStartAndLeavesTheServerStopped() async throws {
        let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let first = RPCServer(configuration: .init(), services: [], logger: logger)
        let port = try #require(try await first.start().port)
        let second = RPCServer(configuration: .init(port: port), services: [], logger: logger)
        await #expect(throws: (any Error).self) { try await second.start() }
        // Returns at once (before the fix, the unfulfilled promise crashed debug builds when released).
        await second.shutdown()
        await first.shutdown()
    }

    @Test func aServerNeverStartedCanBeReleased() async throws {
        let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        _ = RPCServer(configuration: .init(), services: [], logger: logger)
    }
}

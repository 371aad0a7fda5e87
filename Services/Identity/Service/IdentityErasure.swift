import CDPProto
import Logging
import RPCCore

/// `cdp.privacy.v1.Erasure` on identity. A privacy request removes the person's identities through
/// `RemoveIdentity` (which splits the clusters and tells profile); this forgets what identity still
/// keeps by the person's record keys (versions taken, conflicts) and, on the last pass, clears the
/// write-ahead log.
public final class IdentityErasure: Cdp_Privacy_V1_Erasure.ServiceProtocol {
    private let engine: IdentityEngine
    private let logger: Logger

    /// Creates the service over the engine.
    public init(engine: IdentityEngine, logger: Logger) {
        self.engine = engine
        self.logger = logger
    }

    public func erase(
        request: Cdp_Privacy_V1_EraseRequest,
        context: ServerContext
    ) async throws -> Cdp_Privacy_V1_EraseReport {
        guard !request.requestID.isEmpty else {
            throw RPCError(code: .invalidArgument, message: "request_id is empty")
        }
        var report = Cdp_Privacy_V1_EraseReport()
        report.removed["record versions and conflicts"] = UInt64(try await engine.forget(keys: request.recordKeys))
        if request.final, !(await engine.clearLog()) {
            report.pending = 1
            report.note = "the write-ahead log is in use; it is cleared on the next call"
        }
        logger.notice(
            "privacy request erased",
            metadata: ["request": "\(request.requestID)", "final": "\(request.final)"]
        )
        return report
    }
}

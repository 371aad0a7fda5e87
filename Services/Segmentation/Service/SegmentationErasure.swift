import CDPProto
import Logging
import RPCCore

/// `cdp.privacy.v1.Erasure` on segmentation: the person's memberships exit (the exits name only the
/// cluster), changes waiting for destination lose the person's record, and the person's record,
/// memberships and re-check are deleted; views of the person still on their way are dropped.
public final class SegmentationErasure: Cdp_Privacy_V1_Erasure.ServiceProtocol {
    private let engine: SegmentationEngine
    private let logger: Logger
    private let changed: @Sendable () -> Void

    /// Creates the service; `changed` wakes the relay to destination.
    public init(engine: SegmentationEngine, logger: Logger, changed: @escaping @Sendable () -> Void) {
        self.engine = engine
        self.logger = logger
        self.changed = changed
    }

    public func erase(
        request: Cdp_Privacy_V1_EraseRequest,
        context: ServerContext
    ) async throws -> Cdp_Privacy_V1_EraseReport {
        guard !request.requestID.isEmpty else {
            throw RPCError(code: .invalidArgument, message: "request_id is empty")
        }
        guard request.personClusters.allSatisfy({ $0 <= UInt64(Int64.max) }) else {
            throw RPCError(code: .invalidArgument, message: "a person cluster is above 2^63 - 1")
        }
        let erased = try await engine.erase(clusters: request.personClusters)
        if erased.exited + erased.redacted > 0 { changed() }
        var report = Cdp_Privacy_V1_EraseReport()
        report.removed["memberships exited"] = UInt64(erased.exited)
        report.removed["person records"] = UInt64(erased.records)
        report.removed["changes redacted"] = UInt64(erased.redacted)
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

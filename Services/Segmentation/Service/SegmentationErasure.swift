import CDPProto
import Logging
import RPCCore

/// `cdp.privacy.v1.Erasure` on segmentation: the person's memberships exit (the exits name only the
/// cluster), and the person's record, memberships, re-check and state (record, links, events) are
/// deleted; changes about the person still on their way are dropped. Then the call goes on to destination (which removes the person wherever
/// it was delivered), whose report is part of the answer. Changes made before, still waiting to be
/// sent, count as pending: the last pass clears the log only once they left.
public final class SegmentationErasure: Cdp_Privacy_V1_Erasure.ServiceProtocol {
    private let engine: SegmentationEngine
    private let destination: Cdp_Privacy_V1_Erasure.Client?
    private let logger: Logger
    private let changed: @Sendable () -> Void

    /// Creates the service; `destination` is where membership changes go (nil: none configured, so
    /// nothing was sent), `changed` wakes the relay to it.
    public init(
        engine: SegmentationEngine,
        destination: Cdp_Privacy_V1_Erasure.Client?,
        logger: Logger,
        changed: @escaping @Sendable () -> Void
    ) {
        self.engine = engine
        self.destination = destination
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
        if erased.exited > 0 { changed() }
        var report = Cdp_Privacy_V1_EraseReport()
        report.removed["memberships exited"] = UInt64(erased.exited)
        report.removed["person records"] = UInt64(erased.records)
        let unsent = try await engine.unsentChanges(of: request.personClusters)
        if unsent > 0 {
            report.pending = UInt64(unsent)
            report.note = "\(unsent) changes made before the erasure wait to be sent to destination"
        } else if request.final, !(await engine.clearLog()) {
            report.pending = 1
            report.note = "the write-ahead log is in use; it is cleared on the next call"
        }
        if let destination {
            do {
                let downstream = try await destination.erase(request, options: CallOptions(timeout: .seconds(30)))
                report.downstream["destination"] = downstream
                report.pending += downstream.pending
            } catch {
                throw RPCError(
                    code: .unavailable,
                    message: "segmentation erased its part; destination did not answer (\(error)); call again"
                )
            }
        }
        logger.notice(
            "privacy request erased",
            metadata: ["request": "\(request.requestID)", "final": "\(request.final)"]
        )
        return report
    }
}

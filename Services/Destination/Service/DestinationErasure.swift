import CDPProto
import Logging
import RPCCore

/// `cdp.privacy.v1.Erasure` on destination: the person's member records keep only the cluster, every
/// active activation that delivered the person removes it from its destination (under the identity it
/// sent), and once removed nothing about the person is kept. `pending` counts the removals not yet
/// delivered; the request is done when it is 0.
public final class DestinationErasure: Cdp_Privacy_V1_Erasure.ServiceProtocol {
    private let engine: DestinationEngine
    private let workers: DeliveryWorkers
    private let logger: Logger

    /// Creates the service; the workers are woken when removals are queued.
    public init(engine: DestinationEngine, workers: DeliveryWorkers, logger: Logger) {
        self.engine = engine
        self.workers = workers
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
        let erased = try await engine.erase(clusters: request.personClusters)
        if erased.removals > 0 { workers.wake() }
        report.removed["member records redacted"] = UInt64(erased.records)
        report.removed["removals queued"] = UInt64(erased.removals)
        report.pending = UInt64(try await engine.erasurePending(clusters: request.personClusters))
        var notes: [String] = []
        if erased.abandoned > 0 {
            notes.append(
                "\(erased.abandoned) deliveries of deactivated activations were forgotten: those destinations "
                    + "still hold the person; remove them there"
            )
        }
        if report.pending > 0 {
            notes.append("\(report.pending) removals from destinations still to be delivered")
        } else if request.final, !(await engine.clearLog()) {
            report.pending = 1
            notes.append("the write-ahead log is in use; it is cleared on the next call")
        }
        report.note = notes.joined(separator: "; ")
        logger.notice(
            "privacy request erased",
            metadata: ["request": "\(request.requestID)", "pending": "\(report.pending)", "final": "\(request.final)"]
        )
        return report
    }
}

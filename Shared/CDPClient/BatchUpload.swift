import CDPProto
import Foundation
import RPCCore

/// A file that cannot be uploaded, named with the reason.
public struct UnreadableFile: Error, CustomStringConvertible {
    public var description: String
}

extension ServiceClients {
    /// The size of the `data` messages a file is sent in.
    public static let uploadChunkBytes = 64 * 1024

    /// Uploads the file at `path` as one batch: `header`, then the file's bytes in 64 KiB messages read
    /// from disk as they are sent (a file of any size streams through; ingestion parses as it receives).
    /// Returns the batch once ingestion has committed or failed it. `progress` is called with the bytes
    /// sent so far after each message.
    public func uploadBatch(
        path: String,
        header: Cdp_Ingestion_V1_BatchHeader,
        progress: (Int64) -> Void = { _ in }
    ) async throws -> Cdp_Ingestion_V1_Batch {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            let reason = FileManager.default.fileExists(atPath: path) ? "permission denied" : "no such file"
            throw UnreadableFile(description: "cannot read \(path): \(reason)")
        }
        defer { try? handle.close() }
        return try await calling(.ingestion) {
            // No deadline: a large file takes as long as it takes; the connection's liveness is the limit.
            try await ingestion.rpc.withCall(Cdp_Ingestion_V1_Ingestion.Method.ingestBatch, options: CallOptions()) {
                call in
                try await call.send(.with { $0.header = header })
                var sent: Int64 = 0
                while true {
                    let chunk: Data
                    do {
                        chunk = try handle.read(upToCount: Self.uploadChunkBytes) ?? Data()
                    } catch {
                        call.cancel()
                        throw UnreadableFile(description: "cannot read \(path) after \(sent) bytes: \(error)")
                    }
                    if chunk.isEmpty { break }
                    try await call.send(.with { $0.data = chunk })
                    sent += Int64(chunk.count)
                    progress(sent)
                }
                try await call.closeSend()
                guard let batch = try await call.receive() else {
                    throw RPCError(code: .internalError, message: "IngestBatch ended without an answer")
                }
                return batch
            }
        }
    }
}

import CDPProto
import CompressNIO
import Foundation
import NIOCore
import RPCCore
import Synchronization

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
        gzipped: Bool = false,
        progress: (Int64) -> Void = { _ in }
    ) async throws -> Cdp_Ingestion_V1_Batch {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            let reason = FileManager.default.fileExists(atPath: path) ? "permission denied" : "no such file"
            throw UnreadableFile(description: "cannot read \(path): \(reason)")
        }
        defer { try? handle.close() }
        // A file that cannot be read ends the call; the error says so, not the call's status.
        let localFailure = Mutex<UnreadableFile?>(nil)
        func fail(_ failure: UnreadableFile) -> UnreadableFile {
            localFailure.withLock { $0 = failure }
            return failure
        }
        do {
            return try await upload(handle, path, header, gzipped, progress, fail)
        } catch {
            if let failure = localFailure.withLock({ $0 }) { throw failure }
            throw error
        }
    }

    private func upload(
        _ handle: FileHandle,
        _ path: String,
        _ header: Cdp_Ingestion_V1_BatchHeader,
        _ gzipped: Bool,
        _ progress: (Int64) -> Void,
        _ fail: (UnreadableFile) -> UnreadableFile
    ) async throws -> Cdp_Ingestion_V1_Batch {
        try await calling(.ingestion) {
            // No deadline: a large file takes as long as it takes; the connection's liveness is the limit.
            try await ingestion.rpc.withCall(Cdp_Ingestion_V1_Ingestion.Method.ingestBatch, options: CallOptions()) {
                call in
                try await call.send(.with { $0.header = header })
                // A gzip file is decompressed as it is read: ingestion receives the plain bytes.
                let gunzip = gzipped ? try Gunzip() : nil
                var sent: Int64 = 0
                while true {
                    let chunk: Data
                    do {
                        chunk = try handle.read(upToCount: Self.uploadChunkBytes) ?? Data()
                    } catch {
                        call.cancel()
                        throw fail(UnreadableFile(description: "cannot read \(path) after \(sent) bytes: \(error)"))
                    }
                    if chunk.isEmpty { break }
                    if let gunzip {
                        let plain: [Data]
                        do {
                            plain = try gunzip.inflate(chunk)
                        } catch {
                            call.cancel()
                            throw fail(
                                UnreadableFile(
                                    description:
                                        "cannot read \(path) after \(sent) bytes: it is not valid gzip (\(error))"
                                )
                            )
                        }
                        for piece in plain { try await call.send(.with { $0.data = piece }) }
                    } else {
                        try await call.send(.with { $0.data = chunk })
                    }
                    sent += Int64(chunk.count)
                    progress(sent)
                }
                try gunzip?.finish()
                try await call.closeSend()
                guard let batch = try await call.receive() else {
                    throw RPCError(code: .internalError, message: "IngestBatch ended without an answer")
                }
                return batch
            }
        }
    }
}

/// Streaming gzip decompression of an upload, piece by piece.
final class Gunzip {
    private let decompressor: any NIODecompressor

    init() throws {
        decompressor = CompressionAlgorithm.gzip().decompressor
        decompressor.window = ByteBufferAllocator().buffer(capacity: ServiceClients.uploadChunkBytes)
        try decompressor.startStream()
    }

    /// The plain bytes of one compressed piece (none, or several).
    func inflate(_ chunk: Data) throws -> [Data] {
        var input = ByteBuffer(bytes: chunk)
        var output: [Data] = []
        try input.decompressStream(with: decompressor) { window in output.append(Data(window.readableBytesView)) }
        return output
    }

    func finish() throws { try decompressor.finishStream() }

    /// Whether a file starts with gzip's magic bytes.
    fileprivate static func isGzip(path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        return (try? handle.read(upToCount: 2)) == Data([0x1F, 0x8B])
    }
}

extension ServiceClients {
    /// Whether the file at `path` is gzip-compressed (by its first bytes, whatever its name).
    public static func isGzip(path: String) -> Bool { Gunzip.isGzip(path: path) }
}

import CDPProto
import Foundation
import IdentityGraph
import IdentityRules
import IngestionFormats
import IngestionStore
import Logging
import RPCCore
import SwiftProtobuf
import Synchronization

/// The persons erased by privacy requests, as hashes of their identities (``ErasureHash``): a record
/// naming one of them is refused until the request is lifted (`AllowIdentities`).
public final class Suppression: Sendable {
    private let hashes: Mutex<[Data: String]>

    /// Suppressions as the store keeps them: hash → the request that erased the person.
    public init(_ hashes: [Data: String] = [:]) {
        self.hashes = Mutex(hashes)
    }

    /// The privacy request that erased a person the record names (itself, or the person a relation,
    /// membership or event names), if any.
    public func request(refusing record: Cdp_Model_V1_Record) -> String? {
        // Nearly always empty: no hashing at all then.
        let current = hashes.withLock { $0 }
        guard !current.isEmpty else { return nil }
        for identity in ErasureHash.personIdentities(of: record) {
            if let request = current[ErasureHash.of(identity)] { return request }
        }
        return nil
    }

    /// Whether a stored record (its payload) names an erased person.
    func refuses(payload: Data) -> Bool {
        guard let record = try? Cdp_Model_V1_Record(serializedBytes: payload) else { return false }
        return request(refusing: record) != nil
    }

    func add(_ new: [Data], request: String) {
        hashes.withLock { held in for hash in new { held[hash] = request } }
    }

    func lift(_ requests: [String]) {
        let lifted = Set(requests)
        hashes.withLock { held in held = held.filter { !lifted.contains($0.value) } }
    }

    /// The error a refused record gets.
    static func error(_ request: String) -> FieldError {
        FieldError(
            field: "",
            reason: "refused: the person this record names was erased by privacy request \(request); "
                + "`cdp privacy allow --identity NAMESPACE:VALUE` lets their records in again"
        )
    }
}

/// `cdp.privacy.v1.Erasure` on ingestion: a privacy request suppresses the person's identities (as
/// hashes) and deletes the person's raw records, every version, and any record not forwarded yet that
/// names the person. `AllowIdentities` (on the Ingestion service) lifts a suppression.
public final class IngestionErasure: Cdp_Privacy_V1_Erasure.ServiceProtocol {
    private let store: any IngestionStore
    private let suppression: Suppression
    private let logger: Logger

    /// Creates the service over the store and the suppressions the intake checks.
    public init(store: any IngestionStore, suppression: Suppression, logger: Logger) {
        self.store = store
        self.suppression = suppression
        self.logger = logger
    }

    public func erase(
        request: Cdp_Privacy_V1_EraseRequest,
        context: ServerContext
    ) async throws -> Cdp_Privacy_V1_EraseReport {
        guard !request.requestID.isEmpty else {
            throw RPCError(code: .invalidArgument, message: "request_id is empty")
        }
        guard request.identityHashes.allSatisfy({ $0.count == 32 }) else {
            throw RPCError(code: .invalidArgument, message: "identity_hashes must be SHA-256 hashes (32 bytes each)")
        }
        // The intake refuses the person's records from now on; then what is stored goes.
        suppression.add(request.identityHashes, request: request.requestID)
        let suppression = self.suppression
        let erased = try await store.erase(
            request: request.requestID,
            hashes: request.identityHashes,
            keys: request.recordKeys
        ) { suppression.refuses(payload: $0) }
        var report = Cdp_Privacy_V1_EraseReport()
        report.removed["raw records"] = UInt64(erased.records)
        report.removed["identities suppressed"] = UInt64(erased.suppressed)
        if request.final, !(await store.clearLog()) {
            report.pending = 1
            report.note = "the write-ahead log is in use; it is cleared on the next call"
        }
        logger.notice(
            "privacy request erased",
            metadata: ["request": "\(request.requestID)", "records": "\(erased.records)", "final": "\(request.final)"]
        )
        return report
    }
}

extension IngestionService {
    /// Lifts the suppression of erased persons (see ``Suppression``).
    static func allow(
        _ request: Cdp_Ingestion_V1_AllowIdentitiesRequest,
        store: any IngestionStore,
        suppression: Suppression
    ) async throws -> Cdp_Ingestion_V1_AllowIdentitiesResponse {
        guard !request.identities.isEmpty else {
            throw RPCError(code: .invalidArgument, message: "identities is empty; name one, e.g. email p3@townsend.com")
        }
        for (index, identity) in request.identities.enumerated()
        where identity.namespace.isEmpty || identity.value.isEmpty {
            throw RPCError(
                code: .invalidArgument,
                message: "identities[\(index)] needs a namespace and a value, e.g. email and p3@townsend.com"
            )
        }
        let hashes = request.identities.map { ErasureHash.of(Identity($0.namespace, $0.value)) }
        let lifted = try await store.allow(hashes: hashes)
        suppression.lift(lifted)
        var response = Cdp_Ingestion_V1_AllowIdentitiesResponse()
        response.requestIds = lifted
        return response
    }
}

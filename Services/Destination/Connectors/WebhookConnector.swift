import CDPProto
import Crypto
import DestinationStore
import Foundation

/// JSON POSTs of an activation's adds and removes to a URL, signed as Standard Webhooks 1.0 signs.
///
/// Headers: `webhook-id` (`<activation>-<run>`, the same on every attempt of one delivery, also after a
/// restart: receivers dedupe by it), `webhook-timestamp` (Unix seconds) and `webhook-signature`
/// (`v1,<base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`; the key is the base64 after `whsec_`
/// when the secret has that prefix, else the secret's bytes). Body:
///
/// ```json
/// {"activation":"a1","destination":"d3","id":"a1-1764000000000","members":[{"attributes":{},
///  "cluster":7,"entity":"person","identity":"p2@townsend.com","op":"add","version":1}],
///  "segment":"s1","type":"audience.changes"}
/// ```
///
/// 2xx is success; 408, 429, 5xx, timeouts and refused connections are retried (after `Retry-After` if
/// sent); other statuses fail the delivery's members with the receiver's answer.
///
/// Settings: `url`, `secret`, `batch_size` (100), `calls_per_minute` (600, shared by the destinations of
/// one URL), `timeout_seconds` (30), `include_opted_out` (false).
public struct WebhookConnector: Connector {
    public let url: String
    public let batchLimit: Int
    public let timeout: Duration
    public let suppressesOptedOut: Bool
    /// The signing key's bytes (SymmetricKey is not Sendable).
    private let key: Data
    private let transport: any HTTPTransport
    private let limiter: CallLimiter
    private let now: @Sendable () -> Date

    public var defaultIdentity: Cdp_Destination_V1_IdentityMapping { .email }

    /// A connector from a destination's settings (credentials included); the error names the setting.
    public init(
        settings: [String: String],
        transport: any HTTPTransport,
        now: @escaping @Sendable () -> Date = Date.init
    ) throws(ConnectorSettingsError) {
        url = try Settings.url("url", settings, keepPath: true)
        let secret = try Settings.required("secret", settings)
        if secret.hasPrefix("whsec_") {
            guard let bytes = Data(base64Encoded: String(secret.dropFirst(6))), !bytes.isEmpty else {
                throw ConnectorSettingsError("secret starts with whsec_ but the rest is not base64")
            }
            key = bytes
        } else {
            key = Data(secret.utf8)
        }
        batchLimit = try Settings.integer("batch_size", settings, default: 100, in: 1...10_000)
        timeout = .seconds(try Settings.integer("timeout_seconds", settings, default: 30, in: 1...600))
        suppressesOptedOut = !(try Settings.flag("include_opted_out", settings, default: false))
        let perMinute = try Settings.integer("calls_per_minute", settings, default: 600, in: 1...60_000)
        limiter = CallLimiter.shared(key: "webhook \(url)", calls: perMinute, window: .seconds(60), concurrency: 4)
        self.transport = transport
        self.now = now
    }

    public func deliver(_ members: [OutboundMember], _ context: DeliveryContext) async throws -> [UInt64: String] {
        let id = context.deliveryID
        let payload: [String: Any] = [
            "type": "audience.changes",
            "id": id,
            "activation": context.activation.id,
            "segment": context.activation.segmentID,
            "destination": context.activation.destinationID,
            "members": members.map { member in
                [
                    "op": member.operation,
                    "entity": member.entityType == .account ? "account" : "person",
                    "cluster": member.cluster,
                    "version": member.version,
                    "identity": member.identity,
                    "attributes": member.attributes,
                ] as [String: Any]
            },
        ]
        let body: Data
        do {
            body = try JSONSerialization.data(withJSONObject: payload, options: [.sortedKeys, .withoutEscapingSlashes])
        } catch {
            throw DeliveryFailure.permanent("cannot encode the webhook body: \(error)")
        }
        let timestamp = String(Int(now().timeIntervalSince1970))
        let request = HTTPRequestData(
            method: "POST",
            url: url,
            headers: [
                ("Content-Type", "application/json"), ("webhook-id", id), ("webhook-timestamp", timestamp),
                (
                    "webhook-signature",
                    "v1," + Self.signature(id: id, timestamp: timestamp, body: body, key: SymmetricKey(data: key))
                ),
            ],
            body: body,
            timeout: timeout
        )
        _ = try await transport.exchange(request, "webhook", within: limiter)
        return [:]
    }

    /// base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>")).
    public static func signature(id: String, timestamp: String, body: Data, key: SymmetricKey) -> String {
        var signed = Data("\(id).\(timestamp).".utf8)
        signed.append(body)
        return Data(HMAC<SHA256>.authenticationCode(for: signed, using: key)).base64EncodedString()
    }
}

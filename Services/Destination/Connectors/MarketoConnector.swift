import CDPProto
import DestinationStore
import Foundation
import Synchronization

/// A Marketo Engage static list over the REST API.
///
/// Adds sync the leads by email (`POST /rest/v1/leads.json`, createOrUpdate, the mapped attributes as
/// lead fields) and add their ids to the list (`POST /rest/v1/lists/{listId}/leads.json?id=…`);
/// removes look the leads up by email (`GET /rest/v1/leads.json?filterType=email`) and take them off
/// the list (`DELETE …/leads.json?id=…`). Every call carries at most 300 records, Marketo's limit.
///
/// Authentication is OAuth client credentials against the identity endpoint; the token is reused
/// until a minute before it expires and renewed when Marketo answers 601 or 602. Marketo reports most
/// errors in HTTP 200 bodies: throttling and transient codes (606, 615, 604, 608, 611, 614, 713, 502)
/// are retried with backoff, 607 (daily quota) after 06:00 UTC, when the quota resets; configuration
/// problems (603 access denied, 610 not found, 1013 no such list) keep the members waiting with the
/// error shown; per-record `skipped` reasons become the member's error. Calls to one instance stay within
/// Marketo's limits (100 per 20 s, 10 at a time) for every destination of this process together.
///
/// Settings: `endpoint`, `identity` (default `<endpoint>/identity`), `client_id`, `client_secret`,
/// `list_id`, `calls_per_20s` (100), `concurrency` (10), `timeout_seconds` (30).
public struct MarketoConnector: Connector {
    public let endpoint: String
    public let identityEndpoint: String
    public let clientID: String
    public let listID: String
    public let timeout: Duration
    private let clientSecret: String
    private let transport: any HTTPTransport
    private let limiter: CallLimiter
    private let token = TokenCache()
    private let progress = DeliveryProgress<MarketoProgress>()
    private let now: @Sendable () -> Date

    /// Marketo's limit of records per call.
    public static let recordsPerCall = 300
    public var batchLimit: Int { Self.recordsPerCall }
    public var suppressesOptedOut: Bool { true }
    public var defaultIdentity: Cdp_Destination_V1_IdentityMapping { .email }
    public var supportedIdentities: Set<Cdp_Destination_V1_IdentityMapping> { [.email] }

    /// A connector from a destination's settings (credentials included); the error names the setting.
    public init(
        settings: [String: String],
        transport: any HTTPTransport,
        now: @escaping @Sendable () -> Date = Date.init
    ) throws(ConnectorSettingsError) {
        var endpoint = try Settings.url("endpoint", settings)
        // Marketo's Admin > Web Services shows the REST endpoint with /rest; the calls add it.
        if endpoint.hasSuffix("/rest") { endpoint.removeLast(5) }
        self.endpoint = endpoint
        identityEndpoint =
            (settings["identity"] ?? "").isEmpty ? endpoint + "/identity" : try Settings.url("identity", settings)
        clientID = try Settings.required("client_id", settings)
        clientSecret = try Settings.required("client_secret", settings)
        let listID = try Settings.required("list_id", settings)
        guard listID.allSatisfy(\.isASCII), listID.allSatisfy(\.isNumber) else {
            throw ConnectorSettingsError("list_id must be the static list's number, not \(listID)")
        }
        self.listID = listID
        timeout = .seconds(try Settings.integer("timeout_seconds", settings, default: 30, in: 1...600))
        let calls = try Settings.integer("calls_per_20s", settings, default: 100, in: 1...100)
        let concurrency = try Settings.integer("concurrency", settings, default: 10, in: 1...10)
        limiter = CallLimiter.shared(key: endpoint, calls: calls, window: .seconds(20), concurrency: concurrency)
        self.transport = transport
        self.now = now
    }

    public func deliver(_ members: [OutboundMember], _ context: DeliveryContext) async throws -> [UInt64: String] {
        try await progress.run(context.deliveryID, MarketoProgress()) { progress in
            try await deliver(members, &progress)
        }.refused
    }

    /// The calls of a delivery, skipping those an earlier attempt completed.
    func deliver(_ members: [OutboundMember], _ progress: inout MarketoProgress) async throws {
        for member in members where member.entityType != .person {
            progress.refused[member.cluster] =
                "a Marketo static list holds persons; send account audiences to LinkedIn, a webhook or a file"
        }
        let persons = members.filter { $0.entityType == .person }
        // Removes first: a member whose email changed is removed under the old one and added under the new.
        for (index, chunk) in Self.lookupChunks(persons.filter { !$0.add }).enumerated()
        where !progress.done.contains("remove \(index)") {
            let ids = try await leadIDs(emails: chunk.map(\.identity))
            // Every lead of the email: Marketo may hold duplicates, and any of them may be on the list.
            let known = chunk.flatMap { member in (ids[member.identity.lowercased()] ?? []).map { (member, $0) } }
            for start in stride(from: 0, to: known.count, by: Self.recordsPerCall) {
                let part = known[start..<min(start + Self.recordsPerCall, known.count)]
                let results = try await listCall("DELETE", ids: part.map(\.1))
                for (member, id) in part {
                    guard let result = results[id], result.status == "skipped" else { continue }
                    // 1004 lead not found, 1015 lead not in list: already off the list.
                    let reasons = result.reasons ?? []
                    if !reasons.contains(where: { $0.code.value == "1004" || $0.code.value == "1015" }) {
                        progress.refused[member.cluster] = Self.describe(reasons)
                    }
                }
            }
            progress.done.insert("remove \(index)")
        }
        let adds = persons.filter(\.add)
        for (index, start) in stride(from: 0, to: adds.count, by: Self.recordsPerCall).enumerated()
        where !progress.done.contains("list \(index)") {
            let chunk = Array(adds[start..<min(start + Self.recordsPerCall, adds.count)])
            if progress.synced[index] == nil {
                var listed: [MarketoProgress.Lead] = []
                for (member, result) in zip(chunk, try await syncLeads(chunk)) {
                    if let id = result.id, result.status != "skipped" {
                        // An update is the lead's new fields: it is on the list already.
                        if !member.update { listed.append(.init(cluster: member.cluster, id: id)) }
                    } else {
                        progress.refused[member.cluster] = Self.describe(result.reasons ?? [])
                    }
                }
                progress.synced[index] = listed
            }
            let listed = progress.synced[index] ?? []
            if !listed.isEmpty {
                let results = try await listCall("POST", ids: listed.map(\.id))
                for lead in listed {
                    guard let result = results[lead.id] else {
                        progress.refused[lead.cluster] = "Marketo did not report lead \(lead.id) in the list add"
                        continue
                    }
                    if result.status == "skipped" {
                        progress.refused[lead.cluster] = Self.describe(result.reasons ?? [])
                    }
                }
            }
            progress.done.insert("list \(index)")
        }
    }

    // MARK: - Calls

    /// `POST /rest/v1/leads.json` (createOrUpdate by email); one result per lead, in order.
    func syncLeads(_ members: [OutboundMember]) async throws(DeliveryFailure) -> [MarketoResult] {
        let input = members.map { member in
            member.attributes.merging(["email": member.identity]) { _, email in email }
        }
        let body: Data
        do {
            body = try JSONSerialization.data(
                withJSONObject: ["action": "createOrUpdate", "lookupField": "email", "input": input] as [String: Any],
                options: [.sortedKeys]
            )
        } catch {
            throw .permanent("cannot encode the leads: \(error)")
        }
        let results = try await call("POST", "/rest/v1/leads.json", body: body)
        guard results.count == members.count else {
            throw .retryable(
                "Marketo answered \(results.count) results for \(members.count) leads in POST /rest/v1/leads.json",
                after: nil
            )
        }
        return results
    }

    /// The lead ids of emails (lower-cased keys; all of an email's leads, following `nextPageToken`);
    /// emails without a lead are absent.
    func leadIDs(emails: [String]) async throws(DeliveryFailure) -> [String: [Int64]] {
        let values = emails.map { Self.queryEscaped($0) }.joined(separator: ",")
        var ids: [String: [Int64]] = [:]
        var page: String?
        repeat {
            let response = try await envelope(
                "GET",
                "/rest/v1/leads.json?filterType=email&filterValues=\(values)&fields=id,email"
                    + (page.map { "&nextPageToken=" + Self.queryEscaped($0) } ?? ""),
                body: nil
            )
            for result in response.result ?? [] {
                if let id = result.id, let email = result.email { ids[email.lowercased(), default: []].append(id) }
            }
            page = response.nextPageToken.flatMap { $0.isEmpty || $0 == page ? nil : $0 }
        } while page != nil
        return ids
    }

    /// Adds (`POST`) or removes (`DELETE`) leads of the list; the results by lead id.
    func listCall(_ method: String, ids: [Int64]) async throws(DeliveryFailure) -> [Int64: MarketoResult] {
        let query = ids.map { "id=\($0)" }.joined(separator: "&")
        let results = try await call(method, "/rest/v1/lists/\(listID)/leads.json?\(query)", body: nil)
        var byID: [Int64: MarketoResult] = [:]
        for result in results { if let id = result.id { byID[id] = result } }
        return byID
    }

    /// One REST call with the token, within the limits; renews the token once on 601/602 and sorts
    /// Marketo's in-body errors.
    func call(_ method: String, _ path: String, body: Data?) async throws(DeliveryFailure) -> [MarketoResult] {
        try await envelope(method, path, body: body).result ?? []
    }

    /// One REST call, as ``call(_:_:body:)``, answering Marketo's whole envelope (for paging).
    func envelope(_ method: String, _ path: String, body: Data?) async throws(DeliveryFailure) -> MarketoResponse {
        var renewed = false
        while true {
            let token = try await accessToken()
            var headers = [("Authorization", "Bearer \(token)"), ("Accept", "application/json")]
            if body != nil { headers.append(("Content-Type", "application/json")) }
            let request = HTTPRequestData(
                method: method,
                url: endpoint + path,
                headers: headers,
                body: body,
                timeout: timeout
            )
            let response = try await transport.exchange(request, "Marketo", within: limiter)
            let decoded: MarketoResponse
            do {
                decoded = try JSONDecoder().decode(MarketoResponse.self, from: response.body)
            } catch {
                throw .retryable(
                    "Marketo: \(request.redacted) answered a body that is not its JSON\(response.excerpt)",
                    after: nil
                )
            }
            if decoded.success { return decoded }
            let error = decoded.errors?.first
            let code = error?.code.value ?? ""
            let message = "Marketo: \(request.redacted) failed with \(code) \(error?.message ?? "(no message)")"
            switch code {
            case "601", "602":
                // The token expired or was revoked early: forget it, renew it once and repeat the call.
                self.token.held.withLock { $0 = nil }
                if renewed { throw .retryable(message + " after renewing the access token", after: nil) }
                renewed = true
                continue
            case "606", "615", "604", "608", "611", "614", "713", "502":
                throw .retryable(message, after: nil)
            case "607":
                throw .retryable(message + "; retrying after the quota resets", after: Self.untilQuotaReset(now()))
            case "603", "610", "1013":
                // Access denied, no such resource, no such list: a setting or permission to fix; the
                // members wait for it.
                throw .retryable(
                    message + " (check the destination's settings and the API user's permissions)",
                    after: nil
                )
            default:
                throw .permanent(message)
            }
        }
    }

    /// The access token, renewed a minute before it expires or once forgotten (Marketo refused it).
    func accessToken() async throws(DeliveryFailure) -> String {
        let clock = ContinuousClock()
        if let held = token.held.withLock({ $0 }), clock.now < held.renewAt { return held.value }
        let query = [
            "grant_type=client_credentials", "client_id=\(Self.queryEscaped(clientID))",
            "client_secret=\(Self.queryEscaped(clientSecret))",
        ].joined(separator: "&")
        let request = HTTPRequestData(
            method: "GET",
            url: identityEndpoint + "/oauth/token?" + query,
            headers: [("Accept", "application/json")],
            timeout: timeout
        )
        let response = try await transport.exchange(request, "Marketo identity")
        // The body holds the token: never quoted in an error.
        guard let decoded = try? JSONDecoder().decode(MarketoToken.self, from: response.body) else {
            throw .retryable(
                "Marketo identity: \(request.redacted) answered without a readable access_token",
                after: nil
            )
        }
        let expiresIn = Int(decoded.expires_in?.value ?? "") ?? 3600
        let lifetime = expiresIn > 120 ? expiresIn - 60 : max(0, expiresIn / 2)
        token.held.withLock { $0 = (decoded.access_token, clock.now + .seconds(lifetime)) }
        return decoded.access_token
    }

    // MARK: - Helpers

    /// Removal lookups: at most 300 emails, and the query under Marketo's 8 KB URI limit.
    public static func lookupChunks(_ members: [OutboundMember]) -> [[OutboundMember]] {
        var chunks: [[OutboundMember]] = []
        var chunk: [OutboundMember] = []
        var length = 0
        for member in members {
            let added = queryEscaped(member.identity).utf8.count + 1
            if !chunk.isEmpty && (chunk.count == recordsPerCall || length + added > 6_000) {
                chunks.append(chunk)
                chunk = []
                length = 0
            }
            chunk.append(member)
            length += added
        }
        if !chunk.isEmpty { chunks.append(chunk) }
        return chunks
    }

    /// A query parameter value: everything but unreserved characters percent-encoded.
    public static func queryEscaped(_ value: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return value.addingPercentEncoding(withAllowedCharacters: allowed) ?? value
    }

    static func describe(_ reasons: [MarketoReason]) -> String {
        reasons.isEmpty
            ? "Marketo skipped the lead without a reason"
            : reasons.map { "\($0.code.value) \($0.message ?? "")".trimmingCharacters(in: .whitespaces) }
                .joined(separator: "; ")
    }

    /// Until Marketo's daily quota resets: "12:00AM CST", taken as fixed Central Standard Time (06:00
    /// UTC) all year; in summer that is an hour after midnight in Chicago, so the retry never comes
    /// early and sleeps another day.
    public static func untilQuotaReset(_ now: Date) -> Duration {
        let day = 86_400
        let seconds = Int(now.timeIntervalSince1970.rounded(.down))
        let reset = (seconds - 6 * 3_600) / day * day + day + 6 * 3_600
        return .seconds(max(1, reset - seconds))
    }
}

/// What one delivery's calls achieved so far: the steps done (`remove <chunk>`, `list <chunk>`), the
/// leads each chunk of adds synced, and the members Marketo refused.
struct MarketoProgress: Sendable {
    struct Lead: Sendable {
        var cluster: UInt64
        var id: Int64
    }
    var done: Set<String> = []
    var synced: [Int: [Lead]] = [:]
    var refused: [UInt64: String] = [:]
}

/// The access token a connector holds, and when to renew it.
final class TokenCache: Sendable {
    let held = Mutex<(value: String, renewAt: ContinuousClock.Instant)?>(nil)
}

/// Marketo's response envelope.
struct MarketoResponse: Decodable {
    var success: Bool
    var errors: [MarketoReason]?
    var result: [MarketoResult]?
    var nextPageToken: String?
}

/// One record of a result: a lead's id and status, with reasons when skipped.
struct MarketoResult: Decodable {
    var id: Int64?
    var email: String?
    var status: String?
    var reasons: [MarketoReason]?
}

/// An error or a reason: Marketo sends codes as strings ("606") and sometimes as numbers.
struct MarketoReason: Decodable {
    var code: LooseString
    var message: String?
}

struct MarketoToken: Decodable {
    var access_token: String
    var expires_in: LooseString?
}

/// A JSON string or number, as text.
struct LooseString: Decodable {
    var value: String

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self) {
            value = text
        } else {
            value = String(try container.decode(Int64.self))
        }
    }
}

import CDPProto
import DestinationStore
import Foundation

/// A LinkedIn Matched Audience over the Marketing API's DMP segments.
///
/// Each activation gets its own DMP segment, created on its first delivery (`POST /rest/dmpSegments`,
/// type USER for person audiences, COMPANY for account audiences) unless the setting `segment_id`
/// names one; the created id is kept, so a restart never creates a second. Persons are added and
/// removed as the SHA-256 of their trimmed, lower-cased email (`POST /rest/dmpSegments/{id}/users`),
/// accounts by company name and website domain (`…/companies`), in BATCH_CREATE calls of at most
/// `batch_size` elements. Adding an id twice or removing an absent one is harmless at LinkedIn, so a
/// repeated delivery is too.
///
/// Every call sends `Authorization: Bearer`, `LinkedIn-Version` and `X-Restli-Protocol-Version: 2.0.0`.
/// 429 and 5xx are retried (after `Retry-After` if sent), and so is 404 (a segment just created is
/// not ready for a few seconds). An element answered with a status of 400 or more is that member's
/// error.
///
/// Settings: `endpoint` (https://api.linkedin.com), `access_token`, `ad_account`, `version` (YYYYMM,
/// 202610), `source_platform`, `segment_name`, `segment_id`, `batch_size` (500),
/// `segment_ready_seconds` (5), `calls_per_minute` (300, shared by the destinations of one ad account),
/// `timeout_seconds` (30).
public struct LinkedInConnector: Connector {
    public let endpoint: String
    public let adAccount: String
    public let version: String
    public let sourcePlatform: String?
    public let segmentName: String?
    public let fixedSegmentID: String?
    public let elementsPerCall: Int
    public let segmentReady: Duration
    public let timeout: Duration
    private let accessToken: String
    private let transport: any HTTPTransport
    private let limiter: CallLimiter
    private let progress = DeliveryProgress<LinkedInProgress>()

    public var batchLimit: Int { elementsPerCall }
    public var suppressesOptedOut: Bool { true }
    public var defaultIdentity: Cdp_Destination_V1_IdentityMapping { .hashedEmail }
    public var supportedIdentities: Set<Cdp_Destination_V1_IdentityMapping> { [.hashedEmail] }

    /// The connector state key of an activation's DMP segment id.
    static let segmentKey = "linkedin.dmp_segment"
    /// Set before a segment is created: if the answer is lost (a timeout, a crash), the next attempt
    /// looks the segment up instead of creating a second one.
    static let creatingKey = "linkedin.creating"

    /// A connector from a destination's settings (credentials included); the error names the setting.
    public init(settings: [String: String], transport: any HTTPTransport) throws(ConnectorSettingsError) {
        endpoint = try Settings.url("endpoint", settings, default: "https://api.linkedin.com")
        accessToken = try Settings.required("access_token", settings)
        let account = try Settings.required("ad_account", settings)
        guard account.hasPrefix("urn:li:sponsoredAccount:"), account.count > 24,
            account.dropFirst(24).allSatisfy({ $0.isASCII && $0.isNumber })
        else {
            throw ConnectorSettingsError("ad_account must be urn:li:sponsoredAccount:<number>, not \(account)")
        }
        adAccount = account
        version = settings["version"] ?? "202610"
        guard version.count == 6, version.allSatisfy({ $0.isASCII && $0.isNumber }) else {
            throw ConnectorSettingsError("version must be a LinkedIn-Version YYYYMM such as 202610, not \(version)")
        }
        if let given = settings["segment_id"], !given.isEmpty {
            guard let id = Self.segmentID(fromHeader: given) else {
                throw ConnectorSettingsError("segment_id must be a DMP segment's id or URN, not \(given)")
            }
            fixedSegmentID = id
        } else {
            fixedSegmentID = nil
        }
        sourcePlatform = settings["source_platform"].flatMap { $0.isEmpty ? nil : $0 }
        if fixedSegmentID == nil && sourcePlatform == nil {
            throw ConnectorSettingsError(
                "the setting source_platform is required to create DMP segments (LinkedIn gives it to Audience API partners), unless segment_id names an existing segment"
            )
        }
        segmentName = settings["segment_name"].flatMap { $0.isEmpty ? nil : $0 }
        elementsPerCall = try Settings.integer("batch_size", settings, default: 500, in: 1...5000)
        segmentReady = .seconds(try Settings.integer("segment_ready_seconds", settings, default: 5, in: 0...600))
        timeout = .seconds(try Settings.integer("timeout_seconds", settings, default: 30, in: 1...600))
        // LinkedIn limits streaming per member and minute (600 user calls, 300 company calls in the
        // current docs); the default keeps under both for every destination of one ad account.
        let perMinute = try Settings.integer("calls_per_minute", settings, default: 300, in: 1...6000)
        limiter = CallLimiter.shared(
            key: "linkedin \(endpoint) \(account)",
            calls: perMinute,
            window: .seconds(60),
            concurrency: 4
        )
        self.transport = transport
    }

    public func deliver(_ members: [OutboundMember], _ context: DeliveryContext) async throws -> [UInt64: String] {
        // A user is matched by the hashed email alone, which an update keeps: nothing to tell LinkedIn. A
        // company's update is an ADD with its new name and domain.
        let members = members.filter { !($0.update && $0.entityType == .person) }
        guard let first = members.first else { return [:] }
        let companies = first.entityType == .account
        let segment = try await segmentID(context, companies: companies)
        return try await progress.run(context.deliveryID, LinkedInProgress()) { progress in
            try await deliver(members, to: segment, companies: companies, &progress)
        }.refused
    }

    /// The calls of a delivery, skipping the chunks an earlier attempt completed.
    func deliver(
        _ members: [OutboundMember],
        to segment: String,
        companies: Bool,
        _ progress: inout LinkedInProgress
    ) async throws {
        for (index, start) in stride(from: 0, to: members.count, by: elementsPerCall).enumerated()
        where !progress.done.contains(index) {
            let chunk = Array(members[start..<min(start + elementsPerCall, members.count)])
            let elements: [[String: Any]] = chunk.map { member in
                var element: [String: Any] = ["action": member.add ? "ADD" : "REMOVE"]
                if companies {
                    element["companyName"] = member.identity
                    if let domain = member.domain { element["companyWebsiteDomain"] = domain }
                } else {
                    element["userIds"] = [["idType": "SHA256_EMAIL", "idValue": member.identity]]
                }
                return element
            }
            let response = try await send(
                post: "/rest/dmpSegments/\(segment)/\(companies ? "companies" : "users")",
                ["elements": elements],
                batch: true
            )
            // One status per element, in order; a failed element may also name its index (202502 on).
            guard let statuses = try? JSONDecoder().decode(LinkedInBatchResponse.self, from: response.body).elements,
                statuses.count == chunk.count
            else {
                throw DeliveryFailure.retryable(
                    "LinkedIn: POST …/dmpSegments/\(segment)/\(companies ? "companies" : "users") answered without "
                        + "one status per element\(response.excerpt)",
                    after: nil
                )
            }
            for (position, element) in statuses.enumerated() {
                guard let status = element.status, status >= 400 else { continue }
                let index = element.batchIndex.flatMap { chunk.indices.contains($0) ? $0 : nil } ?? position
                progress.refused[chunk[index].cluster] =
                    "LinkedIn answered \(status) for this \(companies ? "company" : "user") in DMP segment \(segment)"
                    + (element.message.map { ": \($0)" } ?? "")
            }
            progress.done.insert(index)
        }
    }

    /// The activation's DMP segment: the configured one, the one created before, or a new one. A
    /// segment's description names its activation, so a create whose answer was lost is found again
    /// (`GET /rest/dmpSegments?q=account`) rather than repeated.
    func segmentID(_ context: DeliveryContext, companies: Bool) async throws -> String {
        if let fixedSegmentID { return fixedSegmentID }
        if let kept = try await context.loadState(Self.segmentKey) { return kept }
        let description = "CDP activation \(context.activation.id) of segment \(context.activation.segmentID)"
        if try await context.loadState(Self.creatingKey) != nil, let found = try await find(description) {
            try await context.saveState(Self.segmentKey, found)
            return found
        }
        try await context.saveState(Self.creatingKey, description)
        let body: [String: Any] = [
            "name": segmentName ?? "CDP \(context.activation.segmentID)",
            "description": description,
            "sourcePlatform": sourcePlatform ?? "",
            "account": adAccount,
            "type": companies ? "COMPANY" : "USER",
            "destinations": [["destination": "LINKEDIN"]],
        ]
        let response = try await send(post: "/rest/dmpSegments", body, batch: false)
        guard let header = response.header("x-restli-id") ?? response.header("x-linkedin-id"),
            let id = Self.segmentID(fromHeader: header)
        else {
            throw DeliveryFailure.permanent("LinkedIn created a DMP segment but sent no x-restli-id header")
        }
        try await context.saveState(Self.segmentKey, id)
        // LinkedIn asks for a few seconds between creating a segment and streaming to it.
        try await Task.sleep(for: segmentReady)
        return id
    }

    /// The id of the ad account's DMP segment with this description, if there is one.
    func find(_ description: String) async throws(DeliveryFailure) -> String? {
        let account = MarketoConnector.queryEscaped(adAccount)
        var start = 0
        while start < 10_000 {
            let response = try await send(
                get: "/rest/dmpSegments?q=account&account=\(account)&start=\(start)&count=100"
            )
            guard let page = try? JSONDecoder().decode(LinkedInSegmentPage.self, from: response.body) else {
                throw .retryable(
                    "LinkedIn: the DMP segments of \(adAccount) came back unreadable\(response.excerpt)",
                    after: nil
                )
            }
            if let match = page.elements.first(where: { $0.description == description }) {
                return Self.segmentID(fromHeader: match.id.value)
            }
            guard page.elements.count == 100 else { return nil }
            start += 100
        }
        return nil
    }

    /// A GET with LinkedIn's headers.
    func send(get path: String) async throws(DeliveryFailure) -> HTTPResponseData {
        try await transport.exchange(
            HTTPRequestData(method: "GET", url: endpoint + path, headers: headers, timeout: timeout),
            "LinkedIn",
            within: limiter
        )
    }

    /// The headers of every call.
    var headers: [(String, String)] {
        [
            ("Authorization", "Bearer \(accessToken)"), ("LinkedIn-Version", version),
            ("X-Restli-Protocol-Version", "2.0.0"),
        ]
    }

    /// A POST of JSON with LinkedIn's headers (and BATCH_CREATE for a batch).
    func send(
        post path: String,
        _ object: [String: Any],
        batch: Bool
    ) async throws(DeliveryFailure)
        -> HTTPResponseData
    {
        let body: Data
        do {
            body = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        } catch {
            throw .permanent("cannot encode the LinkedIn request: \(error)")
        }
        var headers = headers + [("Content-Type", "application/json")]
        if batch { headers.append(("X-RestLi-Method", "BATCH_CREATE")) }
        return try await transport.exchange(
            HTTPRequestData(method: "POST", url: endpoint + path, headers: headers, body: body, timeout: timeout),
            "LinkedIn",
            within: limiter
        )
    }

    /// A segment id from a header or setting: `123`, or a URN ending in it (`urn:li:dmpSegment:123`).
    static func segmentID(fromHeader value: String) -> String? {
        let id = value.split(separator: ":").last.map(String.init)?.trimmingCharacters(in: .whitespaces) ?? ""
        return id.isEmpty || !id.allSatisfy({ $0.isASCII && ($0.isNumber || $0.isLetter || $0 == "-" || $0 == "_") })
            ? nil : id
    }
}

/// What one delivery's calls achieved so far: the chunks sent and the members LinkedIn refused.
struct LinkedInProgress: Sendable {
    var done: Set<Int> = []
    var refused: [UInt64: String] = [:]
}

/// A page of `GET /rest/dmpSegments?q=account`.
struct LinkedInSegmentPage: Decodable {
    struct Segment: Decodable {
        var id: LooseString
        var description: String?
    }
    var elements: [Segment]
}

/// `{"elements":[{"status":201}, …]}`.
struct LinkedInBatchResponse: Decodable {
    struct Element: Decodable {
        var status: Int?
        var batchIndex: Int?
        var message: String?
    }
    var elements: [Element]
}

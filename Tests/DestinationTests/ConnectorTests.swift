import CDPProto
import Crypto
import DestinationConnectors
import DestinationService
import DestinationStore
import Foundation
import Synchronization
import Testing

/// The Marketo, LinkedIn and webhook connectors against in-memory fakes of their APIs.
@Suite struct ConnectorTests {
    static let activation = ActivationRecord(
        id: "a1",
        segmentID: "s1",
        destinationID: "d1",
        identity: .unspecified,
        attributes: [:],
        active: true,
        createdAt: Date(timeIntervalSince1970: 0)
    )

    static func member(
        _ cluster: UInt64,
        _ identity: String,
        add: Bool = true,
        attributes: [String: String] = [:]
    )
        -> OutboundMember
    {
        OutboundMember(
            entityType: .person,
            cluster: cluster,
            add: add,
            version: 1,
            identity: identity,
            attributes: attributes
        )
    }

    static func marketo(
        _ model: MarketoModel,
        endpoint: String = "https://m1.example",
        extra: [String: String] = [:]
    )
        throws -> (MarketoConnector, FakeHTTP)
    {
        let http = FakeHTTP { model.handle($0) }
        let settings = ["endpoint": endpoint, "client_id": "cid", "client_secret": "s3cret", "list_id": "1001"]
        return (try MarketoConnector(settings: settings.merging(extra) { $1 }, transport: http), http)
    }

    static let context = DeliveryContext(activation: activation, runNumber: 1_764_000_000_000)

    @Test func marketoSyncsLeadsAndAddsThemToTheListInChunksOf300WithOneToken() async throws {
        let model = MarketoModel()
        model.state.withLock { $0.skipEmails = ["bad@x.example"] }
        let (connector, http) = try Self.marketo(model)
        let members =
            (1...650).map { Self.member(UInt64($0), "p\($0)@x.example", attributes: ["firstName": "P\($0)"]) }
            + [Self.member(651, "bad@x.example")]
        let refused = try await connector.deliver(members, Self.context)
        #expect(refused == [651: "1003 Invalid email"])
        #expect(model.listed().count == 650)
        #expect(model.state.withLock { ($0.tokensIssued, $0.largestChunk, $0.violations) } == (1, 300, []))
        let syncs = http.sent.filter { $0.method == "POST" && path($0) == "/rest/v1/leads.json" }
        #expect(syncs.map { (body($0)["input"] as? [Any])?.count ?? 0 } == [300, 300, 51])
        let first = (body(syncs[0])["input"] as? [[String: String]])?.first
        #expect(first == ["email": "p1@x.example", "firstName": "P1"])
        #expect(http.sent.dropFirst().allSatisfy { $0.header("Authorization") == "Bearer t1" })
    }

    @Test func marketoRenewsAnExpiredTokenAndRetriesTheCall() async throws {
        let model = MarketoModel()
        let (connector, http) = try Self.marketo(model, endpoint: "https://m2.example")
        _ = try await connector.deliver([Self.member(1, "a@x.example")], Self.context)
        // Marketo expires the token early: 602 in an HTTP 200 body.
        model.state.withLock {
            $0.faults = [json(["success": false, "errors": [["code": "602", "message": "Access token expired"]]])]
        }
        _ = try await connector.deliver([Self.member(2, "b@x.example")], Self.context)
        #expect(model.listed() == ["a@x.example", "b@x.example"])
        #expect(model.state.withLock { $0.tokensIssued } == 2)
        #expect(http.sent.last?.header("Authorization") == "Bearer t2")
    }

    @Test func marketoInBodyErrorsAreSortedIntoRetryableAndPermanent() async throws {
        let model = MarketoModel()
        let (connector, _) = try Self.marketo(model, endpoint: "https://m3.example")
        func failure(_ code: String) async -> DeliveryFailure? {
            model.state.withLock {
                $0.faults = [json(["success": false, "errors": [["code": code, "message": "m\(code)"]]])]
            }
            do {
                _ = try await connector.deliver([Self.member(1, "a@x.example")], Self.context)
                return nil
            } catch {
                return error as? DeliveryFailure
            }
        }
        for code in ["606", "615", "604", "608", "611", "614", "713", "502"] {
            guard case .retryable(let message, after: nil)? = await failure(code) else {
                Issue.record("\(code) should be retried with backoff")
                continue
            }
            #expect(message.contains(code) && message.contains("/rest/v1/leads.json"))
        }
        // The daily quota: retried after it resets at 06:00 UTC ("12:00AM CST"), within a day.
        guard case .retryable(_, let after?)? = await failure("607") else {
            Issue.record("607 should be retried after the quota resets")
            return
        }
        #expect(after > .zero && after <= .seconds(86_400))
        #expect(MarketoConnector.untilQuotaReset(Date(timeIntervalSince1970: 1_764_374_400)) == .seconds(6 * 3_600))
        #expect(MarketoConnector.untilQuotaReset(Date(timeIntervalSince1970: 1_764_396_000)) == .seconds(86_400))
        // No such list, access denied: the members wait for the settings to be fixed.
        for code in ["1013", "603", "610"] {
            guard case .retryable(let message, after: nil)? = await failure(code) else {
                Issue.record("\(code) should keep the members waiting")
                continue
            }
            #expect(message.contains("check the destination's settings"))
        }
        // A request Marketo rejects as such fails the delivery.
        guard case .permanent(let message)? = await failure("609") else {
            Issue.record("609 should fail the delivery")
            return
        }
        #expect(message.contains("609"))
        // HTTP 429 and 5xx are retryable, with Retry-After.
        model.state.withLock { $0.faults = [HTTPResponseData(status: 429, headers: [("Retry-After", "7")])] }
        await #expect(
            throws: DeliveryFailure.retryable(
                "Marketo: POST https://m3.example/rest/v1/leads.json answered HTTP 429",
                after: .seconds(7)
            )
        ) {
            _ = try await connector.deliver([Self.member(1, "a@x.example")], Self.context)
        }
    }

    @Test func marketoRefusedCredentialsAreRetriedAndNeverShowTheSecret() async throws {
        let model = MarketoModel()
        let http = FakeHTTP { model.handle($0) }
        let connector = try MarketoConnector(
            settings: [
                "endpoint": "https://m4.example", "client_id": "cid", "client_secret": "wrong-secret",
                "list_id": "1001",
            ],
            transport: http
        )
        do {
            _ = try await connector.deliver([Self.member(1, "a@x.example")], Self.context)
            Issue.record("a refused secret should fail the delivery")
        } catch let failure as DeliveryFailure {
            guard case .retryable(let message, _) = failure else {
                Issue.record("refused credentials keep the members queued (retryable), got \(failure)")
                return
            }
            #expect(message.contains("refused the credentials") && message.contains("HTTP 401"))
            #expect(!message.contains("wrong-secret"))
        }
        #expect(http.sent.first?.url.contains("client_secret=wrong-secret") == true)
    }

    @Test func marketoRemovesLookUpLeadsByEmailAndAcceptThoseAlreadyOut() async throws {
        let model = MarketoModel()
        let (connector, http) = try Self.marketo(model, endpoint: "https://m5.example")
        _ = try await connector.deliver(
            [Self.member(1, "a@x.example"), Self.member(2, "b+tag@x.example")],
            Self.context
        )
        model.state.withLock { $0.lists["1001"]?.removeAll() }
        _ = model.state.withLock { $0.lists["1001"]?.insert($0.leads["a@x.example"]!) }
        let refused = try await connector.deliver(
            [
                Self.member(1, "a@x.example", add: false), Self.member(2, "b+tag@x.example", add: false),
                Self.member(3, "never@x.example", add: false),
            ],
            Self.context
        )
        #expect(refused.isEmpty)
        #expect(model.listed().isEmpty)
        let lookup = try #require(http.sent.first { $0.method == "GET" && path($0) == "/rest/v1/leads.json" })
        #expect(lookup.url.contains("filterValues=a%40x.example,b%2Btag%40x.example,never%40x.example"))
        #expect(model.state.withLock { $0.violations }.isEmpty)
    }

    @Test func marketoRemovesEveryDuplicateLeadOfAnEmailAcrossPages() async throws {
        let deleted = Mutex<[String]>([])
        let http = FakeHTTP { request in
            switch (request.method, path(request)) {
            case ("GET", "/identity/oauth/token"):
                return json(["access_token": "t", "token_type": "bearer", "expires_in": 3599, "scope": "x"])
            case ("GET", "/rest/v1/leads.json"):
                // Two leads share the email; Marketo pages them.
                let second = request.url.contains("nextPageToken=P2")
                return json([
                    "success": true, "result": [["id": second ? 8 : 7, "email": "dup@x.example"]],
                    "nextPageToken": second ? "" : "P2",
                ])
            case ("DELETE", "/rest/v1/lists/1001/leads.json"):
                deleted.withLock { $0.append(contentsOf: query(request).map(\.1)) }
                return json([
                    "success": true, "result": [["id": 7, "status": "removed"], ["id": 8, "status": "removed"]],
                ])
            default:
                Issue.record("unexpected \(request.method) \(request.url)")
                return HTTPResponseData(status: 500)
            }
        }
        let connector = try MarketoConnector(
            settings: ["endpoint": "https://m7.example", "client_id": "c", "client_secret": "s", "list_id": "1001"],
            transport: http
        )
        let refused = try await connector.deliver([Self.member(1, "dup@x.example", add: false)], Self.context)
        #expect(refused.isEmpty)
        #expect(deleted.withLock { $0 } == ["7", "8"])
    }

    @Test func marketoLookupsStayUnder8KB() {
        let members = (1...300).map { Self.member(UInt64($0), String(repeating: "x", count: 60) + "\($0)@x.example") }
        let chunks = MarketoConnector.lookupChunks(members)
        #expect(chunks.count > 1 && chunks.joined().count == 300)
        #expect(
            chunks.allSatisfy {
                $0.map { MarketoConnector.queryEscaped($0.identity) }.joined(separator: ",").utf8.count < 8_000
            }
        )
    }

    @Test func settingsErrorsNameTheSetting() {
        let http = FakeHTTP()
        #expect(throws: ConnectorSettingsError.self) {
            try MarketoConnector(
                settings: ["endpoint": "https://m.example", "client_id": "c", "client_secret": "s"],
                transport: http
            )
        }
        /// The message a settings error gives, or nil if the settings were taken.
        func refusal(_ make: () throws -> any Connector) -> String? {
            do {
                _ = try make()
                return nil
            } catch {
                return "\(error)"
            }
        }
        #expect(
            refusal { try MarketoConnector(settings: ["endpoint": "ftp://x", "client_id": "c"], transport: http) }
                == "endpoint must be an http or https URL, not ftp://x"
        )
        #expect(
            refusal { try LinkedInConnector(settings: ["access_token": "t", "ad_account": "123"], transport: http) }
                == "ad_account must be urn:li:sponsoredAccount:<number>, not 123"
        )
        #expect(
            refusal { try WebhookConnector(settings: ["url": "https://h.example/x"], transport: http) }
                == "the setting secret is required"
        )
    }

    @Test func linkedInCreatesOneSegmentPerActivationAndStreamsHashedEmails() async throws {
        let created = Mutex(0)
        let http = FakeHTTP { request in
            #expect(request.header("Authorization") == "Bearer li-token")
            #expect(request.header("LinkedIn-Version") == "202610")
            #expect(request.header("X-Restli-Protocol-Version") == "2.0.0")
            if path(request) == "/rest/dmpSegments" {
                created.withLock { $0 += 1 }
                return HTTPResponseData(status: 201, headers: [("x-restli-id", "urn:li:dmpSegment:9001")])
            }
            #expect(path(request) == "/rest/dmpSegments/9001/users")
            #expect(request.header("X-RestLi-Method") == "BATCH_CREATE")
            let elements = body(request)["elements"] as? [[String: Any]] ?? []
            return json([
                "elements": elements.indices.map { $0 == 1 ? ["status": 400, "message": "bad id"] : ["status": 201] }
            ])
        }
        let connector = try LinkedInConnector(
            settings: [
                "access_token": "li-token", "ad_account": "urn:li:sponsoredAccount:507404993", "source_platform": "CDP",
                "segment_ready_seconds": "0", "batch_size": "2",
            ],
            transport: http
        )
        let state = Mutex<[String: String]>([:])
        let context = DeliveryContext(
            activation: Self.activation,
            runNumber: 1,
            loadState: { key in state.withLock { $0[key] } },
            saveState: { key, value in state.withLock { $0[key] = value } }
        )
        let hash = MemberMapping.hashedEmail("p2@townsend.com")
        let refused = try await connector.deliver(
            [
                Self.member(6, hash), Self.member(7, MemberMapping.hashedEmail("x@y.example")),
                Self.member(8, hash, add: false),
            ],
            context
        )
        #expect(refused == [7: "LinkedIn answered 400 for this user in DMP segment 9001: bad id"])
        _ = try await connector.deliver([Self.member(9, hash)], context)
        #expect(created.withLock { $0 } == 1)
        #expect(state.withLock { $0["linkedin.dmp_segment"] } == "9001")
        let create = try #require(http.sent.first)
        #expect(
            body(create)["type"] as? String == "USER"
                && body(create)["account"] as? String == "urn:li:sponsoredAccount:507404993"
        )
        let users = http.sent.dropFirst().map { body($0)["elements"] as? [[String: Any]] ?? [] }
        #expect(users.map(\.count) == [2, 1, 1])
        let first = users[0][0]
        #expect(first["action"] as? String == "ADD")
        #expect((first["userIds"] as? [[String: String]]) == [["idType": "SHA256_EMAIL", "idValue": hash]])
        #expect(users[1][0]["action"] as? String == "REMOVE")
    }

    @Test func linkedInFindsASegmentWhoseCreateAnswerWasLostInsteadOfCreatingAnother() async throws {
        let creates = Mutex(0)
        let http = FakeHTTP { request in
            switch (request.method, path(request)) {
            case ("POST", "/rest/dmpSegments"):
                // LinkedIn creates it, but the answer never arrives.
                creates.withLock { $0 += 1 }
                throw FakeHTTP.Unreachable()
            case ("GET", "/rest/dmpSegments"):
                #expect(request.url.contains("q=account&account=urn%3Ali%3AsponsoredAccount%3A1&start=0&count=100"))
                return json([
                    "elements": [
                        ["id": 5, "description": "made by hand"],
                        ["id": 7001, "description": "CDP activation a1 of segment s1"],
                    ]
                ])
            default:
                return json(["elements": [["status": 201]]])
            }
        }
        let connector = try LinkedInConnector(
            settings: [
                "access_token": "t", "ad_account": "urn:li:sponsoredAccount:1", "source_platform": "P",
                "segment_ready_seconds": "0",
            ],
            transport: http
        )
        let state = Mutex<[String: String]>([:])
        let context = DeliveryContext(
            activation: Self.activation,
            runNumber: 1,
            loadState: { key in state.withLock { $0[key] } },
            saveState: { key, value in state.withLock { $0[key] = value } }
        )
        let member = Self.member(1, MemberMapping.hashedEmail("a@b.c"))
        await #expect(throws: DeliveryFailure.self) { _ = try await connector.deliver([member], context) }
        _ = try await connector.deliver([member], context)
        #expect(creates.withLock { $0 } == 1)
        #expect(http.sent.last.map(path) == "/rest/dmpSegments/7001/users")
    }

    @Test func aRetriedMarketoDeliveryRepeatsOnlyTheCallsThatFailed() async throws {
        let model = MarketoModel()
        let (connector, http) = try Self.marketo(model, endpoint: "https://m6.example")
        let members = (1...400).map { Self.member(UInt64($0), "p\($0)@x.example") }
        // API calls: 1 sync of chunk 1, 2 its list add, 3 sync of chunk 2, 4 its list add (throttled).
        model.state.withLock {
            $0.faultsAt[4] = json(["success": false, "errors": [["code": "615", "message": "busy"]]])
        }
        await #expect(throws: DeliveryFailure.self) { _ = try await connector.deliver(members, Self.context) }
        #expect(model.listed().count == 300)
        let refused = try await connector.deliver(members, Self.context)
        #expect(refused.isEmpty && model.listed().count == 400)
        // The retry made only the failed call again: no second sync, no repeated list add of chunk 1.
        let api = http.sent.filter { path($0).hasPrefix("/rest/") }
        #expect(
            api.map { "\($0.method) \(path($0))" } == [
                "POST /rest/v1/leads.json", "POST /rest/v1/lists/1001/leads.json", "POST /rest/v1/leads.json",
                "POST /rest/v1/lists/1001/leads.json", "POST /rest/v1/lists/1001/leads.json",
            ]
        )
        // Another delivery starts afresh.
        _ = try await connector.deliver(
            [Self.member(1, "p1@x.example")],
            DeliveryContext(activation: Self.activation, runNumber: 2)
        )
        #expect(http.sent.filter { path($0) == "/rest/v1/leads.json" }.count == 3)
    }

    @Test func linkedInRetriesANotYetReadySegmentAndThrottling() async throws {
        let answers = Mutex([
            HTTPResponseData(status: 404), HTTPResponseData(status: 429, headers: [("Retry-After", "2")]),
        ])
        let http = FakeHTTP { _ in answers.withLock { $0.removeFirst() } }
        let connector = try LinkedInConnector(
            settings: ["access_token": "t", "ad_account": "urn:li:sponsoredAccount:1", "segment_id": "42"],
            transport: http
        )
        for expected in [nil, Duration.seconds(2)] as [Duration?] {
            do {
                _ = try await connector.deliver([Self.member(1, MemberMapping.hashedEmail("a@b.c"))], Self.context)
                Issue.record("expected a retryable failure")
            } catch let failure as DeliveryFailure {
                guard case .retryable(_, let after) = failure else {
                    Issue.record("expected retryable, got \(failure)")
                    continue
                }
                #expect(after == expected)
            }
        }
        #expect(http.sent.allSatisfy { path($0) == "/rest/dmpSegments/42/users" })
    }

    @Test func webhooksAreSignedAsStandardWebhooks() async throws {
        // The Standard Webhooks specification's example.
        let key = SymmetricKey(data: Data(base64Encoded: "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")!)
        #expect(
            WebhookConnector.signature(
                id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
                timestamp: "1614265330",
                body: Data(#"{"test": 2432232314}"#.utf8),
                key: key
            ) == "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        )
        let http = FakeHTTP { _ in HTTPResponseData(status: 204) }
        let connector = try WebhookConnector(
            settings: ["url": "https://hooks.example/cdp", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            transport: http,
            now: { Date(timeIntervalSince1970: 1_764_000_000) }
        )
        _ = try await connector.deliver([Self.member(6, "p2@townsend.com")], Self.context)
        let request = try #require(http.sent.first)
        #expect(request.header("webhook-id") == "a1-1764000000000")
        #expect(request.header("webhook-timestamp") == "1764000000")
        let expected = WebhookConnector.signature(
            id: "a1-1764000000000",
            timestamp: "1764000000",
            body: request.body ?? Data(),
            key: key
        )
        #expect(request.header("webhook-signature") == "v1," + expected)
        let members = body(request)["members"] as? [[String: Any]]
        #expect(members?.first?["identity"] as? String == "p2@townsend.com")
        #expect(members?.first?["op"] as? String == "add")
        // A 4xx other than 408/429 fails the delivery; 503 is retried.
        for (status, retryable) in [(400, false), (503, true), (408, true)] {
            let failing = try WebhookConnector(
                settings: ["url": "https://hooks.example/cdp", "secret": "s"],
                transport: FakeHTTP { _ in HTTPResponseData(status: status) }
            )
            do {
                _ = try await failing.deliver([Self.member(6, "p2@townsend.com")], Self.context)
                Issue.record("HTTP \(status) was taken as a success")
            } catch let failure as DeliveryFailure {
                if case .retryable = failure { #expect(retryable) } else { #expect(!retryable) }
            }
        }
    }

    @Test func theCallLimiterKeepsToTheWindowAndTheConcurrency() async throws {
        let limiter = CallLimiter(calls: 3, window: .milliseconds(300), concurrency: 2)
        final class Calls: Sendable { let inFlight = Mutex((now: 0, most: 0)) }
        let calls = Calls()
        let clock = ContinuousClock()
        let start = clock.now
        let starts = try await withThrowingTaskGroup(of: Duration.self) { group in
            for _ in 0..<6 {
                group.addTask {
                    try await limiter.run {
                        let began = clock.now - start
                        calls.inFlight.withLock {
                            $0.now += 1
                            $0.most = max($0.most, $0.now)
                        }
                        try await Task.sleep(for: .milliseconds(20))
                        calls.inFlight.withLock { $0.now -= 1 }
                        return began
                    }
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }.sorted()
        }
        #expect(calls.inFlight.withLock { $0.most } == 2)
        // The fourth call waits until the first leaves the 300 ms window.
        #expect(starts[3] >= .milliseconds(300))
    }
}

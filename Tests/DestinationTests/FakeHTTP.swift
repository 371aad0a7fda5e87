import DestinationConnectors
import Foundation
import Synchronization

/// An HTTP transport that answers from a handler and records every request.
final class FakeHTTP: HTTPTransport, Sendable {
    struct Unreachable: Error, CustomStringConvertible {
        var description: String { "connection refused" }
    }

    let requests = Mutex<[HTTPRequestData]>([])
    private let handler: @Sendable (HTTPRequestData) async throws -> HTTPResponseData

    init(
        _ handler: @escaping @Sendable (HTTPRequestData) async throws -> HTTPResponseData = { _ in throw Unreachable() }
    ) {
        self.handler = handler
    }

    func send(_ request: HTTPRequestData) async throws -> HTTPResponseData {
        requests.withLock { $0.append(request) }
        return try await handler(request)
    }

    var sent: [HTTPRequestData] { requests.withLock { $0 } }
}

/// A JSON response.
func json(_ object: Any, status: Int = 200, headers: [(String, String)] = []) -> HTTPResponseData {
    HTTPResponseData(
        status: status,
        headers: headers + [("Content-Type", "application/json")],
        body: (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
    )
}

/// The JSON object of a request's body.
func body(_ request: HTTPRequestData) -> [String: Any] {
    request.body.flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } ?? [:]
}

/// The query parameters of a request's URL, in order (repeated names repeat).
func query(_ request: HTTPRequestData) -> [(String, String)] {
    (URLComponents(string: request.url)?.queryItems ?? []).map { ($0.name, $0.value ?? "") }
}

/// The path of a request's URL.
func path(_ request: HTTPRequestData) -> String { URLComponents(string: request.url)?.path ?? "" }

/// An in-memory Marketo: identity tokens, leads by email, static lists; `fault` can answer a call
/// instead (throttling codes, HTTP errors). It checks what the connector must send.
final class MarketoModel: Sendable {
    struct State {
        var leads: [String: Int64] = [:]
        var lists: [String: Set<Int64>] = ["1001": []]
        var tokens: Set<String> = []
        var tokensIssued = 0
        var violations: [String] = []
        var skipEmails: Set<String> = []
        /// Answers for the next API calls (not identity), first first.
        var faults: [HTTPResponseData] = []
        /// Answers for given API calls, by number (1: the first API call).
        var faultsAt: [Int: HTTPResponseData] = [:]
        var apiCalls = 0
        var largestChunk = 0
    }

    let state = Mutex(State())

    func handle(_ request: HTTPRequestData) -> HTTPResponseData {
        state.withLock { state in
            let route = path(request)
            if route == "/identity/oauth/token" {
                let items = Dictionary(query(request), uniquingKeysWith: { first, _ in first })
                guard request.method == "GET", items["grant_type"] == "client_credentials", items["client_id"] == "cid"
                else {
                    state.violations.append("bad token request \(request.url)")
                    return json(["error": "invalid_request"], status: 400)
                }
                guard items["client_secret"] == "s3cret" else { return json(["error": "unauthorized"], status: 401) }
                state.tokensIssued += 1
                let token = "t\(state.tokensIssued)"
                state.tokens.insert(token)
                return json(["access_token": token, "token_type": "bearer", "expires_in": 3599, "scope": "api@x"])
            }
            if request.url.contains("access_token=") { state.violations.append("token in the query: \(request.url)") }
            guard let header = request.header("Authorization"), header.hasPrefix("Bearer "),
                state.tokens.contains(String(header.dropFirst(7)))
            else {
                return json(["success": false, "errors": [["code": "601", "message": "Access token invalid"]]])
            }
            state.apiCalls += 1
            if let fault = state.faultsAt.removeValue(forKey: state.apiCalls) { return fault }
            if !state.faults.isEmpty { return state.faults.removeFirst() }
            let ids = query(request).filter { $0.0 == "id" }.compactMap { Int64($0.1) }
            state.largestChunk = max(state.largestChunk, ids.count)
            switch (request.method, route) {
            case ("POST", "/rest/v1/leads.json"):
                let object = body(request)
                let input = object["input"] as? [[String: Any]] ?? []
                state.largestChunk = max(state.largestChunk, input.count)
                guard object["action"] as? String == "createOrUpdate", object["lookupField"] as? String == "email",
                    request.header("Content-Type") == "application/json", input.count <= 300
                else {
                    state.violations.append("bad sync \(object)")
                    return json(["success": false, "errors": [["code": "1003", "message": "bad"]]])
                }
                var result: [[String: Any]] = []
                for lead in input {
                    let email = (lead["email"] as? String ?? "").lowercased()
                    if state.skipEmails.contains(email) {
                        result.append(["status": "skipped", "reasons": [["code": "1003", "message": "Invalid email"]]])
                        continue
                    }
                    let existing = state.leads[email]
                    let id = existing ?? Int64(state.leads.count + 100)
                    state.leads[email] = id
                    result.append(["id": id, "status": existing == nil ? "created" : "updated"])
                }
                return json(["requestId": "r", "success": true, "result": result])
            case ("GET", "/rest/v1/leads.json"):
                let items = Dictionary(query(request), uniquingKeysWith: { first, _ in first })
                let emails = (items["filterValues"] ?? "").split(separator: ",").map { $0.lowercased() }
                if items["filterType"] != "email" || emails.count > 300 { state.violations.append("bad lookup") }
                let result = emails.compactMap { email in state.leads[email].map { ["id": $0, "email": email] } }
                return json(["requestId": "r", "success": true, "result": result])
            case (let method, let route) where route.hasPrefix("/rest/v1/lists/") && route.hasSuffix("/leads.json"):
                let list = route.dropFirst("/rest/v1/lists/".count).dropLast("/leads.json".count)
                guard var members = state.lists[String(list)] else {
                    return json(["success": false, "errors": [["code": "1013", "message": "Static list not found"]]])
                }
                if ids.isEmpty || ids.count > 300 { state.violations.append("list call with \(ids.count) ids") }
                let known = Set(state.leads.values)
                let result: [[String: Any]] = ids.map { id in
                    guard known.contains(id) else {
                        return [
                            "id": id, "status": "skipped", "reasons": [["code": "1004", "message": "Lead not found"]],
                        ]
                    }
                    if method == "POST" {
                        members.insert(id)
                        return ["id": id, "status": "added"]
                    }
                    guard members.remove(id) != nil else {
                        return [
                            "id": id, "status": "skipped",
                            "reasons": [["code": "1015", "message": "Lead not in list"]],
                        ]
                    }
                    return ["id": id, "status": "removed"]
                }
                state.lists[String(list)] = members
                return json(["requestId": "r", "success": true, "result": result])
            default:
                state.violations.append("unknown call \(request.method) \(request.url)")
                return json(["success": false, "errors": [["code": "610", "message": "Requested resource not found"]]])
            }
        }
    }

    /// The emails on a list.
    func listed(_ list: String = "1001") -> Set<String> {
        state.withLock { state in
            let members = state.lists[list] ?? []
            return Set(state.leads.filter { members.contains($0.value) }.keys)
        }
    }
}

import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOPosix

/// One HTTP request as a connector makes it.
public struct HTTPRequestData: Sendable {
    public var method: String
    public var url: String
    public var headers: [(String, String)]
    public var body: Data?
    /// How long the whole exchange may take.
    public var timeout: Duration

    /// Creates a request.
    public init(
        method: String,
        url: String,
        headers: [(String, String)] = [],
        body: Data? = nil,
        timeout: Duration = .seconds(30)
    ) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeout = timeout
    }

    /// The method and the URL without its query: what logs and errors may show (a query can hold a
    /// secret, as Marketo's token request does).
    public var redacted: String {
        "\(method) \(url.split(separator: "?", maxSplits: 1).first.map(String.init) ?? url)"
    }

    /// The value of a header, by its name in any case.
    public func header(_ name: String) -> String? { headerValue(name, in: headers) }
}

/// The first value of a header, by its name in any case.
private func headerValue(_ name: String, in headers: [(String, String)]) -> String? {
    headers.first { $0.0.caseInsensitiveCompare(name) == .orderedSame }?.1
}

/// One HTTP response as a connector reads it.
public struct HTTPResponseData: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: Data

    /// Creates a response.
    public init(status: Int, headers: [(String, String)] = [], body: Data = Data()) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// The value of a header, by its name in any case.
    public func header(_ name: String) -> String? { headerValue(name, in: headers) }

    /// The delay a `Retry-After` header asks for (seconds; HTTP dates are not used by these APIs).
    public var retryAfter: Duration? {
        header("Retry-After").flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }.map { .seconds(max(0, $0)) }
    }
}

/// Sends HTTP requests: the real client in the service, an in-memory fake in unit tests.
public protocol HTTPTransport: Sendable {
    /// Sends a request; throws when no response came (connection refused, timeout).
    func send(_ request: HTTPRequestData) async throws -> HTTPResponseData
}

extension HTTPTransport {
    /// Sends a request and sorts the outcome as the delivery engine needs it: the response if its
    /// status is 2xx; otherwise a ``DeliveryFailure`` that says what happened to which call (the URL
    /// without its query). Retryable, with the members waiting: timeouts and refused connections,
    /// 408, 409, 423, 429 and 5xx (after `Retry-After` if given), and what a person has to fix in the
    /// settings or at the destination: redirects (not followed: a POST would become a GET without its
    /// body), 401, 403, 404 and 426 (an API version retired). Other statuses (400, 413, 422, …) reject
    /// the request itself and are permanent.
    public func exchange(
        _ request: HTTPRequestData,
        _ service: String
    ) async throws(DeliveryFailure)
        -> HTTPResponseData
    {
        let response: HTTPResponseData
        do {
            response = try await send(request)
        } catch {
            throw .retryable("\(service): \(request.redacted) failed: \(error)", after: nil)
        }
        let call = "\(service): \(request.redacted) answered HTTP \(response.status)"
        switch response.status {
        case 200..<300:
            return response
        case 300..<400:
            throw .retryable(
                call + ", a redirect to \(response.header("Location") ?? "nowhere"); set the URL it names",
                after: nil
            )
        case 401, 403:
            throw .retryable(
                "\(service) refused the credentials: \(request.redacted) answered HTTP \(response.status)",
                after: nil
            )
        case 404, 426:
            throw .retryable(call + response.excerpt + " (check the destination's settings)", after: nil)
        case 408, 409, 423, 429, 500..<600:
            throw .retryable(call + response.excerpt, after: response.retryAfter)
        default:
            throw .permanent(call + response.excerpt)
        }
    }
}

extension HTTPTransport {
    /// ``exchange(_:_:)`` once `limiter` allows the call (a cancelled wait is retryable too).
    public func exchange(
        _ request: HTTPRequestData,
        _ service: String,
        within limiter: CallLimiter
    )
        async throws(DeliveryFailure) -> HTTPResponseData
    {
        do {
            return try await limiter.run { try await exchange(request, service) }
        } catch let failure as DeliveryFailure {
            throw failure
        } catch {
            throw .retryable("\(service): \(request.redacted): \(error)", after: nil)
        }
    }
}

extension HTTPResponseData {
    /// The start of the body, for error messages.
    var excerpt: String {
        let text = String(decoding: body.prefix(300), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? "" : ": " + text
    }
}

/// A request that got no response, in plain words.
public struct TransportError: Error, CustomStringConvertible {
    public var description: String

    /// Creates an error.
    public init(_ description: String) { self.description = description }
}

/// HTTP over AsyncHTTPClient (HTTP/1.1 and HTTP/2, TLS), with each request's deadline and a cap on
/// the response size.
public struct AsyncHTTPTransport: HTTPTransport {
    private let client: HTTPClient
    private let maxResponseBytes: Int

    /// The client configuration connectors need: no redirects followed (a POST would become a GET
    /// without its body), and a read timeout, since a request's deadline ends when the response head
    /// arrives and a stalled body would otherwise hang its destination.
    public static var clientConfiguration: HTTPClient.Configuration {
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.timeout = .init(connect: .seconds(10), read: .seconds(60))
        return configuration
    }

    /// A transport over `client` (made with ``clientConfiguration``).
    public init(client: HTTPClient, maxResponseBytes: Int = 16 << 20) {
        self.client = client
        self.maxResponseBytes = maxResponseBytes
    }

    public func send(_ request: HTTPRequestData) async throws -> HTTPResponseData {
        var outgoing = HTTPClientRequest(url: request.url)
        outgoing.method = HTTPMethod(rawValue: request.method)
        for (name, value) in request.headers { outgoing.headers.add(name: name, value: value) }
        if let body = request.body { outgoing.body = .bytes(ByteBuffer(bytes: body)) }
        let milliseconds =
            request.timeout.components.seconds * 1000 + request.timeout.components.attoseconds / 1_000_000_000_000_000
        let response: HTTPClientResponse
        let body: ByteBuffer
        do {
            response = try await client.execute(outgoing, timeout: .milliseconds(milliseconds))
            body = try await response.body.collect(upTo: maxResponseBytes)
        } catch {
            throw TransportError(Self.describe(error, timeout: request.timeout))
        }
        return HTTPResponseData(
            status: Int(response.status.code),
            headers: response.headers.map { ($0.name, $0.value) },
            body: Data(buffer: body)
        )
    }

    /// Why no response came, without NIO's internals ("connection refused", not the errno dump).
    static func describe(_ error: any Error, timeout: Duration) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .deadlineExceeded, .readTimeout, .writeTimeout, .connectTimeout:
                return "no response within \(timeout)"
            case .remoteConnectionClosed:
                return "the server closed the connection"
            default:
                return "\(error)"
            }
        }
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)).lowercased() }
        if let error = error as? NIOConnectionError, let first = error.connectionErrors.first?.error {
            return describe(first, timeout: timeout)
        }
        return "\(error)"
    }
}

import SwiftProtobufPluginLibrary

/// Writes one service: an enum named like protoc-gen-swift names the file's messages
/// (`Grpc_Testing_TestService`) holding the descriptor, the typed methods, the protocol servers
/// implement and the typed client, then an extension that routes the protocol's methods.
struct ServiceGenerator {
    /// The RPCCore names the generated code uses unqualified.
    static let rpcCoreNames: Set<String> = [
        "CallOptions", "ClientCall", "Metadata", "RPCAsyncSequence", "RPCClient", "RPCMethod", "RPCService",
        "RPCWriter", "ServerContext", "ServerMethod", "ServiceDescriptor",
    ]
    /// The names declared inside the service enum (and the client's generic parameter `R`); message
    /// types referenced from inside it must not be spelled the same.
    static let nestedNames: Set<String> = ["Client", "Method", "R", "ServiceProtocol", "descriptor"]

    let service: ServiceDescriptor
    let namer: SwiftProtobufNamer
    let options: GeneratorOptions
    /// The proto files in the service's descriptor and the constants holding their bytes.
    let descriptorConstants: [(fileName: String, constant: String)]

    /// The Swift name of the service enum.
    var enumName: String { self.namer.typePrefix(forFile: self.service.file) + self.service.name }

    private var access: String { self.options.accessModifier }

    /// What the generator needs to know about one method.
    struct Method {
        let descriptor: MethodDescriptor
        /// The lowerCamelCase Swift name, backticked if needed.
        let name: String
        let input: String
        let output: String

        var kind: Kind {
            switch (self.descriptor.clientStreaming, self.descriptor.serverStreaming) {
            case (false, false): .unary
            case (false, true): .serverStreaming
            case (true, false): .clientStreaming
            case (true, true): .bidirectional
            }
        }
    }

    /// A method's call kind, spelled as RPCCore's `CallKind` cases and `ServerMethod` factories.
    enum Kind: String {
        case unary
        case serverStreaming
        case clientStreaming
        case bidirectional

        var description: String {
            switch self {
            case .unary: "unary"
            case .serverStreaming: "server streaming"
            case .clientStreaming: "client streaming"
            case .bidirectional: "bidirectional streaming"
            }
        }
    }

    var methods: [Method] {
        self.service.methods.map { method in
            Method(
                descriptor: method,
                name: SwiftNames.identifier(NamingUtils.toLowerCamelCase(method.name)),
                input: self.namer.fullName(message: method.inputType),
                output: self.namer.fullName(message: method.outputType)
            )
        }
    }

    func checkNames() throws {
        var seen: [String: String] = [:]
        for method in self.methods {
            if let other = seen[method.name] {
                throw GeneratorError(
                    "Methods \(other) and \(method.descriptor.name) of \(self.service.fullName) both become "
                        + "\(method.name) in Swift; rename one of them."
                )
            }
            seen[method.name] = method.descriptor.name
            for type in [method.input, method.output] {
                let topLevel = String(type.prefix { $0 != "." })
                if Self.nestedNames.contains(topLevel) || topLevel == self.enumName {
                    throw GeneratorError(
                        "Method \(method.descriptor.fullName) uses the Swift type \(type), which the generated "
                            + "service declares itself; give the .proto file a package or a swift_prefix option."
                    )
                }
            }
        }
    }

    func write(into writer: inout SourceWriter) throws {
        let methods = self.methods
        let serviceComments = self.service.protoSourceCommentsWithDeprecation()
        if serviceComments.isEmpty {
            writer.doc("The `\(self.service.fullName)` service.")
        } else {
            writer.comment(serviceComments)
        }
        writer.doc(
            "",
            "`descriptor` names the service and carries its protobuf descriptors for reflection; `Method` has the "
                + "typed methods, `ServiceProtocol` is what a server implements, `Client` calls the service."
        )
        writer.block("\(self.access)enum \(self.enumName)") { writer in
            self.writeDescriptor(into: &writer)
            writer.line()
            self.writeMethods(methods, into: &writer)
            writer.line()
            self.writeServiceProtocol(methods, into: &writer)
            writer.line()
            self.writeClient(methods, into: &writer)
        }
        writer.line()
        self.writeRouting(methods, into: &writer)
    }

    private func writeDescriptor(into writer: inout SourceWriter) {
        writer.doc(
            "The service's name, and the serialized descriptors of its `.proto` file and everything it imports, "
                + "transitively, for server reflection."
        )
        writer.line("\(self.access)static let descriptor = ServiceDescriptor(")
        writer.indented { writer in
            writer.line("fullName: \(SwiftNames.stringLiteral(self.service.fullName)),")
            writer.line("fileName: \(SwiftNames.stringLiteral(self.service.file.name)),")
            writer.line("fileDescriptors: [")
            writer.indented { writer in
                for (fileName, constant) in self.descriptorConstants {
                    writer.line("\(SwiftNames.stringLiteral(fileName)): \(constant),")
                }
            }
            writer.line("]")
        }
        writer.line(")")
    }

    private func writeMethods(_ methods: [Method], into writer: inout SourceWriter) {
        writer.doc("The service's methods with their message types.")
        writer.block("\(self.access)enum Method") { writer in
            for (index, method) in methods.enumerated() {
                if index > 0 { writer.line() }
                writer.doc("`\(self.path(of: method))`: \(method.kind.description).")
                let declaration = "\(self.access)static let \(method.name) ="
                let type = "RPCMethod<\(method.input), \(method.output)>"
                let arguments = [
                    "service: \(SwiftNames.stringLiteral(self.service.fullName))",
                    "method: \(SwiftNames.stringLiteral(method.descriptor.name))",
                    "kind: .\(method.kind.rawValue)",
                ]
                if writer.fits("\(declaration) \(type)(") {
                    writer.call("\(declaration) \(type)", arguments)
                } else {
                    writer.line(declaration)
                    writer.indented { writer in writer.call(type, arguments) }
                }
            }
        }
    }

    private func writeServiceProtocol(_ methods: [Method], into writer: inout SourceWriter) {
        writer.doc(
            "Implement this to serve `\(self.service.fullName)`, then pass the value to a server; the extension "
                + "below routes each method to its requirement.",
            "",
            "Throw ``RPCError`` (or an ``RPCErrorConvertible`` error) to end a call with a chosen status."
        )
        writer.block("\(self.access)protocol ServiceProtocol: RPCService") { writer in
            for (index, method) in methods.enumerated() {
                if index > 0 { writer.line() }
                self.writeMethodComments(method, into: &writer)
                writer.doc("Serves `\(self.path(of: method))` (\(method.kind.description)).")
                let request = "request: \(method.input)"
                let requests = "requests: RPCAsyncSequence<\(method.input)>"
                let responses = "responses: RPCWriter<\(method.output)>"
                let context = "context: ServerContext"
                let head = "func \(method.name)"
                switch method.kind {
                case .unary:
                    writer.call(head, [request, context], " async throws -> \(method.output)")
                case .serverStreaming:
                    writer.call(head, [request, responses, context], " async throws")
                case .clientStreaming:
                    writer.call(head, [requests, context], " async throws -> \(method.output)")
                case .bidirectional:
                    writer.call(head, [requests, responses, context], " async throws")
                }
            }
        }
    }

    private func writeClient(_ methods: [Method], into writer: inout SourceWriter) {
        writer.doc("A typed client of `\(self.service.fullName)`.")
        writer.block("\(self.access)struct Client: Sendable") { writer in
            writer.doc(
                "The untyped client calls go through; it also makes calls that return response metadata, e.g. "
                    + "`rpc.unary(\(self.enumName).Method.…, request)`."
            )
            writer.line("\(self.access)let rpc: RPCClient")
            writer.line()
            writer.doc("Creates a client that calls through `rpc`.")
            writer.block("\(self.access)init(_ rpc: RPCClient)") { writer in
                writer.line("self.rpc = rpc")
            }
            for method in methods {
                writer.line()
                self.writeClientMethod(method, into: &writer)
            }
        }
    }

    private func writeClientMethod(_ method: Method, into writer: inout SourceWriter) {
        self.writeMethodComments(method, into: &writer)
        let reference = "\(self.enumName).Method.\(method.name)"
        let metadata = "metadata: Metadata = Metadata()"
        let options = "options: CallOptions = .defaults"
        let call = "ClientCall<\(method.input), \(method.output)>"
        var body = "_ body: (\(call)) async throws -> R"
        if !writer.fits(SourceWriter.indentUnit + body + ",") {
            body = "_ body: (\n\(SourceWriter.indentUnit)\(call)\n) async throws -> R"
        }
        let forwarded = ["metadata: metadata", "options: options"]
        let head = "\(self.access)func \(method.name)"
        switch method.kind {
        case .unary:
            writer.doc(
                "Calls `\(self.path(of: method))` (unary) and returns the response message. For its metadata, use "
                    + "`rpc.unary(\(reference), request)`."
            )
            writer.function(
                head,
                ["_ request: \(method.input)", metadata, options],
                " async throws -> \(method.output)"
            ) { writer in
                writer.call("try await self.rpc.unary", [reference, "request"] + forwarded, ".message")
            }
        case .serverStreaming:
            writer.doc(
                "Calls `\(self.path(of: method))` (server streaming): sends `request`, then runs `body` with the "
                    + "call, whose `responses` are the server's messages. The call is cancelled if `body` returns "
                    + "before it has ended."
            )
            writer.function(
                "\(head)<R: Sendable>",
                ["_ request: \(method.input)", metadata, options, body],
                " async throws -> R"
            ) { writer in
                writer.call("try await self.rpc.serverStreaming", [reference, "request"] + forwarded + ["body"])
            }
        case .clientStreaming:
            writer.doc(
                "Calls `\(self.path(of: method))` (client streaming): sends `requests`, then returns the response "
                    + "message. For its metadata, use `rpc.clientStreaming(\(reference), requests)`."
            )
            writer.function(
                head,
                ["_ requests: some Sequence<\(method.input)>", metadata, options],
                " async throws -> \(method.output)"
            ) { writer in
                writer.call("try await self.rpc.clientStreaming", [reference, "requests"] + forwarded, ".message")
            }
        case .bidirectional:
            writer.doc(
                "Calls `\(self.path(of: method))` (bidirectional streaming) and runs `body` with the call: `send` "
                    + "requests and `closeSend`, read `responses`. The call is cancelled if `body` returns before it "
                    + "has ended."
            )
            writer.function("\(head)<R: Sendable>", [metadata, options, body], " async throws -> R") { writer in
                writer.call("try await self.rpc.withCall", [reference] + forwarded + ["body"])
            }
        }
    }

    private func writeRouting(_ methods: [Method], into writer: inout SourceWriter) {
        writer.block("extension \(self.enumName).ServiceProtocol") { writer in
            writer.doc("The service's name and descriptors.")
            writer.line("\(self.access)var serviceDescriptor: ServiceDescriptor { \(self.enumName).descriptor }")
            writer.line()
            writer.doc("Routes each method of the service to its requirement.")
            writer.block("\(self.access)var methods: [ServerMethod]") { writer in
                writer.line("[")
                writer.indented { writer in
                    for method in methods {
                        let arguments =
                            switch method.kind {
                            case .unary: "request: $0, context: $1"
                            case .serverStreaming: "request: $0, responses: $1, context: $2"
                            case .clientStreaming: "requests: $0, context: $1"
                            case .bidirectional: "requests: $0, responses: $1, context: $2"
                            }
                        let opener = ".\(method.kind.rawValue)(\(self.enumName).Method.\(method.name))"
                        let handler = "try await self.\(method.name)(\(arguments))"
                        let single = "\(opener) { \(handler) },"
                        if writer.fits(single) {
                            writer.line(single)
                        } else {
                            writer.block(opener, closerSuffix: ",") { writer in writer.line(handler) }
                        }
                    }
                }
                writer.line("]")
            }
        }
    }

    private func writeMethodComments(_ method: Method, into writer: inout SourceWriter) {
        let comments = method.descriptor.protoSourceCommentsWithDeprecation()
        if !comments.isEmpty {
            writer.comment(comments)
            writer.doc("")
        }
    }

    private func path(of method: Method) -> String {
        "/\(self.service.fullName)/\(method.descriptor.name)"
    }
}

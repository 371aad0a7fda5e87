import Foundation
import RPCCore
import SwiftProtobuf

/// Answers server-reflection questions from the descriptors of the served services.
///
/// Shared by the `v1` and `v1alpha` services, whose messages are identical but distinct types.
struct ReflectionIndex: Sendable {
    /// An answer, in terms both protocol versions can express.
    enum Answer {
        case files([Data])
        case services([String])
        case extensionNumbers(type: String, numbers: [Int32])
        case error(code: Status.Code, message: String)
    }

    private var files: [String: Google_Protobuf_FileDescriptorProto] = [:]
    private var serializedFiles: [String: Data] = [:]
    private var fileBySymbol: [String: String] = [:]
    private var serviceNames: [String] = []

    init(services: [any RPCService], extraDescriptors: [ServiceDescriptor]) {
        for descriptor in services.map(\.serviceDescriptor) + extraDescriptors {
            self.serviceNames.append(descriptor.fullName)
            for (name, bytes) in descriptor.fileDescriptors where self.files[name] == nil {
                guard let file = try? Google_Protobuf_FileDescriptorProto(serializedBytes: bytes) else { continue }
                self.files[name] = file
                self.serializedFiles[name] = Data(bytes)
                self.indexSymbols(of: file)
            }
        }
        self.serviceNames = Array(Set(self.serviceNames)).sorted()
    }

    private mutating func indexSymbols(of file: Google_Protobuf_FileDescriptorProto) {
        let prefix = file.package.isEmpty ? "" : file.package + "."
        func addMessages(_ messages: [Google_Protobuf_DescriptorProto], scope: String) {
            for message in messages {
                let name = scope + message.name
                self.fileBySymbol[name] = file.name
                for nested in message.enumType { self.fileBySymbol[name + "." + nested.name] = file.name }
                addMessages(message.nestedType, scope: name + ".")
            }
        }
        addMessages(file.messageType, scope: prefix)
        for enumType in file.enumType { self.fileBySymbol[prefix + enumType.name] = file.name }
        for service in file.service {
            self.fileBySymbol[prefix + service.name] = file.name
            for method in service.method { self.fileBySymbol[prefix + service.name + "." + method.name] = file.name }
        }
    }

    /// A file with every file it imports, transitively, the file itself first.
    private func fileWithDependencies(_ name: String) -> Answer {
        guard self.files[name] != nil else {
            return .error(code: .notFound, message: "File not found: \(name)")
        }
        var ordered: [String] = []
        var seen: Set<String> = []
        var pending = [name]
        while let next = pending.popLast() {
            guard seen.insert(next).inserted, let file = self.files[next] else { continue }
            ordered.append(next)
            pending.append(contentsOf: file.dependency.reversed())
        }
        return .files(ordered.compactMap { self.serializedFiles[$0] })
    }

    func fileByName(_ name: String) -> Answer { self.fileWithDependencies(name) }

    func fileContainingSymbol(_ symbol: String) -> Answer {
        let symbol = symbol.hasPrefix(".") ? String(symbol.dropFirst()) : symbol
        guard let file = self.fileBySymbol[symbol] else {
            return .error(code: .notFound, message: "Symbol not found: \(symbol)")
        }
        return self.fileWithDependencies(file)
    }

    func listServices() -> Answer { .services(self.serviceNames) }

    /// Extensions are not used by the project's protos: known types have none.
    func extensionNumbers(ofType type: String) -> Answer {
        guard self.fileBySymbol[type] != nil else {
            return .error(code: .notFound, message: "Type not found: \(type)")
        }
        return .extensionNumbers(type: type, numbers: [])
    }

    func fileContainingExtension(type: String, number: Int32) -> Answer {
        .error(code: .notFound, message: "Extension \(number) of \(type) not found.")
    }
}

/// Server reflection (`grpc.reflection.v1.ServerReflection` and the older `v1alpha`, which
/// grpcurl versions before 1.9 and grpcio's reflection client use), so tools can call the server
/// without proto files.
///
/// Put it in the server's service list, built with the same services (itself excluded).
public struct ReflectionService: RPCService {
    private let index: ReflectionIndex

    /// `v1alpha` has the same messages, field for field, as `v1`: one implementation serves both,
    /// with the `v1` types decoding and encoding `v1alpha` calls.
    private static let v1alphaInfo = RPCMethod<
        Grpc_Reflection_V1_ServerReflectionRequest, Grpc_Reflection_V1_ServerReflectionResponse
    >(service: "grpc.reflection.v1alpha.ServerReflection", method: "ServerReflectionInfo", kind: .bidirectional)

    /// Creates the service for the given served services.
    public init(services: [any RPCService]) {
        self.index = ReflectionIndex(
            services: services,
            extraDescriptors: [
                Grpc_Reflection_V1_ServerReflection.descriptor, Grpc_Reflection_V1alpha_ServerReflection.descriptor,
            ]
        )
    }

    public var serviceDescriptor: ServiceDescriptor { Grpc_Reflection_V1_ServerReflection.descriptor }

    public var methods: [ServerMethod] {
        let index = self.index
        let handler:
            @Sendable (
                RPCAsyncSequence<Grpc_Reflection_V1_ServerReflectionRequest>,
                RPCWriter<Grpc_Reflection_V1_ServerReflectionResponse>,
                ServerContext
            ) async throws -> Void = { requests, responses, _ in
                for try await request in requests { try await responses.write(index.respond(to: request)) }
            }
        return [
            .bidirectional(Grpc_Reflection_V1_ServerReflection.Method.serverReflectionInfo, handler: handler),
            .bidirectional(Self.v1alphaInfo, handler: handler),
        ]
    }
}

extension ReflectionIndex {
    /// Answers one reflection request.
    func respond(to request: Grpc_Reflection_V1_ServerReflectionRequest) -> Grpc_Reflection_V1_ServerReflectionResponse
    {
        var response = Grpc_Reflection_V1_ServerReflectionResponse()
        response.validHost = request.host
        response.originalRequest = request
        let answer: Answer =
            switch request.messageRequest {
            case .fileByFilename(let name): self.fileByName(name)
            case .fileContainingSymbol(let symbol): self.fileContainingSymbol(symbol)
            case .listServices: self.listServices()
            case .allExtensionNumbersOfType(let type): self.extensionNumbers(ofType: type)
            case .fileContainingExtension(let request):
                self.fileContainingExtension(type: request.containingType, number: request.extensionNumber)
            case nil: .error(code: .invalidArgument, message: "The request names no question.")
            }
        switch answer {
        case .files(let files):
            response.fileDescriptorResponse.fileDescriptorProto = files
        case .services(let names):
            response.listServicesResponse.service = names.map { name in
                var service = Grpc_Reflection_V1_ServiceResponse()
                service.name = name
                return service
            }
        case .extensionNumbers(let type, let numbers):
            response.allExtensionNumbersResponse.baseTypeName = type
            response.allExtensionNumbersResponse.extensionNumber = numbers
        case .error(let code, let message):
            response.errorResponse.errorCode = Int32(code.rawValue)
            response.errorResponse.errorMessage = message
        }
        return response
    }
}

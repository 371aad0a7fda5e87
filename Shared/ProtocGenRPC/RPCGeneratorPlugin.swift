import SwiftProtobuf
import SwiftProtobufPluginLibrary

/// `protoc-gen-cdp-rpc`: a protoc plugin that writes typed RPCCore stubs.
///
/// For every input `.proto` file that defines services it writes `<name>.rpc.swift` next to
/// protoc-gen-swift's `<name>.pb.swift`: per service an enum with the service's descriptor (including
/// the serialized `FileDescriptorProto`s for server reflection), one `RPCMethod` per method, a
/// `ServiceProtocol` to implement on the server and a typed `Client`.
///
/// Options (`--cdp-rpc_opt=Key=Value`, comma-separated), named as protoc-gen-swift names them:
/// - `Visibility=Internal|Public|Package`: the access level of the generated declarations.
/// - `FileNaming=FullPath|PathToUnderscores|DropPath`: how output files are named.
/// - `ProtoPathModuleMappings=<file>`: which Swift module each `.proto` file's types live in.
@main
struct RPCGeneratorPlugin: CodeGenerator {
    func generate(
        files: [FileDescriptor],
        parameter: any CodeGeneratorParameter,
        protoCompilerContext: any ProtoCompilerContext,
        generatorOutputs: any GeneratorOutputs
    ) throws {
        let options = try GeneratorOptions(parameter: parameter)
        for file in files where !file.services.isEmpty {
            do {
                let contents = try FileGenerator(file: file, options: options).generate()
                try generatorOutputs.add(fileName: options.outputFileName(for: file), contents: contents)
            } catch let error as GeneratorError where files.count > 1 {
                throw GeneratorError("\(file.name): \(error.description)")
            }
        }
    }

    var supportedFeatures: [Google_Protobuf_Compiler_CodeGeneratorResponse.Feature] {
        [.proto3Optional, .supportsEditions]
    }

    /// The plugin reads only names, method shapes and the raw descriptors, so it supports every
    /// edition the plugin library can parse.
    var supportedEditionRange: ClosedRange<Google_Protobuf_Edition> {
        DescriptorSet.bundledEditionsSupport
    }

    var version: String? { "1.0.0" }

    func printHelp() {
        print(
            """
            protoc-gen-cdp-rpc: writes typed RPCCore service stubs (<name>.rpc.swift) for protoc.

            This is a protoc plugin; run it through protoc, next to protoc-gen-swift:

              protoc --plugin=protoc-gen-cdp-rpc=<path> --cdp-rpc_out=<dir> \\
                     --cdp-rpc_opt=Visibility=Public <files>

            Options (--cdp-rpc_opt, comma-separated):
              Visibility=Internal|Public|Package           access level of the generated code
              FileNaming=FullPath|PathToUnderscores|DropPath   output file naming
              ProtoPathModuleMappings=<file>               .proto file to Swift module mappings

            In this repository, proto/generate.sh runs it.
            """
        )
    }
}

/// A generation failure, reported by protoc as `--cdp-rpc_out: <description>`.
struct GeneratorError: Error, CustomStringConvertible {
    let description: String

    init(_ description: String) { self.description = description }
}

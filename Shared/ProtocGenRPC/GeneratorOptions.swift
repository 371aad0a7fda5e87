import SwiftProtobufPluginLibrary

/// The plugin's options, parsed from protoc's parameter string. Names and values follow
/// protoc-gen-swift, so both plugins can be given the same options.
struct GeneratorOptions {
    /// The access level of generated declarations.
    enum Visibility: String {
        case `internal`
        case `public`
        case `package`
    }

    /// How an output file is named after its `.proto` file.
    enum FileNaming {
        /// `a/b/c.proto` → `a/b/c.rpc.swift`.
        case fullPath
        /// `a/b/c.proto` → `a_b_c.rpc.swift`.
        case pathToUnderscores
        /// `a/b/c.proto` → `c.rpc.swift`.
        case dropPath
    }

    var visibility: Visibility = .internal
    var fileNaming: FileNaming = .fullPath
    var moduleMappings: ProtoFileToModuleMappings

    init(parameter: any CodeGeneratorParameter) throws {
        var mappingsPath: String?
        for (key, value) in parameter.parsedPairs {
            switch key {
            case "Visibility":
                guard let visibility = Visibility(rawValue: value.lowercased()) else {
                    throw GeneratorError("Unknown value \(value) for Visibility; use Internal, Public or Package.")
                }
                self.visibility = visibility
            case "FileNaming":
                switch value.lowercased() {
                case "fullpath", "full_path": self.fileNaming = .fullPath
                case "pathtounderscores", "path_to_underscores": self.fileNaming = .pathToUnderscores
                case "droppath", "drop_path": self.fileNaming = .dropPath
                default:
                    throw GeneratorError(
                        "Unknown value \(value) for FileNaming; use FullPath, PathToUnderscores or DropPath."
                    )
                }
            case "ProtoPathModuleMappings":
                mappingsPath = value.isEmpty ? nil : value
            default:
                throw GeneratorError(
                    "Unknown option \(key); supported: Visibility, FileNaming, ProtoPathModuleMappings."
                )
            }
        }
        if let mappingsPath {
            do {
                self.moduleMappings = try ProtoFileToModuleMappings(path: mappingsPath)
            } catch {
                throw GeneratorError("Cannot read ProtoPathModuleMappings=\(mappingsPath): \(error)")
            }
        } else {
            self.moduleMappings = ProtoFileToModuleMappings()
        }
    }

    /// The access modifier with a trailing space, or nothing for internal.
    var accessModifier: String {
        switch self.visibility {
        case .internal: ""
        case .public: "public "
        case .package: "package "
        }
    }

    /// The output file for `file`, named like protoc-gen-swift names its `.pb.swift` file.
    func outputFileName(for file: FileDescriptor) -> String {
        let name = file.name
        let slash = name.lastIndex(of: "/")
        let directory = slash.map { String(name[...$0]) } ?? ""
        var base = slash.map { String(name[name.index(after: $0)...]) } ?? name
        if let dot = base.lastIndex(of: ".") { base = String(base[..<dot]) }
        let fileName = base + ".rpc.swift"
        switch self.fileNaming {
        case .fullPath: return directory + fileName
        case .pathToUnderscores: return String(directory.map { $0 == "/" ? "_" : $0 }) + fileName
        case .dropPath: return fileName
        }
    }
}

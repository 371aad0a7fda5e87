/// Swift spelling helpers for generated identifiers and literals.
enum SwiftNames {
    /// Words that need backticks to be used as a declared identifier.
    static let reservedWords: Set<String> = [
        // Declarations.
        "associatedtype", "class", "deinit", "enum", "extension", "fileprivate", "func", "import", "init",
        "inout", "internal", "let", "open", "operator", "private", "precedencegroup", "protocol", "public",
        "rethrows", "static", "struct", "subscript", "typealias", "var",
        // Statements.
        "break", "case", "catch", "continue", "default", "defer", "do", "else", "fallthrough", "for", "guard",
        "if", "in", "repeat", "return", "throw", "switch", "where", "while",
        // Expressions and types.
        "Any", "as", "await", "false", "is", "nil", "self", "Self", "super", "throws", "true", "try",
        "Protocol", "Type",
    ]

    /// `name`, backticked when it is a reserved word.
    static func identifier(_ name: String) -> String {
        self.reservedWords.contains(name) ? "`\(name)`" : name
    }

    /// A Swift string literal for `text` (proto names are ASCII identifiers and paths, but escape
    /// anyway).
    static func stringLiteral(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case " "..."~": result.unicodeScalars.append(scalar)
            default: result += "\\u{\(String(scalar.value, radix: 16))}"
            }
        }
        return result + "\""
    }

    /// A file-scope constant name for a proto file's descriptor bytes, e.g.
    /// `fileDescriptor_grpc_testing_messages_proto`.
    static func descriptorConstant(forFile fileName: String) -> String {
        let sanitized = fileName.unicodeScalars.map { scalar -> String in
            switch scalar {
            case "a"..."z", "A"..."Z", "0"..."9": String(scalar)
            default: "_"
            }
        }
        return "fileDescriptor_" + sanitized.joined()
    }
}

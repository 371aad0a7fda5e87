/// Builds Swift source line by line, with 4-space indentation and lines kept within 120 characters
/// where a call or signature can be broken up (one argument per line, as swift-format does).
struct SourceWriter {
    static let indentUnit = "    "
    static let lineLimit = 120

    private(set) var text = ""
    private var level = 0

    private var indentation: String { String(repeating: Self.indentUnit, count: self.level) }

    /// Appends one line at the current indentation; an empty string appends a blank line. Content
    /// with line breaks appends several lines, each indented.
    mutating func line(_ content: String = "") {
        for line in content.split(separator: "\n", omittingEmptySubsequences: false) {
            self.text += line.isEmpty ? "\n" : self.indentation + line + "\n"
        }
    }

    /// Runs `body` one level further in.
    mutating func indented(_ body: (inout SourceWriter) throws -> Void) rethrows {
        self.level += 1
        defer { self.level -= 1 }
        try body(&self)
    }

    /// Appends `opener {`, the body one level in, and `}` with `closerSuffix`.
    mutating func block(
        _ opener: String,
        closerSuffix: String = "",
        _ body: (inout SourceWriter) throws -> Void
    )
        rethrows
    {
        self.line(opener + " {")
        try self.indented(body)
        self.line("}" + closerSuffix)
    }

    /// Whether `content` fits on one line at the current indentation.
    func fits(_ content: String) -> Bool {
        self.indentation.count + content.count <= Self.lineLimit
    }

    /// Appends `head(arguments)tail` on one line when it fits, else with one argument per line.
    mutating func call(_ head: String, _ arguments: [String], _ tail: String = "") {
        let single = head + "(" + arguments.joined(separator: ", ") + ")" + tail
        if arguments.isEmpty || (self.fits(single) && !single.contains("\n")) {
            self.line(single)
            return
        }
        self.line(head + "(")
        self.indented { writer in
            for (index, argument) in arguments.enumerated() {
                writer.line(argument + (index == arguments.count - 1 ? "" : ","))
            }
        }
        self.line(")" + tail)
    }

    /// Like ``call(_:_:_:)`` with a body: `head(arguments)tail {`, the body, `}`.
    mutating func function(
        _ head: String,
        _ arguments: [String],
        _ tail: String,
        _ body: (inout SourceWriter) throws -> Void
    ) rethrows {
        self.call(head, arguments, tail + " {")
        try self.indented(body)
        self.line("}")
    }

    /// Appends a comment that is already prefixed (`/// text\n` lines), as the plugin library returns
    /// proto comments.
    mutating func comment(_ prefixedLines: String) {
        var lines = prefixedLines.split(separator: "\n", omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }
        for line in lines {
            self.line(Self.trimmingTrailingSpaces(String(line)))
        }
    }

    /// Appends documentation paragraphs as `///` lines, wrapped to fit the line limit; an empty
    /// paragraph appends a blank `///` line. Code spans (`` `...` ``) are never broken.
    mutating func doc(_ paragraphs: String...) {
        let width = Self.lineLimit - self.indentation.count - 4
        for paragraph in paragraphs {
            if paragraph.isEmpty {
                self.line("///")
                continue
            }
            var current = ""
            for word in Self.words(paragraph) {
                if !current.isEmpty, current.count + 1 + word.count > width {
                    self.line("/// " + current)
                    current = ""
                }
                current += current.isEmpty ? word : " " + word
            }
            if !current.isEmpty { self.line("/// " + current) }
        }
    }

    /// Splits text at spaces outside code spans.
    private static func words(_ text: String) -> [String] {
        var words: [String] = []
        var current = ""
        var inCode = false
        for character in text {
            if character == "`" { inCode.toggle() }
            if character == " ", !inCode {
                if !current.isEmpty { words.append(current) }
                current = ""
            } else {
                current.append(character)
            }
        }
        if !current.isEmpty { words.append(current) }
        return words
    }

    private static func trimmingTrailingSpaces(_ line: String) -> String {
        var line = Substring(line)
        while let last = line.last, last == " " || last == "\t" { line = line.dropLast() }
        return String(line)
    }
}

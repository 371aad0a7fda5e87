/// A token of a definition.
struct Token: Hashable {
    enum Kind: Hashable {
        case identifier(String)
        case number(Double)
        case string(String)
        case symbol(String)
        case end
    }

    var kind: Kind
    var position: SourcePosition

    /// How an error message names it.
    var description: String {
        switch kind {
        case .identifier(let name): "'\(name)'"
        case .number(let value):
            value == value.rounded() && abs(value) < 1e15 ? "the number \(Int(value))" : "the number \(value)"
        case .string(let text): "the string \"\(text)\""
        case .symbol(let symbol): "'\(symbol)'"
        case .end: "the end of the definition"
        }
    }
}

/// Splits a definition into tokens: identifiers, numbers (a leading `-` for negative ones), double-quoted strings (with `\"` and `\\`
/// escapes), and the symbols `( ) [ ] , . = != < <= > >=`.
enum Lexer {
    static func tokens(_ text: String) throws(SyntaxError) -> [Token] {
        var tokens: [Token] = []
        let characters = Array(text)
        var index = 0
        var line = 1
        var column = 1
        func advance() {
            if characters[index] == "\n" {
                line += 1
                column = 1
            } else {
                column += 1
            }
            index += 1
        }
        while index < characters.count {
            let character = characters[index]
            let position = SourcePosition(line: line, column: column)
            if character.isWhitespace {
                advance()
            } else if character.isLetter || character == "_" {
                var name = ""
                while index < characters.count,
                    characters[index].isLetter || characters[index].isNumber || characters[index] == "_"
                {
                    name.append(characters[index])
                    advance()
                }
                tokens.append(Token(kind: .identifier(name), position: position))
            } else if character.isNumber
                || (character == "-" && index + 1 < characters.count && characters[index + 1].isNumber)
            {
                // A minus sign directly before a digit makes a negative number (there is no arithmetic).
                var digits = ""
                if character == "-" {
                    digits.append("-")
                    advance()
                }
                while index < characters.count, characters[index].isNumber || characters[index] == "." {
                    // A dot followed by a letter is a member access, not a decimal point.
                    if characters[index] == ".", index + 1 < characters.count, !characters[index + 1].isNumber { break }
                    digits.append(characters[index])
                    advance()
                }
                guard let value = Double(digits) else {
                    throw SyntaxError(position: position, expected: "a number", found: "'\(digits)'")
                }
                tokens.append(Token(kind: .number(value), position: position))
            } else if character == "\"" {
                advance()
                var text = ""
                while true {
                    guard index < characters.count else {
                        throw SyntaxError(
                            position: position,
                            expected: "a closing '\"' for this string",
                            found: "the end of the definition"
                        )
                    }
                    let next = characters[index]
                    advance()
                    if next == "\"" { break }
                    if next == "\\", index < characters.count {
                        text.append(characters[index])
                        advance()
                    } else {
                        text.append(next)
                    }
                }
                tokens.append(Token(kind: .string(text), position: position))
            } else {
                let pair = index + 1 < characters.count ? String([character, characters[index + 1]]) : ""
                if ["!=", "<=", ">="].contains(pair) {
                    advance()
                    advance()
                    tokens.append(Token(kind: .symbol(pair), position: position))
                } else if "()[],.=<>".contains(character) {
                    advance()
                    tokens.append(Token(kind: .symbol(String(character)), position: position))
                } else {
                    throw SyntaxError(
                        position: position,
                        expected: "a name, a number, a string or an operator",
                        found: "'\(character)'"
                    )
                }
            }
        }
        tokens.append(Token(kind: .end, position: SourcePosition(line: line, column: column)))
        return tokens
    }
}

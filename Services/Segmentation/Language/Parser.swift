/// Parses a segment definition in the PQL dialect of ARCHITECTURE.md §5 into an ``Expression``.
///
/// Precedence, loosest first: `or`, `and`, `not`, then a comparison, `in [...]` or `occurs …` on a
/// value. Values are literals, parenthesized expressions, `exists`/`forall … from … where …`,
/// aggregates (`sum X.f over X from coll where cond`), calls (`date(2026,1,1)`, `inSegment("id")`) and
/// paths (`person.accounts.opportunities`, `coll[cond]`, `name.contains("x", false)`, `coll.count()`).
public enum Parser {
    /// The words that cannot name a field or variable.
    static let keywords: Set<String> = [
        "and", "or", "not", "in", "occurs", "before", "now", "between", "last", "exists", "forall", "from",
        "where", "over", "true", "false", "null",
    ]

    /// The syntax tree of `text`.
    ///
    /// - Throws: ``SyntaxError`` with the line and column, what was expected and what was found.
    public static func parse(_ text: String) throws(SyntaxError) -> Expression {
        var parser = State(tokens: try Lexer.tokens(text))
        let expression = try parser.expression()
        guard case .end = parser.current.kind else {
            throw parser.error(expected: "'and', 'or' or the end of the definition")
        }
        return expression
    }

    struct State {
        let tokens: [Token]
        var index = 0

        var current: Token { tokens[index] }

        mutating func advance() { if index < tokens.count - 1 { index += 1 } }

        func error(expected: String) -> SyntaxError {
            SyntaxError(position: current.position, expected: expected, found: current.description)
        }

        func isWord(_ word: String) -> Bool { current.kind == .identifier(word) }
        func isSymbol(_ symbol: String) -> Bool { current.kind == .symbol(symbol) }

        mutating func expect(word: String, _ context: String) throws(SyntaxError) {
            guard isWord(word) else { throw error(expected: "'\(word)' \(context)") }
            advance()
        }

        mutating func expect(symbol: String, _ context: String) throws(SyntaxError) {
            guard isSymbol(symbol) else { throw error(expected: "'\(symbol)' \(context)") }
            advance()
        }

        mutating func name(_ context: String) throws(SyntaxError) -> String {
            guard case .identifier(let name) = current.kind, !Parser.keywords.contains(name) else {
                throw error(expected: "a name \(context)")
            }
            advance()
            return name
        }

        mutating func expression() throws(SyntaxError) -> Expression {
            var left = try conjunction()
            while isWord("or") {
                let position = current.position
                advance()
                left = .or(left, try conjunction(), position)
            }
            return left
        }

        mutating func conjunction() throws(SyntaxError) -> Expression {
            var left = try negation()
            while isWord("and") {
                let position = current.position
                advance()
                left = .and(left, try negation(), position)
            }
            return left
        }

        mutating func negation() throws(SyntaxError) -> Expression {
            guard isWord("not") else { return try condition() }
            let position = current.position
            advance()
            return .not(try negation(), position)
        }

        mutating func condition() throws(SyntaxError) -> Expression {
            let left = try value()
            let position = current.position
            if case .symbol(let symbol) = current.kind, let comparison = Comparison(rawValue: symbol) {
                advance()
                return .compare(left, comparison, try value(), position)
            }
            if isWord("in") {
                advance()
                try expect(symbol: "[", "to open the list after 'in'")
                var elements = [try value()]
                while isSymbol(",") {
                    advance()
                    elements.append(try value())
                }
                try expect(symbol: "]", "to close the list after 'in'")
                return .isIn(left, elements, position)
            }
            if isWord("occurs") {
                advance()
                return .occurs(left, try timeCondition(), position)
            }
            return left
        }

        mutating func timeCondition() throws(SyntaxError) -> TimeCondition {
            if isSymbol("<=") {
                advance()
                guard case .number(let count) = current.kind, count >= 0, count == count.rounded(), count <= 100_000
                else {
                    throw error(
                        expected: "a whole number of days, weeks, months or years (at most 100000) after 'occurs <='"
                    )
                }
                advance()
                guard case .identifier(let word) = current.kind, let unit = Self.unit(word) else {
                    throw error(expected: "'days', 'weeks', 'months' or 'years'")
                }
                advance()
                try expect(word: "before", "after the duration (occurs <= N units before now)")
                try expect(word: "now", "after 'before'")
                return .withinLast(Int(count), unit)
            }
            if isWord("between") {
                advance()
                let from = try value()
                try expect(word: "and", "between the two ends of 'occurs between'")
                return .between(from, try value())
            }
            if isWord("last") {
                advance()
                guard case .identifier(let word) = current.kind, let unit = Self.unit(word) else {
                    throw error(expected: "'day', 'week', 'month' or 'year' after 'occurs last'")
                }
                advance()
                return .last(unit)
            }
            throw error(expected: "'<=', 'between' or 'last' after 'occurs'")
        }

        static func unit(_ word: String) -> TimeUnit? {
            switch word {
            case "day", "days": .days
            case "week", "weeks": .weeks
            case "month", "months": .months
            case "year", "years": .years
            default: nil
            }
        }

        mutating func value() throws(SyntaxError) -> Expression {
            let position = current.position
            switch current.kind {
            case .number(let number):
                advance()
                return .number(number, position)
            case .string(let text):
                advance()
                return .string(text, position)
            case .symbol("("):
                advance()
                let inner = try expression()
                try expect(symbol: ")", "to close the parenthesis")
                return try postfix(inner)
            case .identifier("true"), .identifier("false"):
                let truth = isWord("true")
                advance()
                return .boolean(truth, position)
            case .identifier("null"):
                advance()
                return .null(position)
            case .identifier("exists"), .identifier("forall"):
                let isExists = isWord("exists")
                advance()
                let variable = try name("for the variable after '\(isExists ? "exists" : "forall")'")
                try expect(word: "from", "after the variable \(variable)")
                let collection = try path()
                try expect(word: "where", "after the collection of \(variable)")
                let condition = try negation()
                return isExists
                    ? .exists(variable, collection, condition, position)
                    : .forall(variable, collection, condition, position)
            case .identifier(let word) where Aggregate(rawValue: word) != nil && tokens[index + 1].kind != .symbol("("):
                advance()
                let measured = try path()
                try expect(word: "over", "after the value of '\(word)'")
                let variable = try name("for the variable after 'over'")
                try expect(word: "from", "after the variable \(variable)")
                let collection = try path()
                var condition: Expression?
                if isWord("where") {
                    advance()
                    condition = try negation()
                }
                return .aggregate(Aggregate(rawValue: word)!, measured, variable, collection, condition, position)
            case .identifier(let word) where !Parser.keywords.contains(word):
                return try path()
            default:
                throw error(expected: "a value: a name, a number, a string, true, false, null or '('")
            }
        }

        /// A name or a call, then members, filters and method calls.
        mutating func path() throws(SyntaxError) -> Expression {
            let position = current.position
            let first = try name("to start a value")
            if isSymbol("(") { return try postfix(.call(first, try arguments(), position)) }
            return try postfix(.name(first, position))
        }

        mutating func arguments() throws(SyntaxError) -> [Expression] {
            try expect(symbol: "(", "to open the arguments")
            var arguments: [Expression] = []
            if !isSymbol(")") {
                arguments.append(try expression())
                while isSymbol(",") {
                    advance()
                    arguments.append(try expression())
                }
            }
            try expect(symbol: ")", "to close the arguments")
            return arguments
        }

        mutating func postfix(_ base: Expression) throws(SyntaxError) -> Expression {
            var result = base
            while true {
                let position = current.position
                if isSymbol(".") {
                    advance()
                    let field = try name("after '.'")
                    if isSymbol("(") {
                        result = .call(field, [result] + (try arguments()), position)
                    } else {
                        result = .member(result, field, position)
                    }
                } else if isSymbol("[") {
                    advance()
                    let condition = try expression()
                    try expect(symbol: "]", "to close the filter")
                    result = .filter(result, condition, position)
                } else {
                    return result
                }
            }
        }
    }
}

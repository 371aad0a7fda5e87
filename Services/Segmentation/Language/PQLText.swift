/// Renders a syntax tree back to PQL: the text explanations quote, with normalized spacing.
public enum PQLText {
    /// The PQL text of `expression`.
    public static func render(_ expression: Expression) -> String {
        switch expression {
        case .number(let value, _):
            return value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
        case .string(let text, _):
            return "\"" + text.replacing("\\", with: "\\\\").replacing("\"", with: "\\\"")
                + "\""
        case .boolean(let value, _): return String(value)
        case .null: return "null"
        case .name(let name, _): return name
        case .member(let base, let field, _): return render(base) + "." + field
        case .filter(let base, let condition, _): return render(base) + "[" + render(condition) + "]"
        case .call(let function, let arguments, _):
            if ["date", "inSegment"].contains(function) || arguments.isEmpty {
                return function + "(" + arguments.map(render).joined(separator: ", ") + ")"
            }
            return render(arguments[0]) + "." + function + "("
                + arguments.dropFirst().map(render).joined(separator: ", ")
                + ")"
        case .not(let inner, _): return "not " + grouped(inner)
        case .and(let left, let right, _): return grouped(left, unless: .and) + " and " + grouped(right, unless: .and)
        case .or(let left, let right, _): return grouped(left, unless: .or) + " or " + grouped(right, unless: .or)
        case .compare(let left, let comparison, let right, _):
            return operand(left) + " " + comparison.rawValue + " " + operand(right)
        case .isIn(let value, let list, _):
            return render(value) + " in [" + list.map(render).joined(separator: ", ") + "]"
        case .occurs(let value, let condition, _):
            let time: String
            switch condition {
            case .withinLast(let count, let unit): time = "<= \(count) \(unit.rawValue) before now"
            case .between(let from, let to): time = "between " + render(from) + " and " + render(to)
            case .last(let unit): time = "last " + String(unit.rawValue.dropLast())
            }
            return render(value) + " occurs " + time
        case .exists(let variable, let collection, let condition, _):
            return "exists \(variable) from " + render(collection) + " where " + grouped(condition)
        case .forall(let variable, let collection, let condition, _):
            return "forall \(variable) from " + render(collection) + " where " + grouped(condition)
        case .aggregate(let function, let value, let variable, let collection, let condition, _):
            return function.rawValue + " " + render(value) + " over \(variable) from " + render(collection)
                + (condition.map { " where " + grouped($0) } ?? "")
        }
    }

    private enum Connective { case and, or }

    /// Parenthesized where the parser would otherwise read it differently: a connective inside another
    /// (or in a `where`), a quantifier or aggregate followed by more; comparisons bind tighter than
    /// `and` and `or` and need none.
    private static func grouped(_ expression: Expression, unless connective: Connective? = nil) -> String {
        switch expression {
        case .and where connective == .and, .or where connective == .or: return render(expression)
        case .and, .or, .exists, .forall, .aggregate: return "(" + render(expression) + ")"
        default: return render(expression)
        }
    }

    /// A side of a comparison: an aggregate or quantifier there needs parentheses, or its `where` would
    /// take the comparison.
    private static func operand(_ expression: Expression) -> String {
        switch expression {
        case .aggregate, .exists, .forall, .and, .or, .not: "(" + render(expression) + ")"
        default: render(expression)
        }
    }
}

/// A place in a segment definition: 1-based line and column.
public struct SourcePosition: Hashable, Sendable, CustomStringConvertible {
    /// The line, from 1.
    public var line: Int
    /// The column, from 1, in characters.
    public var column: Int

    /// Creates a position.
    public init(line: Int, column: Int) {
        self.line = line
        self.column = column
    }

    public var description: String { "line \(line), column \(column)" }
}

/// A definition that does not parse: where, what was expected, what was found.
public struct SyntaxError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Where.
    public var position: SourcePosition
    /// What the parser expected, e.g. `'from'`.
    public var expected: String
    /// What it found, e.g. `'in'` or `the end of the definition`.
    public var found: String

    /// Creates an error.
    public init(position: SourcePosition, expected: String, found: String) {
        self.position = position
        self.expected = expected
        self.found = found
    }

    public var description: String { "\(position): expected \(expected), found \(found)" }
}

/// Time units of `occurs <= N units before now`.
public enum TimeUnit: String, Sendable, Hashable {
    case days, weeks, months, years
}

/// A time condition on a timestamp: `occurs …`.
public indirect enum TimeCondition: Hashable, Sendable {
    /// `occurs <= N units before now` (within the last N units before the evaluation's asOf).
    case withinLast(Int, TimeUnit)
    /// `occurs between A and B`.
    case between(Expression, Expression)
    /// `occurs last day|week|month`: within the previous calendar period before asOf.
    case last(TimeUnit)
}

/// An aggregate function.
public enum Aggregate: String, Sendable, Hashable {
    case sum, avg, min, max
}

/// A comparison operator.
public enum Comparison: String, Sendable, Hashable {
    case equal = "="
    case notEqual = "!="
    case less = "<"
    case lessOrEqual = "<="
    case greater = ">"
    case greaterOrEqual = ">="
}

/// The syntax tree of a definition. Each node keeps the position where it starts.
public indirect enum Expression: Hashable, Sendable {
    case number(Double, SourcePosition)
    case string(String, SourcePosition)
    case boolean(Bool, SourcePosition)
    case null(SourcePosition)
    /// A name: a root (`person`, `account`, `xEvent`) or a variable bound by `exists`/`over`.
    case name(String, SourcePosition)
    /// `base.field`.
    case member(Expression, String, SourcePosition)
    /// `base[condition]`: the elements of a collection for which the condition holds.
    case filter(Expression, Expression, SourcePosition)
    /// `function(arguments)` or `base.method(arguments)` (the base then is the first argument).
    case call(String, [Expression], SourcePosition)
    case not(Expression, SourcePosition)
    case and(Expression, Expression, SourcePosition)
    case or(Expression, Expression, SourcePosition)
    case compare(Expression, Comparison, Expression, SourcePosition)
    /// `value in [a, b, …]`.
    case isIn(Expression, [Expression], SourcePosition)
    /// `timestamp occurs …`.
    case occurs(Expression, TimeCondition, SourcePosition)
    /// `exists V from collection where condition`.
    case exists(String, Expression, Expression, SourcePosition)
    /// `forall V from collection where condition`.
    case forall(String, Expression, Expression, SourcePosition)
    /// `sum V.field over V from collection where condition` (the condition may be absent).
    case aggregate(Aggregate, Expression, String, Expression, Expression?, SourcePosition)

    /// Where the whole value starts: for `base.field`, `base[…]` and `base.method(…)` the start of the
    /// base (``position`` is then the `.` or `[`).
    public var start: SourcePosition {
        switch self {
        case .member(let base, _, _), .filter(let base, _, _): return base.start
        case .call(_, let arguments, let position):
            guard let first = arguments.first?.start else { return position }
            return (first.line, first.column) < (position.line, position.column) ? first : position
        default: return position
        }
    }

    /// Where the node starts.
    public var position: SourcePosition {
        switch self {
        case .number(_, let p), .string(_, let p), .boolean(_, let p), .null(let p), .name(_, let p),
            .member(_, _, let p), .filter(_, _, let p), .call(_, _, let p), .not(_, let p), .and(_, _, let p),
            .or(_, _, let p), .compare(_, _, _, let p), .isIn(_, _, let p), .occurs(_, _, let p),
            .exists(_, _, _, let p), .forall(_, _, _, let p), .aggregate(_, _, _, _, _, let p):
            p
        }
    }
}

/// A definition that cannot be used: where, and why.
public struct DefinitionError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Where the problem starts.
    public var position: SourcePosition
    /// What is wrong, e.g. `expected 'from' after the variable E, found 'in'` or
    /// `account has no field 'revenue'; its fields are …`.
    public var message: String

    /// Creates an error.
    public init(position: SourcePosition, message: String) {
        self.position = position
        self.message = message
    }

    /// A syntax error as a definition error.
    public init(_ error: SyntaxError) {
        self.init(position: error.position, message: "expected \(error.expected), found \(error.found)")
    }

    public var description: String { "\(position): \(message)" }
}

/// A constant value.
public enum Literal: Hashable, Sendable {
    case number(Double)
    case string(String)
    case boolean(Bool)
    /// Seconds since 1970-01-01T00:00:00Z.
    case time(Double)
    case null
}

/// A checked time condition: dates are constants.
public enum CheckedTimeCondition: Hashable, Sendable {
    /// Within the last N units before the evaluation's asOf (and not after it).
    case withinLast(Int, TimeUnit)
    /// From the first time (inclusive) to the second (exclusive), in seconds since 1970.
    case between(Double, Double)
    /// Within the calendar period (UTC; weeks start on Monday) before the one holding asOf.
    case last(TimeUnit)
}

/// The string tests, after Adobe's PQL: each takes an optional case-sensitivity flag (default true).
public enum StringFunction: String, Hashable, Sendable, CaseIterable {
    case contains, doesNotContain, startsWith, doesNotStartWith, endsWith, doesNotEndWith, equals, notEqualTo
}

/// A checked node: what it computes, its type, and where it came from.
public final class Node: Sendable {
    /// What the node computes.
    public let kind: NodeKind
    /// Its type.
    public let type: ValueType
    /// Where it is in the definition: its start, or for an operator (a comparison, `in`, `occurs`, a
    /// `.field` or `.method(…)`), the operator.
    public let position: SourcePosition
    /// Its PQL text, for explanations.
    public let text: String

    init(_ kind: NodeKind, _ type: ValueType, _ source: Expression) {
        self.kind = kind
        self.type = type
        self.position = source.position
        self.text = PQLText.render(source)
    }
}

/// The operations of a checked definition. Variables are numbered slots.
public indirect enum NodeKind: Sendable {
    case literal(Literal)
    /// The audience's root entity: `person` or `account`.
    case root(EntityKind)
    /// `xEvent`: the person's events.
    case events
    /// The entity bound to a slot by `exists`, `forall`, `over` or a filter.
    case variable(Int)
    /// A scalar or entity field of an entity.
    case field(Node, EntityKind, String)
    /// A collection field of an entity.
    case relation(Node, EntityKind, String)
    /// A collection field of each entity of a collection, joined and de-duplicated.
    case flatten(Node, EntityKind, String)
    /// The elements of a collection (bound to the slot) for which the condition holds.
    case filter(Node, slot: Int, Node)
    case count(Node)
    /// `function value over slot from collection where condition`.
    case aggregate(Aggregate, value: Node, slot: Int, collection: Node, condition: Node?)
    case exists(slot: Int, collection: Node, condition: Node)
    case forall(slot: Int, collection: Node, condition: Node)
    case not(Node)
    case and(Node, Node)
    case or(Node, Node)
    case compare(Node, Comparison, Node)
    case isIn(Node, [Literal])
    case occurs(Node, CheckedTimeCondition)
    case text(StringFunction, Node, Node, caseSensitive: Bool)
    case inSegment(String)
}

/// A checked definition, ready to compile.
public struct Definition: Sendable {
    /// Its text.
    public let text: String
    /// Its audience.
    public let audience: Audience
    /// The boolean condition.
    public let root: Node
    /// How many variable slots evaluation needs.
    public let slots: Int
    /// The segments it names with `inSegment`.
    public let segmentReferences: Set<String>
    /// Whether the result can change with the passing of time alone (`occurs <=` or `occurs last`).
    public let dependsOnTime: Bool

    /// Parses and checks `text` for `audience`.
    ///
    /// - Parameter segments: The audience of each segment `inSegment` may name; nil for unknown ids.
    /// - Throws: ``DefinitionError`` naming the line, column and problem.
    public init(
        _ text: String,
        audience: Audience,
        segments: @escaping (String) -> Audience? = { _ in nil }
    ) throws(DefinitionError) {
        let expression: Expression
        do {
            expression = try Parser.parse(text)
        } catch {
            throw DefinitionError(error)
        }
        var checker = Checker(audience: audience, segments: segments)
        let root = try checker.check(expression)
        guard root.type == .boolean else {
            throw DefinitionError(
                position: expression.start,
                message: "a definition must be a condition (true or false), but this is \(root.type)"
            )
        }
        self.text = text
        self.audience = audience
        self.root = root
        self.slots = checker.slotCount
        self.segmentReferences = checker.segmentReferences
        self.dependsOnTime = checker.dependsOnTime
    }
}

/// Types a syntax tree against the view ``Schema``: every name resolves, every field exists in the
/// audience, every operator gets the types it takes. What passes cannot fail at evaluation.
struct Checker {
    let audience: Audience
    let segments: (String) -> Audience?
    /// Variables in scope, innermost last: name, slot, kind.
    var scope: [(name: String, slot: Int, kind: EntityKind)] = []
    /// The element of the innermost filter, whose fields can be named bare.
    var filterElements: [(slot: Int, kind: EntityKind)] = []
    var slotCount = 0
    var segmentReferences: Set<String> = []
    var dependsOnTime = false

    init(audience: Audience, segments: @escaping (String) -> Audience?) {
        self.audience = audience
        self.segments = segments
    }

    /// Variables whose quantifier has ended, for a hint when one is named outside it.
    var endedVariables: Set<String> = []

    /// An error about a whole value, at its start.
    func error(_ expression: Expression, _ message: String) -> DefinitionError {
        DefinitionError(position: expression.start, message: message)
    }

    /// An error about a field, at its '.'.
    func fieldError(_ expression: Expression, _ message: String) -> DefinitionError {
        DefinitionError(position: expression.position, message: message)
    }

    mutating func check(_ expression: Expression) throws(DefinitionError) -> Node {
        switch expression {
        case .number(let value, _): return Node(.literal(.number(value)), .number, expression)
        case .string(let value, _): return Node(.literal(.string(value)), .string, expression)
        case .boolean(let value, _): return Node(.literal(.boolean(value)), .boolean, expression)
        case .null: return Node(.literal(.null), .null, expression)
        case .name(let name, _): return try resolve(name, expression)
        case .member(let base, let field, _): return try member(try check(base), field, expression)
        case .filter(let base, let filterCondition, _):
            let collection = try check(base)
            guard case .collection(let kind) = collection.type else {
                throw error(
                    expression,
                    "only a collection can be filtered with [...], but \(collection.text) is \(collection.type)"
                )
            }
            let slot = allocateSlot()
            filterElements.append((slot, kind))
            let checked = try condition(filterCondition)
            filterElements.removeLast()
            return Node(.filter(collection, slot: slot, checked), collection.type, expression)
        case .call(let function, let arguments, _): return try call(function, arguments, expression)
        case .not(let inner, _): return Node(.not(try condition(inner)), .boolean, expression)
        case .and(let left, let right, _):
            return Node(.and(try condition(left), try condition(right)), .boolean, expression)
        case .or(let left, let right, _):
            return Node(.or(try condition(left), try condition(right)), .boolean, expression)
        case .compare(let left, let comparison, let right, _):
            return try compare(try check(left), comparison, try check(right), expression)
        case .isIn(let value, let list, _):
            let checked = try scalar(value, "'in'")
            var literals: [Literal] = []
            for element in list {
                let literal = try check(element)
                guard case .literal(let constant) = literal.kind else {
                    throw error(element, "the list after 'in' holds constants, but \(literal.text) is not one")
                }
                guard literal.type == checked.type || literal.type == .null else {
                    throw error(element, "\(checked.text) is \(checked.type), but \(literal.text) is \(literal.type)")
                }
                literals.append(constant)
            }
            return Node(.isIn(checked, literals), .boolean, expression)
        case .occurs(let value, let condition, _):
            let time = try check(value)
            guard time.type == .time else {
                throw error(value, "'occurs' takes a timestamp, but \(time.text) is \(time.type)")
            }
            return Node(.occurs(time, try timeCondition(condition)), .boolean, expression)
        case .exists(let variable, let collection, let condition, _),
            .forall(let variable, let collection, let condition, _):
            let checkedCollection = try collectionOf(collection, "'\(expression.isExists ? "exists" : "forall")'")
            let (slot, checkedCondition) = try binding(variable, checkedCollection) { checker throws(DefinitionError) in
                try checker.condition(condition)
            }
            let kind: NodeKind =
                expression.isExists
                ? .exists(slot: slot, collection: checkedCollection, condition: checkedCondition)
                : .forall(slot: slot, collection: checkedCollection, condition: checkedCondition)
            return Node(kind, .boolean, expression)
        case .aggregate(let function, let value, let variable, let collection, let condition, _):
            let checkedCollection = try collectionOf(collection, "'\(function.rawValue)'")
            let (slot, parts) = try binding(variable, checkedCollection) {
                checker throws(DefinitionError) -> (Node, Node?) in
                let measured = try checker.check(value)
                let allowed: [ValueType] = function == .sum || function == .avg ? [.number] : [.number, .time]
                guard allowed.contains(measured.type) else {
                    throw checker.error(
                        value,
                        "'\(function.rawValue)' takes \(allowed.map(\.description).joined(separator: " or ")), "
                            + "but \(measured.text) is \(measured.type)"
                    )
                }
                return (
                    measured,
                    try condition.map { condition throws(DefinitionError) in try checker.condition(condition) }
                )
            }
            let type: ValueType = function == .sum || function == .avg ? .number : parts.0.type
            return Node(
                .aggregate(function, value: parts.0, slot: slot, collection: checkedCollection, condition: parts.1),
                type,
                expression
            )
        }
    }

    mutating func allocateSlot() -> Int {
        slotCount += 1
        return slotCount - 1
    }

    /// Checks `body` with `name` bound to the elements of `collection`.
    mutating func binding<Result>(
        _ name: String,
        _ collection: Node,
        _ body: (inout Checker) throws(DefinitionError) -> Result
    ) throws(DefinitionError) -> (Int, Result) {
        guard case .collection(let kind) = collection.type else { fatalError("checked by collectionOf") }
        let slot = allocateSlot()
        scope.append((name, slot, kind))
        defer {
            scope.removeLast()
            endedVariables.insert(name)
        }
        return (slot, try body(&self))
    }

    mutating func condition(_ expression: Expression) throws(DefinitionError) -> Node {
        let node = try check(expression)
        guard node.type == .boolean else {
            throw error(expression, "expected a condition (true or false), but \(node.text) is \(node.type)")
        }
        return node
    }

    mutating func scalar(_ expression: Expression, _ context: String) throws(DefinitionError) -> Node {
        let node = try check(expression)
        guard node.type.isScalar else {
            throw error(
                expression,
                "\(context) takes a number, string, boolean or timestamp, but \(node.text) is \(node.type)"
            )
        }
        return node
    }

    mutating func collectionOf(_ expression: Expression, _ context: String) throws(DefinitionError) -> Node {
        let node = try check(expression)
        guard case .collection = node.type else {
            throw error(expression, "\(context) goes over a collection, but \(node.text) is \(node.type)")
        }
        return node
    }

    func resolve(_ name: String, _ expression: Expression) throws(DefinitionError) -> Node {
        if let variable = scope.last(where: { $0.name == name }) {
            return Node(.variable(variable.slot), .entity(variable.kind), expression)
        }
        switch (name, audience) {
        case ("person", .person): return Node(.root(.person), .entity(.person), expression)
        case ("xEvent", .person): return Node(.events, .collection(.event), expression)
        case ("account", .account): return Node(.root(.account), .entity(.account), expression)
        case ("person", .account), ("xEvent", .account):
            throw error(
                expression,
                "an account audience is rooted at 'account'; reach persons through account.persons"
            )
        case ("account", .person):
            throw error(
                expression,
                "a person audience is rooted at 'person' and 'xEvent'; reach accounts through person.accounts"
            )
        default: break
        }
        if let element = filterElements.last, let field = Schema.field(element.kind, name),
            field.audiences.contains(audience)
        {
            let base = Node(.variable(element.slot), .entity(element.kind), expression)
            return try member(base, name, expression)
        }
        let roots = audience == .person ? "'person' or 'xEvent'" : "'account'"
        let bound = scope.isEmpty ? "" : ", or a variable (\(scope.map(\.name).joined(separator: ", ")))"
        let fields =
            filterElements.last.map { ", or a field of the filtered \($0.kind.rawValue)" } ?? ""
        let hint =
            endedVariables.contains(name)
            ? "; \(name) is only known inside the condition after 'where', which is one comparison unless "
                + "parenthesized: where (… and …)"
            : ""
        throw error(expression, "unknown name '\(name)': expected \(roots)\(bound)\(fields)\(hint)")
    }

    func member(_ base: Node, _ name: String, _ expression: Expression) throws(DefinitionError) -> Node {
        switch base.type {
        case .entity(let kind):
            let field = try field(kind, name, expression)
            if case .collection = field.type {
                return Node(.relation(base, kind, name), field.type, expression)
            }
            return Node(.field(base, kind, name), field.type, expression)
        case .collection(let kind):
            let field = try field(kind, name, expression)
            guard case .collection = field.type else {
                throw fieldError(
                    expression,
                    "\(base.text) is \(base.type): reach its '\(name)' with exists, forall, an aggregate "
                        + "(sum … over … from …) or a filter"
                )
            }
            return Node(.flatten(base, kind, name), field.type, expression)
        default:
            throw fieldError(expression, "\(base.text) is \(base.type) and has no fields")
        }
    }

    func field(_ kind: EntityKind, _ name: String, _ expression: Expression) throws(DefinitionError) -> Schema.Field {
        guard let field = Schema.field(kind, name) else {
            throw fieldError(
                expression,
                "\(kind.rawValue) has no field '\(name)'; its fields are "
                    + Schema.fieldNames(kind, in: audience).joined(separator: ", ")
            )
        }
        guard field.audiences.contains(audience) else {
            throw fieldError(
                expression,
                "\(kind.rawValue).\(name) is not in \(audience.rawValue) views; "
                    + "it can be used in \(field.audiences.map(\.rawValue).sorted().joined(separator: " and ")) audiences"
            )
        }
        return field
    }

    func compare(
        _ left: Node,
        _ comparison: Comparison,
        _ right: Node,
        _ expression: Expression
    ) throws(DefinitionError)
        -> Node
    {
        for side in [left, right] where !side.type.isScalar {
            throw fieldError(expression, "'\(comparison.rawValue)' compares values, but \(side.text) is \(side.type)")
        }
        if left.type != right.type && left.type != .null && right.type != .null {
            throw fieldError(
                expression,
                "cannot compare \(left.text) (\(left.type)) with \(right.text) (\(right.type))"
            )
        }
        if comparison != .equal && comparison != .notEqual {
            if left.type == .boolean || left.type == .null || right.type == .null {
                throw fieldError(
                    expression,
                    "'\(comparison.rawValue)' orders numbers, strings and timestamps; use = or != with "
                        + "\(left.type == .boolean ? "booleans" : "null")"
                )
            }
        }
        return Node(.compare(left, comparison, right), .boolean, expression)
    }

    mutating func call(
        _ function: String,
        _ arguments: [Expression],
        _ expression: Expression
    ) throws(DefinitionError)
        -> Node
    {
        switch function {
        case "count":
            guard arguments.count == 1 else {
                throw error(expression, "count() is called on a collection, as in person.accounts.count()")
            }
            return Node(.count(try collectionOf(arguments[0], "count()")), .number, expression)
        case "date":
            return Node(.literal(.time(try date(arguments, expression))), .time, expression)
        case "inSegment":
            guard arguments.count == 1, case .string(let id, _) = arguments[0] else {
                throw error(expression, "inSegment takes one segment id in quotes, as in inSegment(\"s1\")")
            }
            guard let other = segments(id) else {
                throw error(arguments[0], "no segment has the id \"\(id)\"")
            }
            guard other == audience else {
                throw error(
                    arguments[0],
                    "segment \"\(id)\" is a \(other.rawValue) audience; this is a \(audience.rawValue) audience"
                )
            }
            segmentReferences.insert(id)
            return Node(.inSegment(id), .boolean, expression)
        default:
            guard let test = StringFunction(rawValue: function) else {
                throw error(
                    expression,
                    "unknown function '\(function)': expected count, date, inSegment or one of "
                        + StringFunction.allCases.map(\.rawValue).joined(separator: ", ")
                )
            }
            guard arguments.count == 2 || arguments.count == 3 else {
                throw error(
                    expression,
                    "\(function) takes a string and an optional case-sensitivity flag, as in "
                        + "person.jobTitle.\(function)(\"VP\", false)"
                )
            }
            let subject = try check(arguments[0])
            let pattern = try check(arguments[1])
            for (node, argument) in [(subject, arguments[0]), (pattern, arguments[1])] where node.type != .string {
                throw error(argument, "\(function) takes strings, but \(node.text) is \(node.type)")
            }
            var caseSensitive = true
            if arguments.count == 3 {
                guard case .boolean(let flag, _) = arguments[2] else {
                    throw error(arguments[2], "the case-sensitivity flag of \(function) is true or false")
                }
                caseSensitive = flag
            }
            return Node(.text(test, subject, pattern, caseSensitive: caseSensitive), .boolean, expression)
        }
    }

    /// `date(year, month, day[, hour, minute, second])`, UTC.
    func date(_ arguments: [Expression], _ expression: Expression) throws(DefinitionError) -> Double {
        var parts: [Int] = []
        for argument in arguments {
            guard case .number(let value, _) = argument, value == value.rounded(), abs(value) < 1e6 else {
                throw error(argument, "date(…) takes whole numbers: year, month, day[, hour, minute, second]")
            }
            parts.append(Int(value))
        }
        guard parts.count == 3 || parts.count == 6 else {
            throw error(expression, "date(…) takes year, month, day or year, month, day, hour, minute, second")
        }
        let limits = [
            (1, 9999), (1, 12), (1, CivilTime.daysInMonth(year: parts[0], month: max(1, min(12, parts[1])))), (0, 23),
            (0, 59), (0, 59),
        ]
        for (index, part) in parts.enumerated() where !(limits[index].0...limits[index].1).contains(part) {
            let names = ["year", "month", "day", "hour", "minute", "second"]
            throw error(
                arguments[index],
                "the \(names[index]) of date(…) must be between \(limits[index].0) and \(limits[index].1), not \(part)"
            )
        }
        let time = parts.count == 6 ? Double(parts[3] * 3600 + parts[4] * 60 + parts[5]) : 0
        return Double(CivilTime.days(year: parts[0], month: parts[1], day: parts[2])) * 86_400 + time
    }

    mutating func timeCondition(_ condition: TimeCondition) throws(DefinitionError) -> CheckedTimeCondition {
        switch condition {
        case .withinLast(let count, let unit):
            dependsOnTime = true
            return .withinLast(count, unit)
        case .last(let unit):
            dependsOnTime = true
            return .last(unit)
        case .between(let from, let to):
            var ends: [Double] = []
            for end in [from, to] {
                let node = try check(end)
                guard case .literal(.time(let seconds)) = node.kind else {
                    throw error(end, "'occurs between' takes two dates, as in date(2026, 1, 1), but found \(node.text)")
                }
                ends.append(seconds)
            }
            guard ends[0] < ends[1] else {
                throw error(to, "the end of 'occurs between' must come after its start")
            }
            return .between(ends[0], ends[1])
        }
    }
}

extension Expression {
    var isExists: Bool {
        if case .exists = self { return true }
        return false
    }
}

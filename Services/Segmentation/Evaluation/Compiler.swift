import CDPProto
import SegmentationLanguage

/// Compiles a checked ``Definition`` into closures over a ``Frame``: field readers are chosen once,
/// collections are iterated in place (never copied into new arrays), and `and`/`or`/`exists`/`forall`
/// stop as soon as the result is known.
///
/// With `explaining`, the top-level parts of the definition (those not inside a quantifier's body) also
/// record an ``ExplanationStep``: comparisons with both values, aggregates with every entity they
/// took, `exists` with the element that matched and `forall` with the one that failed. Explaining
/// evaluates both sides of `and`/`or`, so every part is reported.
struct Compiler {
    typealias Condition = @Sendable (Frame) -> Bool
    typealias Compute = @Sendable (Frame) -> Value
    typealias EntityCompute = @Sendable (Frame) -> Element
    /// Calls the body with each element until it returns false.
    typealias Each = @Sendable (Frame, (Element) -> Bool) -> Void

    let audience: Audience
    let explaining: Bool

    func records(_ depth: Int) -> Bool { explaining && depth == 0 }

    // MARK: - Conditions

    func condition(_ node: Node, _ depth: Int) -> Condition {
        switch node.kind {
        case .literal(let literal):
            let truth = literal == .boolean(true)
            return { _ in truth }
        case .field, .variable:
            let compute = value(node, depth)
            return { frame in compute(frame) == .boolean(true) }
        case .not(let inner):
            let inner = condition(inner, depth)
            return { frame in !inner(frame) }
        case .and(let left, let right):
            let (left, right) = (condition(left, depth), condition(right, depth))
            if records(depth) {
                return { frame in
                    let l = left(frame)
                    let r = right(frame)
                    return l && r
                }
            }
            return { frame in left(frame) && right(frame) }
        case .or(let left, let right):
            let (left, right) = (condition(left, depth), condition(right, depth))
            if records(depth) {
                return { frame in
                    let l = left(frame)
                    let r = right(frame)
                    return l || r
                }
            }
            return { frame in left(frame) || right(frame) }
        case .compare(let left, let comparison, let right):
            return compare(node, left, comparison, right, depth)
        case .isIn(let subject, let literals):
            let subject = value(subject, depth)
            let values = literals.map(Value.init)
            return recorded(node, depth) { frame, describe in
                let value = subject(frame)
                return (values.contains(value), describe ? value.text : nil)
            }
        case .occurs(let time, let condition):
            return occurs(node, value(time, depth), condition, depth)
        case .text(let function, let subject, let pattern, let caseSensitive):
            let (subject, pattern) = (value(subject, depth), value(pattern, depth))
            return recorded(node, depth) { frame, describe in
                guard case .string(let text) = subject(frame), case .string(let search) = pattern(frame) else {
                    return (function.negated, describe ? "null" : nil)
                }
                return (
                    Compiler.test(function, text, search, caseSensitive: caseSensitive), describe ? "\"\(text)\"" : nil
                )
            }
        case .inSegment(let id):
            return recorded(node, depth) { frame, _ in (frame.memberships.contains(id), nil) }
        case .exists(let slot, let collection, let body), .forall(let slot, let collection, let body):
            return quantifier(node, slot, collection, body, depth)
        default:
            // The checker gives conditions only the kinds above.
            let compute = value(node, depth)
            return { frame in compute(frame) == .boolean(true) }
        }
    }

    /// Records `node`'s result (and a detail, which `body` describes only when asked) when explaining
    /// at this depth.
    func recorded(_ node: Node, _ depth: Int, _ body: @escaping @Sendable (Frame, Bool) -> (Bool, String?)) -> Condition
    {
        guard records(depth) else { return { frame in body(frame, false).0 } }
        return { frame in
            let index = frame.reserveStep(node)
            let (result, detail) = body(frame, true)
            frame.steps[index].result = String(result) + (detail.map { " (\($0))" } ?? "")
            return result
        }
    }

    func compare(_ node: Node, _ left: Node, _ comparison: Comparison, _ right: Node, _ depth: Int) -> Condition {
        let (l, r) = (value(left, depth), value(right, depth))
        if case .literal(let literal) = right.kind, !records(depth) {
            let constant = Value(literal)
            return { frame in Compiler.compare(l(frame), comparison, constant) }
        }
        return recorded(node, depth) { frame, describe in
            let (a, b) = (l(frame), r(frame))
            return (Compiler.compare(a, comparison, b), describe ? "\(a.text) \(comparison.rawValue) \(b.text)" : nil)
        }
    }

    /// Null-safe comparison: `=` and `!=` treat null as a value (null = null holds; null != "x" holds);
    /// an ordering with null is false.
    static func compare(_ left: Value, _ comparison: Comparison, _ right: Value) -> Bool {
        switch (left, right) {
        case (.null, .null): return comparison == .equal
        case (.null, _), (_, .null): return comparison == .notEqual
        case (.number(let a), .number(let b)), (.time(let a), .time(let b)): return order(a, comparison, b)
        case (.string(let a), .string(let b)): return order(a, comparison, b)
        case (.boolean(let a), .boolean(let b)):
            return comparison == .equal ? a == b : comparison == .notEqual ? a != b : false
        default: return comparison == .notEqual
        }
    }

    static func order<T: Comparable>(_ a: T, _ comparison: Comparison, _ b: T) -> Bool {
        switch comparison {
        case .equal: a == b
        case .notEqual: a != b
        case .less: a < b
        case .lessOrEqual: a <= b
        case .greater: a > b
        case .greaterOrEqual: a >= b
        }
    }

    static func test(_ function: StringFunction, _ text: String, _ search: String, caseSensitive: Bool) -> Bool {
        let (text, search) = caseSensitive ? (text, search) : (text.lowercased(), search.lowercased())
        switch function {
        case .contains: return search.isEmpty || text.contains(search)
        case .doesNotContain: return !(search.isEmpty || text.contains(search))
        case .startsWith: return text.hasPrefix(search)
        case .doesNotStartWith: return !text.hasPrefix(search)
        case .endsWith: return text.hasSuffix(search)
        case .doesNotEndWith: return !text.hasSuffix(search)
        case .equals: return text == search
        case .notEqualTo: return text != search
        }
    }

    func occurs(_ node: Node, _ time: @escaping Compute, _ condition: CheckedTimeCondition, _ depth: Int) -> Condition {
        let test: @Sendable (Frame, Double) -> Bool
        switch condition {
        case .between(let from, let to):
            test = { _, t in from <= t && t < to }
        case .withinLast(let count, let unit):
            test = { frame, t in
                if t > frame.asOf {
                    frame.changes(at: t)
                    return false
                }
                guard t >= frame.windowStart(count, unit) else { return false }
                frame.changes(at: Compiler.exitTime(of: t, count, unit, before: frame.nextChange))
                return true
            }
        case .last(let unit):
            test = { frame, t in
                let current = CivilTime.startOfPeriod(unit, containing: frame.asOf)
                let previous = CivilTime.adding(-1, unit, to: current)
                if t >= current {
                    frame.changes(at: CivilTime.adding(1, unit, to: CivilTime.startOfPeriod(unit, containing: t)))
                    return false
                }
                guard t >= previous else { return false }
                frame.changes(at: CivilTime.adding(1, unit, to: current))
                return true
            }
        }
        return recorded(node, depth) { frame, describe in
            let value = time(frame)
            guard case .time(let t) = value else { return (false, describe ? "null" : nil) }
            return (test(frame, t), describe ? value.text : nil)
        }
    }

    /// The first time at which `t` is no longer within the last `count` units: a month back from the
    /// 31st can land on the 28th, so the candidate is moved on a day at a time until it excludes `t`.
    static func exitTime(of t: Double, _ count: Int, _ unit: TimeUnit, before limit: Double = .infinity) -> Double {
        let epsilon = 0.001
        switch unit {
        case .days: return t + Double(count) * 86_400 + epsilon
        case .weeks: return t + Double(count) * 7 * 86_400 + epsilon
        case .months, .years: break
        }
        var candidate = CivilTime.adding(count, unit, to: t)
        // Moving on only ever makes it later: no need if it cannot be the earliest change.
        if candidate + epsilon >= limit { return limit }
        while CivilTime.adding(-count, unit, to: candidate + epsilon) <= t {
            candidate = CivilTime.startOfPeriod(.days, containing: candidate) + 86_400
        }
        return candidate + epsilon
    }

    func quantifier(_ node: Node, _ slot: Int, _ collection: Node, _ body: Node, _ depth: Int) -> Condition {
        let isExists: Bool
        if case .exists = node.kind { isExists = true } else { isExists = false }
        let each = self.collection(collection, depth)
        let body = condition(body, depth + 1)
        let recording = records(depth)
        return { frame in
            let index = recording ? frame.reserveStep(node) : 0
            // exists: looking for an element that satisfies the body; forall: for one that does not.
            var found: Element?
            each(frame) { element in
                frame.slots[slot] = element
                if body(frame) == isExists {
                    found = element
                    return false
                }
                return true
            }
            let result = isExists ? found != nil : found == nil
            if recording {
                frame.steps[index].result = String(result)
                if let found { frame.steps[index].entities = [ExplainedEntity(found, in: frame)] }
            }
            return result
        }
    }

    // MARK: - Values

    func value(_ node: Node, _ depth: Int) -> Compute {
        switch node.kind {
        case .literal(let literal):
            let constant = Value(literal)
            return { _ in constant }
        case .field(let base, let kind, let name):
            let base = entity(base, depth)
            guard let read = Fields.reader(kind, name) else {
                // Entity-valued fields are never compared: the checker allows only scalars there.
                return { _ in .null }
            }
            return { frame in read(base(frame), frame) }
        case .count(let collection):
            let each = self.collection(collection, depth)
            return { frame in
                var count = 0
                each(frame) { _ in
                    count += 1
                    return true
                }
                return .number(Double(count))
            }
        case .aggregate(let function, let measured, let slot, let collection, let filter):
            return aggregate(node, function, measured, slot, collection, filter, depth)
        case .variable, .root:
            return { _ in .null }
        default:
            let condition = self.condition(node, depth)
            return { frame in .boolean(condition(frame)) }
        }
    }

    func aggregate(
        _ node: Node,
        _ function: Aggregate,
        _ measured: Node,
        _ slot: Int,
        _ collection: Node,
        _ filter: Node?,
        _ depth: Int
    ) -> Compute {
        let each = self.collection(collection, depth)
        let measure = value(measured, depth + 1)
        let filter = filter.map { condition($0, depth + 1) }
        let recording = records(depth)
        return { frame in
            let index = recording ? frame.reserveStep(node) : 0
            var total = 0.0
            var count = 0
            var extreme: Value = .null
            var taken: [ExplainedEntity] = []
            each(frame) { element in
                frame.slots[slot] = element
                if let filter, !filter(frame) { return true }
                let value = measure(frame)
                let number: Double
                switch value {
                case .number(let n), .time(let n): number = n
                default: return true  // a missing value is skipped
                }
                if recording { taken.append(ExplainedEntity(element, in: frame, value: value)) }
                count += 1
                total += number
                switch extreme {
                case .number(let e), .time(let e):
                    if function == .min ? number < e : number > e { extreme = value }
                default: extreme = value
                }
                return true
            }
            let result: Value =
                switch function {
                case .sum: .number(total)
                case .avg: count == 0 ? .null : .number(total / Double(count))
                case .min, .max: extreme
                }
            if recording {
                frame.steps[index].result = result.text
                frame.steps[index].entities = taken
            }
            return result
        }
    }

    func entity(_ node: Node, _ depth: Int) -> EntityCompute {
        switch node.kind {
        case .root: return { frame in frame.root }
        case .variable(let slot): return { frame in frame.slots[slot] }
        case .field(let base, let kind, let name):
            let base = entity(base, depth)
            guard let read = Fields.entityReader(kind, name) else { return { _ in .none } }
            return { frame in read(base(frame), frame) }
        default: return { _ in .none }
        }
    }

    // MARK: - Collections

    func collection(_ node: Node, _ depth: Int) -> Each {
        switch node.kind {
        case .events:
            return { frame, body in
                for index in frame.events.indices where !body(.event(index)) { return }
            }
        case .relation(let base, let kind, let name):
            return relation(kind, name, owner: entity(base, depth))
        case .flatten(let base, let kind, let name):
            return flatten(self.collection(base, depth), kind, name)
        case .filter(let base, let slot, let filter):
            let each = self.collection(base, depth)
            let filter = condition(filter, depth + 1)
            return { frame, body in
                each(frame) { element in
                    frame.slots[slot] = element
                    return filter(frame) ? body(element) : true
                }
            }
        default:
            return { _, _ in }
        }
    }

    /// The members of a relation of one entity, each once (the views list every entity once).
    func relation(_ kind: EntityKind, _ name: String, owner: @escaping EntityCompute) -> Each {
        switch (kind, name) {
        case (.person, "accounts"):
            return { frame, body in for index in frame.accounts.indices where !body(.account(index)) { return } }
        case (.person, "opportunities"):
            return { frame, body in
                for index in frame.opportunities.indices where !body(.opportunity(index)) { return }
            }
        case (.person, "opportunityRoles"):
            return { frame, body in
                for index in frame.opportunityRoles.indices where !body(.opportunityRole(index)) { return }
            }
        case (.person, "campaigns"):
            return { frame, body in
                for index in frame.campaigns.indices where !body(.campaignMembership(index)) { return }
            }
        case (.person, "lists"):
            return { frame, body in for index in frame.lists.indices where !body(.listMembership(index)) { return } }
        case (.account, "persons"):
            // Only account views carry persons, and only their root account has them.
            return { frame, body in
                guard frame.audience == .account else { return }
                for index in frame.persons.indices where !body(.person(index)) { return }
            }
        case (.account, "opportunities") where audience == .account:
            // An account view's opportunities are all the root account's.
            return { frame, body in
                for index in frame.opportunities.indices where !body(.opportunity(index)) { return }
            }
        case (.account, "opportunities"):
            return { frame, body in
                frame.extract(.opportunity)
                let account = frame.cluster(of: owner(frame))
                for index in frame.opportunities.indices where frame.opportunityAccounts[index].contains(account) {
                    if !body(.opportunity(index)) { return }
                }
            }
        default:
            return { _, _ in }
        }
    }

    /// A relation of every element of a collection, joined: an entity reached through several
    /// elements is taken once.
    func flatten(_ base: @escaping Each, _ kind: EntityKind, _ name: String) -> Each {
        if kind == .account && name == "opportunities" && audience == .person {
            // Each view opportunity once, if it belongs to any of the accounts.
            return { frame, body in
                frame.extract(.opportunity)
                for index in frame.opportunities.indices {
                    var belongs = false
                    base(frame) { account in
                        belongs = frame.opportunityAccounts[index].contains(frame.cluster(of: account))
                        return !belongs
                    }
                    if belongs && !body(.opportunity(index)) { return }
                }
            }
        }
        return { frame, body in
            var seen: Set<UInt64> = []
            var stopped = false
            base(frame) { owner in
                relation(kind, name, owner: { _ in owner })(frame) { member in
                    guard seen.insert(frame.cluster(of: member)).inserted else { return true }
                    stopped = !body(member)
                    return !stopped
                }
                return !stopped
            }
        }
    }
}

extension StringFunction {
    /// Whether the function is a negation, true when its subject is null (null does not contain "x").
    var negated: Bool {
        switch self {
        case .doesNotContain, .doesNotStartWith, .doesNotEndWith, .notEqualTo: true
        default: false
        }
    }
}

extension Frame {
    /// Appends a step for `node` to fill in once its result is known; outer parts come first.
    func reserveStep(_ node: Node) -> Int {
        steps.append(ExplanationStep(text: node.text, position: node.position, result: "", entities: []))
        return steps.count - 1
    }
}

import CDPProto
import SegmentationLanguage

/// A segment definition compiled for evaluation: cheap to run on view after view, safe to share
/// between threads (each thread evaluates with its own ``Frame``).
public final class CompiledSegment: Sendable {
    /// The checked definition.
    public let definition: Definition
    private let condition: Compiler.Condition

    /// Compiles a checked definition.
    public init(_ definition: Definition) {
        self.definition = definition
        condition = Compiler(audience: definition.audience, explaining: false).condition(definition.root, 0)
    }

    /// Parses, checks and compiles `text`.
    ///
    /// - Throws: ``DefinitionError`` with the line, column and problem.
    public convenience init(
        _ text: String,
        audience: Audience,
        segments: @escaping (String) -> Audience? = { _ in nil }
    ) throws(DefinitionError) {
        self.init(try Definition(text, audience: audience, segments: segments))
    }

    /// Evaluates the definition on the view loaded in `frame`, as of the frame's `asOf`.
    public func evaluate(in frame: Frame) -> Outcome {
        prepare(frame)
        let matched = frame.audience == definition.audience && condition(frame)
        return Outcome(matched: matched, validUntil: frame.nextChange.isFinite ? frame.nextChange : nil)
    }

    /// Evaluates and explains: the result with the parts of the definition that decided it.
    public func explain(in frame: Frame) -> (outcome: Outcome, steps: [ExplanationStep]) {
        prepare(frame)
        frame.steps = []
        let explaining = Compiler(audience: definition.audience, explaining: true).condition(definition.root, 0)
        let matched = frame.audience == definition.audience && explaining(frame)
        let steps = frame.steps
        frame.steps = []
        return (Outcome(matched: matched, validUntil: frame.nextChange.isFinite ? frame.nextChange : nil), steps)
    }

    private func prepare(_ frame: Frame) {
        frame.nextChange = .infinity
        if frame.slots.count < definition.slots {
            frame.slots.append(contentsOf: repeatElement(.none, count: definition.slots - frame.slots.count))
        }
    }
}

/// Why a service could not start, worded for the operator (printed by ArgumentParser as the error).
public struct StartupError: Error, CustomStringConvertible {
    /// The explanation: what failed, where, and which flag or variable to look at.
    public var description: String

    /// Creates an error.
    public init(_ description: String) { self.description = description }
}

import Foundation

/// Reading a destination's settings, with errors that name the setting and say what it must be.
enum Settings {
    static func required(_ key: String, _ settings: [String: String]) throws(ConnectorSettingsError) -> String {
        guard let value = settings[key]?.trimmingCharacters(in: .whitespaces), !value.isEmpty else {
            throw ConnectorSettingsError("the setting \(key) is required")
        }
        return value
    }

    /// An http or https URL without a user or password; a base URL (`keepPath` false) loses its
    /// trailing slashes, a URL called as it is (a webhook's) is kept exactly.
    static func url(
        _ key: String,
        _ settings: [String: String],
        default fallback: String? = nil,
        keepPath: Bool = false
    ) throws(ConnectorSettingsError) -> String {
        var value = settings[key]?.trimmingCharacters(in: .whitespaces) ?? ""
        if value.isEmpty, let fallback { value = fallback }
        guard !value.isEmpty else { throw ConnectorSettingsError("the setting \(key) is required") }
        guard let components = URLComponents(string: value), ["http", "https"].contains(components.scheme ?? ""),
            components.host?.isEmpty == false
        else {
            throw ConnectorSettingsError("\(key) must be an http or https URL, not \(value)")
        }
        if components.user != nil || components.password != nil {
            throw ConnectorSettingsError("\(key) must not carry a user or password; use the credential settings")
        }
        while !keepPath && value.hasSuffix("/") { value.removeLast() }
        return value
    }

    static func integer(
        _ key: String,
        _ settings: [String: String],
        default fallback: Int,
        in range: ClosedRange<Int>
    ) throws(ConnectorSettingsError) -> Int {
        guard let text = settings[key] else { return fallback }
        guard let value = Int(text.trimmingCharacters(in: .whitespaces)), range.contains(value) else {
            throw ConnectorSettingsError(
                "\(key) must be a whole number from \(range.lowerBound) to \(range.upperBound), not \(text)"
            )
        }
        return value
    }

    static func flag(
        _ key: String,
        _ settings: [String: String],
        default fallback: Bool
    ) throws(ConnectorSettingsError)
        -> Bool
    {
        switch settings[key]?.lowercased() {
        case nil: return fallback
        case "true"?: return true
        case "false"?: return false
        case let other?: throw ConnectorSettingsError("\(key) must be true or false, not \(other)")
        }
    }
}

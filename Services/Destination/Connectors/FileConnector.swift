import CDPProto
import DestinationStore
import Foundation

/// File exports: one file per delivery run in a directory, CSV or JSON Lines, holding the changes
/// (incremental) or every member after the changes (full). A LinkedIn upload file carries hashed
/// emails only: activate with the hashed-email identity and no attributes.
///
/// Settings: `directory`, `format` (`csv`, default, or `jsonl`), `mode` (`incremental`, default, or
/// `full`). Files are written to a temporary name and renamed, so a reader never sees half a file.
public struct FileConnector: Connector {
    public enum Format: String, Sendable { case csv, jsonl }
    public enum Mode: String, Sendable { case incremental, full }

    public let directory: String
    public let format: Format
    public let mode: Mode
    public var batchLimit: Int { 10_000 }
    public var suppressesOptedOut: Bool { true }
    public var defaultIdentity: Cdp_Destination_V1_IdentityMapping { .email }

    /// A connector from a destination's settings; the error says which setting is wrong.
    public init(settings: [String: String]) throws(ConnectorSettingsError) {
        guard let directory = settings["directory"], !directory.isEmpty else {
            throw ConnectorSettingsError("a file destination needs the setting directory")
        }
        guard let format = Format(rawValue: settings["format"] ?? "csv") else {
            throw ConnectorSettingsError("format must be csv or jsonl, not \(settings["format"] ?? "")")
        }
        guard let mode = Mode(rawValue: settings["mode"] ?? "incremental") else {
            throw ConnectorSettingsError("mode must be incremental or full, not \(settings["mode"] ?? "")")
        }
        self.directory = directory
        self.format = format
        self.mode = mode
    }

    public func deliver(_ members: [OutboundMember], _ context: DeliveryContext) async throws -> [UInt64: String] {
        let rows = mode == .full ? try await context.currentMembers() : members
        let columns = Array(Set(rows.flatMap(\.attributes.keys))).sorted()
        var text = ""
        switch format {
        case .csv:
            text = (["op", "identity"] + columns).map(Self.csvField).joined(separator: ",") + "\n"
            for row in rows {
                let fields = [row.operation, row.identity] + columns.map { row.attributes[$0] ?? "" }
                text += fields.map(Self.csvField).joined(separator: ",") + "\n"
            }
        case .jsonl:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            for row in rows {
                var object = ["op": row.operation, "identity": row.identity]
                for (key, value) in row.attributes { object["attributes." + key] = value }
                text += String(decoding: try encoder.encode(object), as: UTF8.self) + "\n"
            }
        }
        let name = "\(context.activation.id)-\(mode.rawValue)-\(context.runNumber).\(format.rawValue)"
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let temporary = directory + "/." + name + ".tmp"
            try Data(text.utf8).write(to: URL(fileURLWithPath: temporary))
            // rename(2) replaces a file of the same name (a run repeated after a crash) in one step.
            guard rename(temporary, directory + "/" + name) == 0 else {
                throw CocoaError(
                    .fileWriteUnknown,
                    userInfo: [NSLocalizedDescriptionKey: String(cString: strerror(errno))]
                )
            }
        } catch {
            throw DeliveryFailure.retryable(
                "cannot write \(directory)/\(name): \(error.localizedDescription)",
                after: nil
            )
        }
        return [:]
    }

    /// A CSV field, quoted when it holds a comma, quote or line break.
    static func csvField(_ value: String) -> String {
        guard value.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return value }
        return "\"" + value.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}

/// A destination's settings that a connector cannot work with.
public struct ConnectorSettingsError: Error, Sendable, CustomStringConvertible {
    public var description: String

    /// Creates an error.
    public init(_ description: String) { self.description = description }
}

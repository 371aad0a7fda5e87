import Foundation
import SwiftProtobuf
import Synchronization

#if canImport(Glibc)
import Glibc

private let systemWrite = Glibc.write
#else
import Darwin

private let systemWrite = Darwin.write
#endif

/// What commands print: text or JSON on stdout, errors and progress on stderr.
enum Output {
    /// A line on stdout.
    static func line(_ text: String = "") {
        write(text + "\n", to: STDOUT_FILENO)
    }

    /// Writes all of `text` to `descriptor`. A reader that went away (`cdp … | head`) ends the command
    /// quietly as a closed pipe ends other tools, by SIGPIPE (exit status 141 in a shell), rather than
    /// with Foundation's fatal error on EPIPE; any other failure to write ends it with status 1.
    static func write(_ text: String, to descriptor: Int32) {
        var text = text
        text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = systemWrite(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written >= 0 {
                    offset += written
                } else if errno == EINTR {
                    continue
                } else if errno == EPIPE {
                    // SIGPIPE is ignored in this process (SwiftNIO ignores it); restore it to end as tools do.
                    signal(SIGPIPE, SIG_DFL)
                    raise(SIGPIPE)
                    exit(141)
                } else {
                    exit(1)
                }
            }
        }
    }

    /// A message as protobuf JSON (lowerCamelCase field names, enums by name) on one line of stdout.
    static func json(_ message: some SwiftProtobuf.Message) throws {
        line(try message.jsonString())
        printedJSON.store(true, ordering: .relaxed)
    }

    /// Whether the command printed its JSON document (a failure after it adds none: one document per run).
    static let printedJSON = Atomic<Bool>(false)

    /// A list of messages as one JSON object `{"<key>": [...]}` on one line of stdout.
    static func json(_ key: String, _ messages: [some SwiftProtobuf.Message]) throws {
        let items = try messages.map { try $0.jsonString() }
        line("{\"\(key)\":[" + items.joined(separator: ",") + "]}")
        printedJSON.store(true, ordering: .relaxed)
    }

    /// A value as compact JSON (sorted keys, times as RFC 3339) on one line of stdout.
    static func json(_ value: some Encodable) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        line(String(decoding: try encoder.encode(value), as: UTF8.self))
        printedJSON.store(true, ordering: .relaxed)
    }

    /// `cdp: error: <message>` on stderr.
    static func error(_ message: String) {
        write("cdp: error: \(message)\n", to: STDERR_FILENO)
    }

    /// A note on stderr (progress, hints), never mixed into stdout's JSON.
    static func note(_ text: String) {
        write(text + "\n", to: STDERR_FILENO)
    }

    /// Runs `body`; when it takes more than a second and stderr is a terminal, shows `label` with the
    /// seconds waited so far on stderr until it ends (the line is cleared then).
    static func showingElapsed<T: Sendable>(_ label: String, _ body: () async throws -> T) async throws -> T {
        guard stderrIsTerminal else { return try await body() }
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                let start = ContinuousClock.now
                var shown = false
                defer { if shown { write("\r\u{1B}[K", to: STDERR_FILENO) } }
                while true {
                    try await Task.sleep(for: .seconds(1))
                    shown = true
                    write("\r\(label) \((ContinuousClock.now - start).components.seconds) s", to: STDERR_FILENO)
                }
            }
            defer { group.cancelAll() }
            return try await body()
        }
    }

    /// Whether stderr is a terminal (progress bars redraw only there).
    static let stderrIsTerminal = isatty(STDERR_FILENO) == 1

    /// A progress line on stderr, replacing the previous one, when stderr is a terminal.
    static func progress(_ text: String) {
        guard stderrIsTerminal else { return }
        write("\r\u{1B}[K" + text, to: STDERR_FILENO)
        showingProgress.store(true, ordering: .relaxed)
    }

    /// Ends a progress line (the next output starts on a line of its own).
    static func endProgress() {
        guard showingProgress.exchange(false, ordering: .relaxed) else { return }
        write("\r\u{1B}[K", to: STDERR_FILENO)
    }

    private static let showingProgress = Atomic<Bool>(false)

    /// Columns padded to the widest cell of each, two spaces apart.
    static func table(_ header: [String], _ rows: [[String]]) {
        let all = [header] + rows
        var widths = [Int](repeating: 0, count: header.count)
        for row in all {
            for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) }
        }
        for row in all {
            let cells = row.enumerated().map { i, cell in
                i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }
            line(cells.joined(separator: "  "))
        }
    }
}

/// A progress bar on stderr (redrawn in place on a terminal, a line per 10% elsewhere).
final class ProgressBar {
    private let label: String
    private let total: Int64
    private var lastDrawn = -1
    private let enabled: Bool

    init(label: String, total: Int64, enabled: Bool = true) {
        self.label = label
        self.total = max(total, 1)
        self.enabled = enabled
    }

    /// Shows `done` of the total.
    func update(_ done: Int64) {
        guard enabled else { return }
        let percent = Int(min(100, done * 100 / total))
        if Output.stderrIsTerminal {
            guard percent != lastDrawn else { return }
            let width = 30
            let filled = percent * width / 100
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            Output.write("\r\(label) [\(bar)] \(percent)%", to: STDERR_FILENO)
        } else {
            guard percent / 10 != lastDrawn / 10 || lastDrawn < 0 else { return }
            Output.note("\(label): \(percent)%")
        }
        lastDrawn = percent
    }

    /// Ends the bar's line.
    func finish() {
        guard enabled, Output.stderrIsTerminal, lastDrawn >= 0 else { return }
        Output.write("\n", to: STDERR_FILENO)
    }
}

/// Readable numbers and durations.
enum Format {
    /// `1,100,000` for 1100000.
    static func number(_ value: Double) -> String {
        let formatter = NumberFormatter()
        formatter.numberStyle = .decimal
        formatter.maximumFractionDigits = 2
        return formatter.string(from: NSNumber(value: value)) ?? "\(value)"
    }

    /// `3.2 s`, `4 min 10 s`, `2 h 5 min` for an age in seconds.
    static func age(_ seconds: Double) -> String {
        if seconds < 60 { return String(format: "%.1f s", seconds) }
        if seconds < 3600 { return "\(Int(seconds) / 60) min \(Int(seconds) % 60) s" }
        return "\(Int(seconds) / 3600) h \(Int(seconds) % 3600 / 60) min"
    }
}

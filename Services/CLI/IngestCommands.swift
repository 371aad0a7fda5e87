import ArgumentParser
import CDPClient
import CDPProto
import Crypto
import Foundation
import RPCCore

/// `cdp source create|list`.
struct SourceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "source",
        abstract: "Register and list sources (a system's type and instance, e.g. Marketo:mkto-1).",
        subcommands: [Create.self, List.self]
    )

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register a source; registering an existing one changes nothing."
        )

        @Argument(help: "The source as TYPE:INSTANCE, e.g. Marketo:mkto-1 (as `cdp ingest --source` names it).")
        var source: String?

        @Option(
            help: """
                The system's type: Marketo, Salesforce, MDM, Web, … (an upper-case letter, then letters, digits, \
                '-', '_'); with --instance, instead of TYPE:INSTANCE.
                """
        )
        var type: String?

        @Option(help: "The instance of that system, e.g. mkto-1 (1 to 64 letters, digits, '-', '_').")
        var instance: String?

        @Option(help: "Free text, e.g. \"Marketo of line of business 1\".")
        var description: String = ""

        @OptionGroup var client: ClientOptions

        func validate() throws {
            switch (source, type, instance) {
            case (let source?, nil, nil): _ = try Arguments.source(source, option: "the source")
            case (nil, _?, _?): break
            case (_?, _, _):
                throw ValidationError("give the source as TYPE:INSTANCE or with --type and --instance, not both")
            default:
                throw ValidationError("name the source: TYPE:INSTANCE (e.g. Marketo:mkto-1), or --type and --instance")
            }
        }

        func run() async throws {
            let named: Cdp_Model_V1_Source
            if let source {
                named = try Arguments.source(source, option: "the source")
            } else {
                named = .with {
                    $0.type = type ?? ""
                    $0.instance = instance ?? ""
                }
            }
            let request = Cdp_Ingestion_V1_CreateSourceRequest.with {
                $0.source = named
                $0.description_p = description
            }
            let info = try await client.withClients { clients in
                try await clients.calling(.ingestion) {
                    try await clients.ingestion.createSource(request, options: client.callOptions)
                }
            }
            if client.json { try Output.json(info) } else { Output.line("\(info.source.type):\(info.source.instance)") }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the registered sources.")

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let sources = try await client.withClients { clients in
                try await clients.calling(.ingestion) {
                    try await clients.ingestion.listSources(.init(), options: client.callOptions).sources
                }
            }
            if client.json { return try Output.json("sources", sources) }
            Output.table(
                ["source", "created", "description"],
                sources.map {
                    [
                        "\($0.source.type):\($0.source.instance)", TimeArgument.format($0.createdAt.date),
                        $0.description_p,
                    ]
                }
            )
        }
    }
}

/// `cdp ingest FILE`: one batch upload, streamed from disk.
struct IngestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest",
        abstract: "Upload a file as one batch of a source's records.",
        discussion: """
            The file streams to ingestion in 64 KiB messages (a progress bar shows on a terminal) and is parsed \
            as it arrives. The batch's summary and its record errors (line, field, reason) follow. Uploading \
            the same batch again returns the first result and stores nothing twice: a batch is the same when \
            its --key is (by default a SHA-256 of the file's content with its --source, --entity, --format and \
            --error-threshold, so a retry after a lost answer is safe and a corrected retry is a new batch). To \
            send the same content again as a new batch, give a new --key. Exit status 1 if the batch failed (e.g. more \
            rejected records than --error-threshold allows). With --wait, returns only once the batch's records \
            have gone through identity and profile and what they changed has reached segmentation, so that \
            a following `cdp profile get` or `cdp segment evaluate` sees them.

            Formats: canonical (the platform's own CSV, or NDJSON for files ending .ndjson or .jsonl, or, from \
            standard input, whose first character is {), salesforce (Bulk API CSV exports), marketo (bulk \
            extract CSV), mdm (a crosswalk CSV). A gzip-compressed file (.gz, or any file starting with gzip's \
            bytes) is decompressed as it is sent. `cdp ingest - …` reads standard input (kept in a temporary \
            file until the batch is stored, so that a retry after a lost answer is recognized).
            """
    )

    @Argument(help: "The file to upload (gzip-compressed or not); - reads standard input.")
    var file: String

    @Option(
        help:
            "The entity or object of the file: person, account, … for canonical files; the object's name (Account, leads, …) for native exports; identityLink for an MDM crosswalk."
    )
    var entity: String

    @Option(help: "The source, TYPE:INSTANCE, e.g. Marketo:mkto-1.")
    var source: String

    @Option(help: "canonical, salesforce, marketo or mdm.")
    var format: String = "canonical"

    @Option(
        help: """
            The idempotency key: a batch sent again under the same key returns the first result (default: a \
            SHA-256 of the file's content, source, entity, format and error threshold).
            """
    )
    var key: String?

    @Option(help: "The largest fraction of rejected records before the batch fails (0 to 1; default: the service's).")
    var errorThreshold: Double?

    @Flag(help: "Return once the batch has reached segmentation (through identity and profile).")
    var wait = false

    @Option(help: "Seconds --wait may take.")
    var waitTimeout: Double = 300

    @OptionGroup var client: ClientOptions

    func run() async throws {
        let source = try Arguments.source(source)
        if let errorThreshold, !(0...1).contains(errorThreshold) {
            throw CLIError(
                "--error-threshold must be between 0 and 1, a fraction (0.5 lets up to half of the records be "
                    + "rejected; got \(errorThreshold))"
            )
        }
        // Standard input is kept in a temporary file: its hash is the default key, and it is sent from there.
        let spooled = file == "-" ? try Self.spoolStandardInput() : nil
        defer { if let spooled { try? FileManager.default.removeItem(at: spooled) } }
        let url = spooled ?? URL(fileURLWithPath: file)
        guard FileManager.default.isReadableFile(atPath: url.path) else {
            throw CLIError(
                "cannot read \(file): "
                    + (FileManager.default.fileExists(atPath: url.path) ? "permission denied" : "no such file")
            )
        }
        let gzipped = ServiceClients.isGzip(path: url.path)
        // The name the batch is known by, without .gz: it also tells a canonical CSV from NDJSON.
        var name = spooled == nil ? url.lastPathComponent : "stdin"
        if gzipped, name.lowercased().hasSuffix(".gz") { name.removeLast(3) }
        let wireFormat = try Self.wireFormat(
            format,
            file: spooled == nil || gzipped ? name : (Self.startsWithBrace(url) ? "stdin.ndjson" : "stdin.csv")
        )
        let size = (try? FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int64) ?? 0
        let idempotencyKey =
            try key
            ?? Self.defaultKey(
                file: url,
                entity: entity,
                format: wireFormat,
                errorThreshold: errorThreshold
            )
        let header = Cdp_Ingestion_V1_BatchHeader.with {
            $0.source = source
            $0.entity = entity
            $0.format = wireFormat
            $0.idempotencyKey = idempotencyKey
            if let errorThreshold { $0.errorThreshold = errorThreshold }
            $0.fileName = name
        }
        let progress = ProgressBar(label: name, total: size, enabled: size > 4 * 1024 * 1024)
        let batch = try await client.withClients { clients in
            let batch = try await clients.uploadBatch(
                path: url.path,
                header: header,
                gzipped: gzipped,
                progress: progress.update
            )
            progress.finish()
            if wait, batch.state == .completed {
                try await clients.waitUntilDelivered(
                    timeout: .milliseconds(Int64(waitTimeout * 1000)),
                    options: client.callOptions
                ) { stage, handedOn, target in
                    Output.progress("waiting for \(stage) to hand on its backlog: \(handedOn) of \(target)")
                }
                Output.endProgress()
            }
            return batch
        }
        if client.json {
            try Output.json(batch)
        } else {
            Self.printSummary(batch, waited: wait, explicitKey: key != nil)
        }
        if batch.state != .completed {
            var message =
                "the batch \(batch.batchID) \(batch.state): \(batch.failure.isEmpty ? "see above" : batch.failure)"
            if batch.state == .failed && batch.counts.rejected > 0 {
                // Rejected records failed it: say both ways on.
                message +=
                    "; correct the records listed above and send the file again, or let more be rejected with "
                    + "--error-threshold (a fraction: 0.5 lets up to half be)"
            }
            throw CLIError(message)
        }
    }

    /// Copies standard input to a temporary file (refused when standard input is a terminal).
    static func spoolStandardInput() throws -> URL {
        guard isatty(STDIN_FILENO) == 0 else {
            throw CLIError(
                "`cdp ingest -` reads standard input; pipe a file into it, e.g. `gunzip -c x.csv.gz | cdp ingest - …`"
            )
        }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("cdp-ingest-\(UUID().uuidString)")
        guard FileManager.default.createFile(atPath: url.path, contents: nil),
            let output = FileHandle(forWritingAtPath: url.path)
        else { throw CLIError("cannot write a temporary file in \(FileManager.default.temporaryDirectory.path)") }
        defer { try? output.close() }
        let input = FileHandle.standardInput
        do {
            while let chunk = try input.read(upToCount: 1 << 20), !chunk.isEmpty { try output.write(contentsOf: chunk) }
        } catch {
            try? FileManager.default.removeItem(at: url)
            throw CLIError("cannot read standard input: \(error)")
        }
        return url
    }

    /// Whether a file's first non-blank character is `{` (NDJSON rather than CSV).
    static func startsWithBrace(_ url: URL) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: url.path) else { return false }
        defer { try? handle.close() }
        let head = (try? handle.read(upToCount: 4096)) ?? Data()
        return head.first { ![0x20, 0x09, 0x0A, 0x0D, 0xEF, 0xBB, 0xBF].contains($0) } == UInt8(ascii: "{")
    }

    /// The key of an upload when --key is not given: everything that decides the batch's outcome (the
    /// content, the entity, the format and the error threshold; the source is part of the service's
    /// index), so that only a retry of the same upload gets the stored result.
    static func defaultKey(
        file: URL,
        entity: String,
        format: Cdp_Ingestion_V1_Format,
        errorThreshold: Double?
    ) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: file.path) else {
            throw CLIError("cannot read \(file.path)")
        }
        defer { try? handle.close() }
        var hash = SHA256()
        do {
            while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty { hash.update(data: chunk) }
        } catch {
            throw CLIError("cannot read \(file.path): \(error)")
        }
        let digest = hash.finalize().map { String(format: "%02x", $0) }.joined()
        let threshold = errorThreshold.map { "\($0)" } ?? "default"
        return "sha256:\(digest) entity:\(entity) format:\(format) threshold:\(threshold)"
    }

    /// The wire format for `name`; canonical files are NDJSON when they end in .ndjson or .jsonl.
    static func wireFormat(_ name: String, file: String) throws -> Cdp_Ingestion_V1_Format {
        switch name.lowercased() {
        case "canonical":
            let lower = file.lowercased()
            return lower.hasSuffix(".ndjson") || lower.hasSuffix(".jsonl") ? .canonicalNdjson : .canonicalCsv
        case "salesforce": return .salesforceCsv
        case "marketo": return .marketoCsv
        case "mdm": return .mdmCsv
        default: throw CLIError("--format must be canonical, salesforce, marketo or mdm (got \"\(name)\")")
        }
    }

    /// The batch in a few lines, then its record errors.
    static func printSummary(_ batch: Cdp_Ingestion_V1_Batch, waited: Bool, explicitKey: Bool) {
        let c = batch.counts
        let replayed = batch.replayed ? " (sent before: the first upload's result; nothing was stored again)" : ""
        let source = "\(batch.source.type):\(batch.source.instance)"
        Output.line("batch \(batch.batchID) \(batch.fileName) (\(source), \(batch.entity)): \(batch.state)\(replayed)")
        Output.line(
            "  \(c.records) records: \(c.accepted) accepted, \(c.duplicates) duplicates, \(c.rejected) rejected"
                + (c.suppressed > 0 ? ", \(c.suppressed) refused (persons erased by privacy requests)" : "")
        )
        if !batch.failure.isEmpty { Output.line("  failure: \(batch.failure)") }
        if batch.replayed {
            let created = TimeArgument.format(batch.createdAt.date)
            Output.line(
                "  first sent \(created)"
                    + (explicitKey
                        ? " under the same --key; to send it again as a new batch, give a new --key"
                        : " with the same content and options; to send it again as a new batch, give a --key")
            )
        }
        for error in batch.errors {
            let field = error.field.isEmpty ? "" : ", field \(error.field)"
            Output.line("  line \(error.line)\(field): \(error.reason)")
        }
        if c.rejected + c.suppressed > UInt64(batch.errors.count) {
            Output.line("  (\(c.rejected + c.suppressed - UInt64(batch.errors.count)) more record errors not listed)")
        }
        if waited, batch.state == .completed { Output.line("  reached segmentation (through identity and profile)") }
    }
}

/// `cdp batch list|get`.
struct BatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "batch",
        abstract: "List uploaded batches, or show one with its record errors.",
        subcommands: [List.self, Get.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the batches, newest first (those being received too).",
            discussion: "--json: {\"batches\":[Batch…]} (cdp.ingestion.v1), without their record errors."
        )

        @Option(help: "At most this many.")
        var limit: Int = 50

        @OptionGroup var client: ClientOptions

        func run() async throws {
            guard limit > 0 else { throw CLIError("--limit must be positive (got \(limit))") }
            let batches = try await client.withClients { clients in
                var batches: [Cdp_Ingestion_V1_Batch] = []
                var token = ""
                repeat {
                    let page = try await clients.calling(.ingestion) {
                        try await clients.ingestion.listBatches(
                            .with {
                                $0.pageSize = UInt32(min(limit - batches.count, 1000))
                                $0.pageToken = token
                            },
                            options: client.callOptions
                        )
                    }
                    batches += page.batches
                    token = page.nextPageToken
                } while !token.isEmpty && batches.count < limit
                return Array(batches.prefix(limit))
            }
            if client.json { return try Output.json("batches", batches) }
            Output.table(
                [
                    "batch", "file", "source", "entity", "state", "records", "accepted", "rejected", "refused",
                    "created",
                ],
                batches.map { b in
                    let c = b.counts
                    return [
                        b.batchID, b.fileName, "\(b.source.type):\(b.source.instance)", b.entity,
                        "\(b.state)".replacingOccurrences(of: "BATCH_STATE_", with: "").lowercased(), "\(c.records)",
                        "\(c.accepted)", "\(c.rejected)", "\(c.suppressed)", TimeArgument.format(b.createdAt.date),
                    ]
                }
            )
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a batch: its counts and its record errors (line, field, reason).",
            discussion: "--json prints the Batch (cdp.ingestion.v1). Exit status 1 if the batch failed."
        )

        @Argument(help: "The batch's id (b-…).")
        var id: String

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let batch = try await client.withClients { clients in
                try await clients.calling(.ingestion) {
                    try await clients.ingestion.getBatch(.with { $0.batchID = id }, options: client.callOptions)
                }
            }
            if client.json {
                try Output.json(batch)
            } else {
                IngestCommand.printSummary(batch, waited: false, explicitKey: true)
            }
            if batch.state == .failed || batch.state == .interrupted { throw ExitCode.failure }
        }
    }
}

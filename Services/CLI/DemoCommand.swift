import ArgumentParser
import CDPClient
import CDPProto
import Foundation
import RPCCore

/// `cdp demo`: the story of ARCHITECTURE.md §1, end to end, on the example files of `Examples/bodea/`.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the Bodea story end to end: ingest two Marketo instances and an MDM, segment, activate.",
        discussion: """
            On a fresh data directory: starts the five services (as `cdp up` does, on free ports unless \
            --port-base is given), registers the sources and ingests the files listed in \
            Examples/bodea/ingest.tsv (Marketo 1 and Marketo 2 leads, companies, opportunities and \
            activities, the MDM crosswalk), waiting until they have gone through identity and profile; shows \
            the Townsend account unified across both Marketo instances; creates the Bodea segment (ARCHITECTURE.md \
            §5) as a batch segment and evaluates it as of the story's "now", 2026-05-01 (the page visit is \
            "last month"); prints the audience and why each member qualifies; activates it to a Marketo static \
            list's import file and a LinkedIn Matched Audience's upload file (file exports under --out) and \
            prints what each received; then stops the services. Exit status 1 if the audience is not exactly \
            p2@townsend.com, the person the story is about.

            --attach runs the same flow against services already running (found like every other command's, \
            e.g. the compose deployment); --out is then the directory as the destination service sees it and \
            --exports-here where this machine sees it (a bind mount), if different. --json prints a summary \
            document on stdout (the narrative goes to stderr).
            """
    )

    @Option(help: "A new or empty directory for the services' databases and logs (default: a new temporary one).")
    var dataDir: String?

    @Option(help: "Where the destination writes the exports (default: DATA_DIR/exports).")
    var out: String?

    @Option(
        help:
            "The example files (default: $CDP_EXAMPLES_DIR, ./Examples/bodea, the repository's, or /usr/share/cdp/examples/bodea)."
    )
    var examples: String?

    @Option(help: "Where the cdp-* executables are (default: $CDP_BIN_DIR, else next to cdp, else PATH).")
    var binDir: String?

    @Option(help: "The time the batch segment is evaluated as of (the story's now).")
    var asOf: String = "2026-05-01T00:00:00Z"

    @Flag(help: "Use services already running instead of starting them.")
    var attach = false

    @Option(help: "With --attach: where this machine reads the directory given as --out.")
    var exportsHere: String?

    @OptionGroup var client: ClientOptions

    /// The story's segment (ARCHITECTURE.md §5).
    static let pql = """
        (sum O.amount over O from person.accounts.opportunities where (O.isClosed = true and O.isWon = true)) > 1000000
        and exists E from xEvent where (E.eventType = "web.webpagedetails.pageViews"
            and E.url = "https://bodea.example/new-product" and E.timestamp occurs <= 1 months before now)
        """
    /// Who the story says the audience is.
    static let expectedAudience = ["p2@townsend.com"]
    /// Account 1, Townsend in Marketo 1.
    static let townsend = "sourceKey:0015g00000Twn01AAA@mkto-1.Marketo"

    func run() async throws {
        let asOf = try Arguments.time(asOf, option: "--as-of")
        let examples = try Self.examplesDirectory(examples)
        let manifest = try IngestManifest(directory: examples)
        let json = client.json
        let say: (String) -> Void = { json ? Output.note($0) : Output.line($0) }

        var services: LocalServices?
        var dataDirectory = dataDir
        var clientOptions = client
        if !attach {
            let directory = try Self.freshDataDirectory(dataDir)
            dataDirectory = directory
            let host = client.host ?? ProcessInfo.processInfo.environment["CDP_HOST"] ?? "127.0.0.1"
            let base = try client.portBase ?? PortProbe.freeBase(host: host)
            let local = LocalServices(
                configuration: .init(
                    dataDirectory: directory,
                    host: host,
                    portBase: base,
                    binDirectory: binDir ?? ProcessInfo.processInfo.environment["CDP_BIN_DIR"]
                )
            )
            say("== Starting the five services on \(host):\(base)…\(base + 4), data in \(directory)")
            do {
                for running in try local.start() {
                    say("  \(running.service.executable) pid \(running.pid) on \(running.address)")
                }
                try await local.waitUntilHealthy(timeout: .seconds(60))
            } catch {
                await local.stop()
                throw CLIError("\(error)")
            }
            services = local
            clientOptions.host = host
            clientOptions.portBase = base
            for service in ServiceName.allCases { clientOptions.setAddress(nil, of: service) }
        }
        guard let exportsDirectory = out ?? dataDirectory.map({ $0 + "/exports" }) else {
            throw CLIError("--attach needs --out: the directory the destination service writes the exports to")
        }
        let story = Story(
            options: clientOptions,
            say: say,
            examples: examples,
            manifest: manifest,
            asOf: asOf,
            exports: exportsDirectory,
            exportsHere: exportsHere ?? exportsDirectory
        )
        let outcome: Result<Story.Summary, any Error>
        do {
            outcome = .success(try await clientOptions.withClients { try await story.run(clients: $0) })
        } catch {
            outcome = .failure(error)
        }
        if let services {
            say("\n== Stopping the services (SIGTERM, upstream first)")
            let statuses = await services.stop()
            for (service, status) in statuses.sorted(by: { $0.key < $1.key }) where status != 0 {
                Output.error(
                    "\(service.executable) stopped with status \(status): see \(services.configuration.dataDirectory)/logs"
                )
            }
            say("  stopped; databases and logs kept in \(services.configuration.dataDirectory)")
        }
        let summary = try outcome.get()
        if client.json { try Output.json(summary) }
        guard summary.audience == Self.expectedAudience else {
            throw CLIError(
                "the audience is \(summary.audience), the story says exactly \(Self.expectedAudience) (Examples/bodea/README.md)"
            )
        }
    }

    /// `--examples`, else `$CDP_EXAMPLES_DIR`, else `Examples/bodea` under the working directory or any
    /// parent of the executable (a build of the repository), else the image's copy.
    static func examplesDirectory(_ flag: String?) throws -> String {
        let fileManager = FileManager.default
        if let given = flag ?? ProcessInfo.processInfo.environment["CDP_EXAMPLES_DIR"] {
            guard fileManager.fileExists(atPath: given + "/" + IngestManifest.fileName) else {
                throw CLIError("no \(IngestManifest.fileName) in \(given) (--examples, $CDP_EXAMPLES_DIR)")
            }
            return given
        }
        var candidates = [fileManager.currentDirectoryPath + "/Examples/bodea"]
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent()
        for _ in 0..<6 {
            candidates.append(directory.appendingPathComponent("Examples/bodea").path)
            directory = directory.deletingLastPathComponent()
        }
        candidates.append("/usr/share/cdp/examples/bodea")
        guard
            let found = candidates.first(where: { fileManager.fileExists(atPath: $0 + "/" + IngestManifest.fileName) })
        else {
            throw CLIError(
                "cannot find the example files (Examples/bodea/\(IngestManifest.fileName)); run from the repository or pass --examples"
            )
        }
        return found
    }

    /// `flag` if it is new or empty (created), else a new temporary directory.
    static func freshDataDirectory(_ flag: String?) throws -> String {
        let fileManager = FileManager.default
        guard let flag else {
            let path = NSTemporaryDirectory() + "cdp-demo-" + String(UInt32.random(in: 0...UInt32.max), radix: 36)
            try fileManager.createDirectory(atPath: path, withIntermediateDirectories: true)
            return path
        }
        if let contents = try? fileManager.contentsOfDirectory(atPath: flag), !contents.isEmpty {
            throw CLIError(
                "--data-dir \(flag) is not empty; the demo needs a fresh data directory (remove it or choose another)"
            )
        }
        do {
            try fileManager.createDirectory(atPath: flag, withIntermediateDirectories: true)
        } catch {
            throw CLIError("cannot create --data-dir \(flag): \(error.localizedDescription)")
        }
        return flag
    }
}

/// `Examples/bodea/ingest.tsv`: the files to upload, in order, with their entity, source and format.
struct IngestManifest {
    static let fileName = "ingest.tsv"

    struct Entry {
        var file: String
        var entity: String
        var source: Cdp_Model_V1_Source
        var format: String
    }

    var entries: [Entry]

    init(directory: String) throws {
        let path = directory + "/" + Self.fileName
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw CLIError("cannot read \(path)")
        }
        var entries: [Entry] = []
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let columns = line.split(separator: "\t", omittingEmptySubsequences: false).map {
                $0.trimmingCharacters(in: .whitespaces)
            }
            if index == 0 || line.trimmingCharacters(in: .whitespaces).isEmpty || line.hasPrefix("#") { continue }
            guard columns.count == 4 else {
                throw CLIError(
                    "\(path) line \(index + 1): expected 4 tab-separated columns (file, entity, source, format)"
                )
            }
            entries.append(
                Entry(
                    file: columns[0],
                    entity: columns[1],
                    source: try Arguments.source(columns[2]),
                    format: columns[3]
                )
            )
        }
        guard !entries.isEmpty else { throw CLIError("\(path) lists no files") }
        self.entries = entries
    }
}

/// The demo's steps against running services.
struct Story {
    var options: ClientOptions
    var say: (String) -> Void
    var examples: String
    var manifest: IngestManifest
    var asOf: TimeArgument
    var exports: String
    var exportsHere: String

    struct Summary: Encodable {
        var segment: String
        var asOf: String
        var audience: [String]
        var exports: [String: [String]]
        var batches: Int
        var records: UInt64
    }

    func run(clients: ServiceClients) async throws -> Summary {
        let call = options.callOptions
        say("\n== Sources")
        var registered: Set<String> = []
        for entry in manifest.entries where registered.insert("\(entry.source.type):\(entry.source.instance)").inserted
        {
            _ = try await clients.calling(.ingestion) {
                try await clients.ingestion.createSource(.with { $0.source = entry.source }, options: call)
            }
            say("  \(entry.source.type):\(entry.source.instance)")
        }

        say("\n== Ingesting \(examples) (\(manifest.entries.count) files)")
        var records: UInt64 = 0
        let width = manifest.entries.map(\.file.count).max() ?? 0
        for entry in manifest.entries {
            let path = examples + "/" + entry.file
            let format = try IngestCommand.wireFormat(entry.format, file: entry.file)
            let header = Cdp_Ingestion_V1_BatchHeader.with {
                $0.source = entry.source
                $0.entity = entry.entity
                $0.format = format
                $0.idempotencyKey = "demo:" + entry.file
                $0.fileName = entry.file
            }
            let batch = try await clients.uploadBatch(path: path, header: header)
            let c = batch.counts
            say(
                "  \(entry.file.padding(toLength: width, withPad: " ", startingAt: 0)) \(entry.source.type):\(entry.source.instance) "
                    + "\(entry.entity): \(c.accepted) accepted, \(c.rejected) rejected"
            )
            for error in batch.errors { say("      line \(error.line) \(error.field): \(error.reason)") }
            guard batch.state == .completed else {
                throw CLIError("\(entry.file): the batch \(batch.state): \(batch.failure)")
            }
            records += c.accepted
        }
        say("  waiting until every record has gone through identity and profile to segmentation…")
        try await clients.waitUntilDelivered(timeout: .seconds(120), options: call)
        say("  done: \(records) records")

        say("\n== Townsend, unified: Account 1 of Marketo 1 and Account 2 of Marketo 2 are one company (MDM)")
        let townsend = try Arguments.identity(DemoCommand.townsend)
        let account = try await clients.calling(.profile) {
            try await clients.profile.getAccount(.with { $0.identity = townsend }, options: call)
        }
        say("  fragments: \(account.account.fragmentKeys.joined(separator: ", "))")
        for opportunity in account.opportunities { say("  opportunity: \(Describe.opportunity(opportunity.record))") }
        say("  persons: \(account.persons.map { $0.record.person.email }.joined(separator: ", "))")
        // What each silo alone knows: the won amounts of the opportunities it holds.
        var wonBySource: [String: Double] = [:]
        for opportunity in account.opportunities where opportunity.record.opportunity.isWon {
            let source = opportunity.record.source
            wonBySource["\(source.type):\(source.instance)", default: 0] += opportunity.record.opportunity.amount
        }
        let silos = wonBySource.sorted { $0.key < $1.key }.map { "\($0.key) alone knows \(Format.number($0.value))" }
        say(
            "  won across all its accounts: \(Format.number(account.totals.wonAmount))"
                + "; \(silos.joined(separator: ", ")): only the unified account passes $1M"
        )

        say("\n== The segment (batch, person), ARCHITECTURE.md §5")
        let segment = try await clients.calling(.segmentation) {
            try await clients.segmentation.createSegment(
                .with {
                    $0.name = "Townsend buyers: company won > $1M, visited the new product page last month"
                    $0.pql = DemoCommand.pql
                    $0.entityType = .person
                    $0.mode = .batch
                },
                options: call
            )
        }
        say("  \(segment.id): \(segment.name)")
        for line in segment.pql.split(separator: "\n") { say("    \(line)") }

        say("\n== Evaluating \(segment.id) as of \(asOf) (the story's now: the visit was last month)")
        let job = try await SegmentCommand.evaluate(
            .with {
                $0.segmentIds = [segment.id]
                $0.asOf = asOf.timestamp
            },
            clients: clients,
            options: call,
            quiet: true
        )
        say("  job \(job.id) \(job.state): \(job.evaluated) profiles evaluated, \(job.realized) entered")
        guard job.state == .succeeded else { throw CLIError("the evaluation failed: \(job.error)") }

        let members = try await clients.calling(.segmentation) {
            try await clients.segmentation.getMembers(
                .with {
                    $0.segmentID = segment.id
                    $0.status = .realized
                    $0.pageSize = 1000
                },
                options: call
            ).members
        }
        let audience = members.map { $0.record.record.person.email }.sorted()
        say("\n== The audience: \(audience.count) \(audience.count == 1 ? "person" : "persons")")
        for member in members { say("  \(member.clusterID)  \(Describe.person(member.record.record))") }

        say("\n== Why")
        for email in audience {
            let explanation = try await clients.calling(.segmentation) {
                try await clients.segmentation.explain(
                    .with {
                        $0.segmentID = segment.id
                        $0.identity = .with {
                            $0.namespace = "email"
                            $0.value = email
                        }
                        $0.asOf = asOf.timestamp
                    },
                    options: call
                )
            }
            SegmentCommand.printExplanation(explanation, who: email, indent: "  ", say: say)
        }

        say("\n== Activating \(segment.id) to a Marketo static list and a LinkedIn Matched Audience (file exports)")
        let targets:
            [(key: String, name: String, identity: Cdp_Destination_V1_IdentityMapping, attributes: [String: String])] =
                [
                    (
                        "marketo", "Marketo static list: Townsend buyers (import file)", .email,
                        ["firstName": "firstName", "lastName": "lastName", "title": "jobTitle"]
                    ),
                    ("linkedin", "LinkedIn Matched Audience: Townsend buyers (upload file)", .hashedEmail, [:]),
                ]
        var destinations: [(key: String, id: String)] = []
        for target in targets {
            let destination = try await clients.calling(.destination) {
                try await clients.destination.createDestination(
                    .with {
                        $0.type = .file
                        $0.name = target.name
                        $0.settings = ["directory": exports + "/" + target.key, "format": "csv"]
                    },
                    options: call
                )
            }
            let activation = try await clients.calling(.destination) {
                try await clients.destination.activate(
                    .with {
                        $0.segmentID = segment.id
                        $0.destinationID = destination.id
                        $0.identity = target.identity
                        $0.attributes = target.attributes
                    },
                    options: call
                )
            }
            say("  \(destination.id) \(target.name): activation \(activation.id), files in \(exports)/\(target.key)")
            destinations.append((target.key, destination.id))
        }

        // Wait until each destination has delivered the whole audience.
        let deadline = ContinuousClock.now + .seconds(60)
        var delivered: [String: [Cdp_Destination_V1_Delivery]] = [:]
        for (key, id) in destinations {
            while true {
                let runs = try await clients.calling(.destination) {
                    try await clients.destination.listDeliveries(.with { $0.destinationID = id }, options: call)
                        .deliveries
                }
                if runs.reduce(0, { $0 + Int($1.added) }) >= audience.count, !runs.isEmpty || audience.isEmpty {
                    delivered[key] = runs
                    break
                }
                guard ContinuousClock.now < deadline else {
                    throw CLIError(
                        "destination \(id) has not delivered the audience within 60 s (see `cdp destination list`)"
                    )
                }
                try await Task.sleep(for: .milliseconds(100))
            }
        }

        var exported: [String: [String]] = [:]
        for (key, id) in destinations {
            say("\n== What \(key == "marketo" ? "the Marketo list" : "the LinkedIn audience") received (\(id))")
            for run in delivered[key] ?? [] {
                say(
                    "  delivery \(run.id): \(run.added) added, \(run.removed) removed, \(run.suppressed) suppressed, \(run.failed) failed"
                )
            }
            let directory = exportsHere + "/" + key
            let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter {
                $0.hasSuffix(".csv")
            }
            .sorted()
            if files.isEmpty { say("  (the files are at \(exports)/\(key) on the destination's machine)") }
            for file in files {
                let text = (try? String(contentsOfFile: directory + "/" + file, encoding: .utf8)) ?? ""
                say("  \(directory)/\(file):")
                for line in text.split(separator: "\n") { say("    \(line)") }
                exported[key, default: []].append(directory + "/" + file)
            }
        }
        return Summary(
            segment: segment.id,
            asOf: asOf.description,
            audience: audience,
            exports: exported,
            batches: manifest.entries.count,
            records: records
        )
    }
}

/// Finds ports nothing listens on.
enum PortProbe {
    /// The first base from 17400 up (in steps of 5) whose five ports can all be bound on `host` now.
    static func freeBase(host: String) throws -> Int {
        for base in stride(from: 17400, to: 60000, by: 5)
        where (0..<5).allSatisfy({ canBind(host: host, port: base + $0) }) {
            return base
        }
        throw CLIError("no five free consecutive ports found on \(host); pass --port-base")
    }

    static func canBind(host: String, port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { return true }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }
}

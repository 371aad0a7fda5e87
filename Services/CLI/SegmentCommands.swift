import ArgumentParser
import CDPClient
import CDPProto
import Foundation
import RPCCore

/// `cdp segment …`: definitions, evaluations, members, explanations.
struct SegmentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "segment",
        abstract: "Create, evaluate and inspect segments written in PQL.",
        discussion: """
            A segment is a PQL definition over people (rooted at `person` and `xEvent`) or accounts (rooted at \
            `account`), e.g. `person.accounts.opportunities[isWon = true].count() > 0`. Streaming segments are \
            evaluated on every changed profile as it arrives; batch segments when `segment evaluate` runs. The \
            dialect: Services/Segmentation/README.md.
            """,
        subcommands: [
            Create.self, Update.self, List.self, Get.self, Delete.self, Estimate.self, Evaluate.self, Job.self,
            Members.self,
            Explain.self,
        ]
    )

    static func entityType(_ name: String) throws -> Cdp_Model_V1_EntityType {
        switch name.lowercased() {
        case "person": return .person
        case "account": return .account
        default: throw CLIError("--entity must be person or account (got \"\(name)\")")
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a segment and print its id.",
            discussion: """
                A definition that does not parse or check is refused with its line, column and what was expected. \
                The new segment is evaluated over the existing profiles at once by a batch job (named on stderr; \
                `cdp segment job ID --wait` follows it, or give --wait here); a streaming segment also follows \
                every profile that changes from then on.
                """
        )

        @Option(help: "A name for people.")
        var name: String

        @Argument(help: ArgumentHelp("The PQL definition (or --pql, --pql-file).", valueName: "pql"))
        var definitionText: String?

        @OptionGroup var definition: DefinitionOptions

        @Option(help: "person or account.")
        var entity: String = "person"

        @Option(help: "streaming (evaluated as profiles change) or batch (evaluated by `segment evaluate`).")
        var mode: String = "streaming"

        @Flag(help: "Return once the first evaluation over the existing profiles has ended.")
        var wait = false

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let entityType = try SegmentCommand.entityType(entity)
            let request = try Cdp_Segmentation_V1_CreateSegmentRequest.with {
                $0.name = name
                $0.pql = try definition.text(positional: definitionText)!
                $0.entityType = entityType
                $0.mode = try SegmentCommand.mode(mode)
            }
            try await SegmentCommand.save(client: client, wait: wait) { clients in
                try await clients.segmentation.createSegment(request, options: client.callOptions)
            }
        }
    }

    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change a segment's name, definition or mode.",
            discussion: """
                A new definition is checked as at creation (refused with its line and column). A new definition \
                or mode is evaluated over the existing profiles at once by a batch job, as at creation; members \
                that no longer match exit (destinations remove them).
                """
        )

        @Argument(help: "The segment's id.")
        var id: String

        @Option(help: "A new name.")
        var name: String?

        @OptionGroup var definition: DefinitionOptions

        @Option(help: "streaming or batch.")
        var mode: String?

        @Flag(help: "Return once the evaluation over the existing profiles has ended.")
        var wait = false

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let pql = try definition.text(required: false)
            guard name != nil || pql != nil || mode != nil else {
                throw CLIError("nothing to change: give --name, --pql, --pql-file or --mode")
            }
            let request = try Cdp_Segmentation_V1_UpdateSegmentRequest.with {
                $0.id = id
                if let name { $0.name = name }
                if let pql { $0.pql = pql }
                if let mode { $0.mode = try SegmentCommand.mode(mode) }
            }
            try await SegmentCommand.save(client: client, wait: wait) { clients in
                try await clients.segmentation.updateSegment(request, options: client.callOptions)
            }
        }
    }

    /// Saves a segment (`call`), follows its evaluation job with `wait`, and prints it: the id on stdout,
    /// the job on stderr. Exit status 1 if the job failed.
    static func save(
        client: ClientOptions,
        wait: Bool,
        _ call: @escaping @Sendable (ServiceClients) async throws -> Cdp_Segmentation_V1_Segment
    ) async throws {
        let (segment, job) = try await client.withClients { clients in
            let segment = try await clients.calling(.segmentation) { try await call(clients) }
            guard wait, !segment.evaluationJobID.isEmpty else {
                return (segment, Cdp_Segmentation_V1_EvaluationJob?.none)
            }
            let job = try await SegmentCommand.follow(
                segment.evaluationJobID,
                clients: clients,
                options: client.callOptions,
                quiet: client.json
            )
            return (segment, job)
        }
        if client.json {
            try Output.json(segment)
        } else {
            Output.line(segment.id)
            if let job {
                // stdout stays the id alone (`seg=$(cdp segment create … --wait)`); the job's end is a note.
                SegmentCommand.printJob(job, to: Output.note)
            } else if !segment.evaluationJobID.isEmpty {
                Output.note(
                    "\(segment.id): evaluating over the existing profiles in job \(segment.evaluationJobID) "
                        + "(`cdp segment job \(segment.evaluationJobID) --wait` follows it)"
                )
            }
        }
        if let job, job.state != .succeeded { throw ExitCode.failure }
    }

    static func mode(_ text: String) throws -> Cdp_Segmentation_V1_EvaluationMode {
        switch text.lowercased() {
        case "streaming": return .streaming
        case "batch": return .batch
        default: throw CLIError("--mode must be streaming or batch (got \"\(text)\")")
        }
    }

    struct Job: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show an evaluation job (started by `segment evaluate`, `segment create` or an update).",
            discussion: "--json prints the EvaluationJob; with --wait, exit status 1 if the job failed."
        )

        @Argument(help: "The job's id, e.g. job-3.")
        var id: String

        @Flag(help: "Wait until the job ends, showing progress on a terminal.")
        var wait = false

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let job = try await client.withClients { clients in
                if wait {
                    return try await SegmentCommand.follow(
                        id,
                        clients: clients,
                        options: client.callOptions,
                        quiet: client.json
                    )
                }
                return try await clients.calling(.segmentation) {
                    try await clients.segmentation.getEvaluation(.with { $0.id = id }, options: client.callOptions)
                }
            }
            if client.json { try Output.json(job) } else { SegmentCommand.printJob(job) }
            if wait, job.state != .succeeded { throw ExitCode.failure }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the segments.")

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let segments = try await client.withClients { clients in
                try await clients.calling(.segmentation) {
                    try await clients.segmentation.listSegments(.init(), options: client.callOptions).segments
                }
            }
            if client.json { return try Output.json("segments", segments) }
            Output.table(
                ["id", "name", "entity", "mode", "members", "updated"],
                segments.map {
                    [
                        $0.id, $0.name, Self.entity($0.entityType), Self.mode($0.mode), "\($0.realized)",
                        TimeArgument.format($0.updatedAt.date),
                    ]
                }
            )
        }

        static func entity(_ type: Cdp_Model_V1_EntityType) -> String { type == .account ? "account" : "person" }
        static func mode(_ mode: Cdp_Segmentation_V1_EvaluationMode) -> String {
            mode == .batch ? "batch" : "streaming"
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one segment.")

        @Argument(help: "The segment's id, e.g. s1.")
        var id: String

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let segment = try await client.withClients { clients in
                try await clients.calling(.segmentation) {
                    try await clients.segmentation.getSegment(.with { $0.id = id }, options: client.callOptions)
                }
            }
            if client.json { return try Output.json(segment) }
            Output.line("\(segment.id): \(segment.name)")
            Output.line("  \(List.entity(segment.entityType)), \(List.mode(segment.mode)), \(segment.realized) members")
            if !segment.dependsOn.isEmpty { Output.line("  depends on: \(segment.dependsOn.joined(separator: ", "))") }
            if segment.dependsOnTime { Output.line("  membership can change with time alone (event windows)") }
            Output.line(
                "  created \(TimeArgument.format(segment.createdAt.date)), updated \(TimeArgument.format(segment.updatedAt.date))"
            )
            for line in segment.pql.split(separator: "\n", omittingEmptySubsequences: false) {
                Output.line("    \(line)")
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a segment; its members exit. Refused while another segment names it.",
            discussion: """
                Every member exits, so the destinations the segment is activated to remove them all: unless \
                --force is given, a segment with an active activation is not deleted (deactivate it first, \
                and what was delivered stays at the destination).
                """
        )

        @Argument(help: "The segment's id.")
        var id: String

        @Flag(help: "Delete it even if it is activated (its members are removed from those destinations).")
        var force = false

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let response = try await client.withClients { clients in
                if !force {
                    let active: [Cdp_Destination_V1_Activation]
                    do {
                        active = try await clients.activations(segment: id, options: client.callOptions).filter(
                            \.active
                        )
                    } catch let error as ServiceCallError {
                        throw CLIError(
                            "cannot tell whether \(id) is activated (destination: \(error.reason)); give --force to "
                                + "delete it anyway"
                        )
                    }
                    if !active.isEmpty {
                        let names = active.map { "\($0.destinationID) (\($0.id))" }.joined(separator: ", ")
                        throw CLIError(
                            "\(id) is activated to \(names): deleting it removes its members from there; "
                                + "`cdp deactivate \(active[0].id)` first to keep them, or give --force"
                        )
                    }
                }
                return try await clients.calling(.segmentation) {
                    try await clients.segmentation.deleteSegment(.with { $0.id = id }, options: client.callOptions)
                }
            }
            if client.json { try Output.json(response) } else { Output.line("deleted \(id)") }
        }
    }

    struct Estimate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Count who a definition selects, without saving anything.",
            discussion: """
                Exact, not sampled: every profile of the segmentation service's partition is evaluated (with \
                several segmentation replicas, each counts its own partition).
                """
        )

        @Argument(help: ArgumentHelp("The PQL definition (or --pql, --pql-file).", valueName: "pql"))
        var definitionText: String?

        @OptionGroup var definition: DefinitionOptions

        @Option(help: "person or account.")
        var entity: String = "person"

        @Option(help: "Evaluate as of this time (RFC 3339 or a date; default: now).")
        var asOf: String?

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let request = try Cdp_Segmentation_V1_EstimateRequest.with {
                $0.pql = try definition.text(positional: definitionText)!
                $0.entityType = try SegmentCommand.entityType(entity)
                if let asOf { $0.asOf = try Arguments.time(asOf).timestamp }
            }
            let estimate = try await client.withClients { clients in
                try await Output.showingElapsed("estimating over every profile…") {
                    try await clients.calling(.segmentation) {
                        try await clients.segmentation.estimate(request, options: client.longCallOptions)
                    }
                }
            }
            if client.json { return try Output.json(estimate) }
            Output.line("\(estimate.matched) of \(estimate.evaluated) as of \(TimeArgument.format(estimate.asOf.date))")
        }
    }

    struct Evaluate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Evaluate segments over every profile and wait until the job ends.",
            discussion: """
                Without ids: every segment. As of a past time (--as-of), only batch segments are evaluated \
                (streaming segments always mean now). --json prints the finished EvaluationJob; exit status 1 \
                if the job failed.
                """
        )

        @Argument(help: "The segments to evaluate (default: all).")
        var ids: [String] = []

        @Option(help: "Evaluate as of this time (RFC 3339 or a date; default: now).")
        var asOf: String?

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let request = try Cdp_Segmentation_V1_EvaluateRequest.with {
                $0.segmentIds = ids
                if let asOf { $0.asOf = try Arguments.time(asOf).timestamp }
            }
            let job = try await client.withClients { clients in
                try await SegmentCommand.evaluate(
                    request,
                    clients: clients,
                    options: client.callOptions,
                    quiet: client.json
                )
            }
            if client.json { try Output.json(job) } else { SegmentCommand.printJob(job) }
            if job.state != .succeeded { throw ExitCode.failure }
        }
    }

    /// Starts a job and follows it to its end.
    static func evaluate(
        _ request: Cdp_Segmentation_V1_EvaluateRequest,
        clients: ServiceClients,
        options: CallOptions,
        quiet: Bool
    ) async throws -> Cdp_Segmentation_V1_EvaluationJob {
        let job = try await clients.calling(.segmentation) {
            try await clients.segmentation.evaluate(request, options: options)
        }
        return try await follow(job.id, clients: clients, options: options, quiet: quiet)
    }

    /// Polls a job to its end, showing progress on stderr when it is a terminal.
    static func follow(
        _ id: String,
        clients: ServiceClients,
        options: CallOptions,
        quiet: Bool
    ) async throws -> Cdp_Segmentation_V1_EvaluationJob {
        var job = try await clients.calling(.segmentation) {
            try await clients.segmentation.getEvaluation(.with { $0.id = id }, options: options)
        }
        var lastShown: UInt64 = .max
        while job.state == .running {
            if !quiet, job.evaluated != lastShown, Output.stderrIsTerminal {
                Output.write("\rjob \(job.id): \(job.evaluated) profiles evaluated", to: STDERR_FILENO)
                lastShown = job.evaluated
            }
            try await Task.sleep(for: .milliseconds(100))
            job = try await clients.calling(.segmentation) {
                try await clients.segmentation.getEvaluation(.with { $0.id = id }, options: options)
            }
        }
        if lastShown != .max { Output.write("\n", to: STDERR_FILENO) }
        return job
    }

    static func printJob(_ job: Cdp_Segmentation_V1_EvaluationJob, to print: (String) -> Void = Output.line) {
        let running = job.state == .running
        let seconds = (running ? Date() : job.finishedAt.date).timeIntervalSince(job.startedAt.date)
        print(
            "job \(job.id) \(job.state) as of \(TimeArgument.format(job.asOf.date)): segments "
                + "\(job.segmentIds.joined(separator: ", ")); \(job.evaluated) profiles evaluated "
                + (running ? "so far, for " : "in ") + String(format: "%.2f s", seconds)
                + "; \(job.realized) entered, \(job.exited) exited"
        )
        if !job.error.isEmpty { print("  error: \(job.error)") }
    }

    struct Members: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List a segment's members.",
            discussion: """
                --json: an array of {"id" (the person's or account's cluster id), "entity", "emails", "name", \
                "status" (realized or exited), "since" (RFC 3339), "version"}; ids and versions are strings, as \
                in every JSON document of cdp (the services' 64-bit numbers).
                """
        )

        @Argument(help: "The segment's id.")
        var id: String

        @Option(help: "realized or exited (default: both).")
        var status: String?

        @OptionGroup var client: ClientOptions

        struct Member: Encodable {
            var id: String
            var entity: String
            var emails: [String]
            var name: String
            var status: String
            var since: String
            var version: String
        }

        func run() async throws {
            var filter = Cdp_Segmentation_V1_MembershipStatus.unspecified
            switch status?.lowercased() {
            case nil: break
            case "realized": filter = .realized
            case "exited": filter = .exited
            default: throw CLIError("--status must be realized or exited (got \"\(status!)\")")
            }
            let members = try await client.withClients { clients in
                var members: [Cdp_Segmentation_V1_Member] = []
                var token = ""
                repeat {
                    let page = try await clients.calling(.segmentation) {
                        try await clients.segmentation.getMembers(
                            .with {
                                $0.segmentID = id
                                $0.status = filter
                                $0.pageSize = 1000
                                $0.pageToken = token
                            },
                            options: client.callOptions
                        )
                    }
                    members += page.members
                    token = page.nextPageToken
                } while !token.isEmpty
                return members
            }
            let rows = members.map { member in
                let record = member.record.record
                let isAccount = member.entityType == .account
                return Member(
                    id: String(member.clusterID),
                    entity: isAccount ? "account" : "person",
                    emails: Self.emails(of: member),
                    name: isAccount ? record.account.name : Describe.person(record),
                    status: member.status == .exited ? "exited" : "realized",
                    since: TimeArgument.format(member.since.date),
                    version: String(member.version)
                )
            }
            if client.json { return try Output.json(rows) }
            Output.table(
                ["id", "status", "since", "emails", "who"],
                rows.map { ["\($0.id)", $0.status, $0.since, $0.emails.joined(separator: " "), $0.name] }
            )
        }

        /// A person's emails: the unified record's email (the member record carries one; an account has none).
        static func emails(of member: Cdp_Segmentation_V1_Member) -> [String] {
            guard member.entityType != .account else { return [] }
            let email = member.record.record.person.email
            return email.isEmpty ? [] : [email]
        }
    }

    struct Explain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Explain why a person or account is in a segment or not: the parts that decided, and their values."
        )

        @Argument(help: "The segment's id.")
        var id: String

        @Option(help: "The person or account, NAMESPACE:VALUE, e.g. email:p2@townsend.com.")
        var identity: String

        @Option(help: "Explain as of this time (RFC 3339 or a date; default: now).")
        var asOf: String?

        @OptionGroup var client: ClientOptions

        func run() async throws {
            let request = try Cdp_Segmentation_V1_ExplainRequest.with {
                $0.segmentID = id
                $0.identity = try Arguments.identity(identity)
                if let asOf { $0.asOf = try Arguments.time(asOf).timestamp }
            }
            let explanation = try await client.withClients { clients in
                try await clients.calling(.segmentation) {
                    try await clients.segmentation.explain(request, options: client.callOptions)
                }
            }
            if client.json { return try Output.json(explanation) }
            SegmentCommand.printExplanation(explanation, who: identity)
        }
    }

    static func printExplanation(
        _ explanation: Cdp_Segmentation_V1_Explanation,
        who: String,
        indent: String = "",
        say: (String) -> Void = { Output.line($0) }
    ) {
        say(
            "\(indent)\(who) (cluster \(explanation.clusterID)) \(explanation.matched ? "matches" : "does not match") "
                + "\(explanation.segmentID) as of \(TimeArgument.format(explanation.asOf.date))"
        )
        for step in explanation.steps {
            let text = step.text.replacingOccurrences(of: "\n", with: " ")
            say("\(indent)  line \(step.line), column \(step.column): \(text)")
            say("\(indent)    = \(step.result)")
            for entity in step.entities {
                let value = entity.value.isEmpty ? "" : " → \(entity.value)"
                say("\(indent)      \(entity.kind) \(entity.key): \(entity.label)\(value)")
            }
        }
    }
}

/// A PQL definition given inline or in a file.
struct DefinitionOptions: ParsableArguments {
    @Option(help: "The PQL definition.")
    var pql: String?

    @Option(help: "A file holding the PQL definition (- reads standard input); line and column of errors refer to it.")
    var pqlFile: String?

    /// The definition; nil when neither is given and it is not `required`. `positional` is the
    /// definition given as the command's argument (`cdp segment estimate 'person.score > 50'`), the same
    /// as `--pql`.
    func text(required: Bool = true, positional: String? = nil) throws -> String? {
        if let positional {
            guard pql == nil && pqlFile == nil else {
                throw CLIError("give the definition once: as the argument, --pql or --pql-file")
            }
            return positional
        }
        switch (pql, pqlFile) {
        case (_?, _?): throw CLIError("give --pql or --pql-file, not both")
        case (let text?, nil): return text
        case (nil, let path?):
            let data: Data?
            if path == "-" {
                data = try? FileHandle.standardInput.readToEnd()
            } else {
                data = FileManager.default.contents(atPath: path)
            }
            guard let data, let text = String(data: data, encoding: .utf8) else {
                throw CLIError(
                    "cannot read \(path)"
                        + (FileManager.default.fileExists(atPath: path) || path == "-"
                            ? " as UTF-8 text" : ": no such file")
                )
            }
            guard !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
                throw CLIError("\(path) holds no definition")
            }
            return text
        case (nil, nil):
            if required { throw CLIError("give the definition as the argument, with --pql or with --pql-file") }
            return nil
        }
    }
}

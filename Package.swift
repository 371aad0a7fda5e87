// swift-tools-version:6.1
// The customer data platform: five services over a gRPC-compatible RPC layer built on libnghttp2 + SwiftNIO.
import PackageDescription

/// Every target is compiled in Swift 6 language mode with strict concurrency (the tools-version default).
let package = Package(
    name: "cdp",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "RPCCore", targets: ["RPCCore"]),
        .library(name: "RPCHTTP2", targets: ["RPCHTTP2"]),
        .library(name: "RPCServices", targets: ["RPCServices"]),
        .executable(name: "cdp-interop-server", targets: ["cdp-interop-server"]),
        .executable(name: "cdp-interop-client", targets: ["cdp-interop-client"]),
        .executable(name: "protoc-gen-cdp-rpc", targets: ["protoc-gen-cdp-rpc"]),
        .library(name: "CDPProto", targets: ["CDPProto"]),
        .executable(name: "cdp-ingestion", targets: ["cdp-ingestion"]),
        .executable(name: "cdp-identity", targets: ["cdp-identity"]),
        .executable(name: "cdp-profile", targets: ["cdp-profile"]),
        .executable(name: "cdp-segmentation", targets: ["cdp-segmentation"]),
        .executable(name: "cdp-destination", targets: ["cdp-destination"]),
        .executable(name: "cdp", targets: ["cdp"]),
        .library(name: "CDPClient", targets: ["CDPClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", exact: "2.101.3"),
        .package(url: "https://github.com/apple/swift-protobuf", exact: "1.39.0"),
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/adam-fowler/compress-nio", exact: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", exact: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift", exact: "7.10.0"),
        .package(url: "https://github.com/apple/swift-crypto", exact: "3.12.3"),
        .package(url: "https://github.com/swift-server/async-http-client", exact: "1.37.0"),
    ],
    targets: [
        // libnghttp2, behind one small C module; only RPCHTTP2 imports it (privately).
        .systemLibrary(
            name: "CNGHTTP2",
            path: "Shared/CNGHTTP2",
            pkgConfig: "libnghttp2",
            providers: [.apt(["libnghttp2-dev"])]
        ),
        // The transport-independent RPC vocabulary: status, errors, metadata, method descriptors,
        // handler and client APIs. No NIO, no nghttp2.
        .target(
            name: "RPCCore",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
            path: "Shared/RPCCore"
        ),
        // gRPC over HTTP/2 on nghttp2 + SwiftNIO: server, client connection, message framing.
        .target(
            name: "RPCHTTP2",
            dependencies: [
                "RPCCore",
                "CNGHTTP2",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "CompressNIO", package: "compress-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Shared/RPCHTTP2"
        ),
        // Standard services every server offers: grpc.health.v1 and server reflection.
        .target(
            name: "RPCServices",
            dependencies: ["RPCCore", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            path: "Shared/RPCServices"
        ),
        // The protoc plugin that writes typed stubs and reflection descriptors for RPCCore.
        .executableTarget(
            name: "protoc-gen-cdp-rpc",
            dependencies: [.product(name: "SwiftProtobufPluginLibrary", package: "swift-protobuf")],
            path: "Shared/ProtocGenRPC"
        ),
        // The data model and every service's API: generated messages and stubs (proto/cdp).
        .target(
            name: "CDPProto",
            dependencies: ["RPCCore", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            path: "Shared/CDPProto"
        ),
        // glibc's mallopt, for MemoryTuning, and mallinfo2, for the benchmarks' heap figures (Swift's Glibc
        // module exports neither).
        .systemLibrary(name: "CMalloc", path: "Shared/CMalloc"),
        // What every service process shares: the outbox relay, wake-ups, addresses, allocator tuning.
        .target(
            name: "ServiceSupport",
            dependencies: [
                "RPCCore", "RPCHTTP2",
                "CMalloc",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Shared/ServiceSupport"
        ),
        // Gregorian dates as days since 1970, without Foundation: ingestion's parsers, PQL's calendar.
        .target(name: "CivilDate", path: "Shared/CivilDate"),
        // Per-record SQLite statements through the C API, for the stores' hot paths.
        .target(
            name: "SQLiteSupport",
            dependencies: [
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
            ],
            path: "Shared/SQLiteSupport"
        ),

        // MARK: Ingestion
        // File formats: streaming CSV and NDJSON readers, canonical schemas, native mapping tables,
        // validation and normalization. No storage, no RPC.
        .target(
            name: "IngestionFormats",
            dependencies: ["CDPProto", "CivilDate", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            path: "Services/Ingestion/Formats"
        ),
        // Ingestion's storage behind one protocol; the embedded SQLite implementation.
        .target(
            name: "IngestionStore",
            dependencies: [
                "CDPProto", "SQLiteSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
            ],
            path: "Services/Ingestion/Store"
        ),
        // The cdp.ingestion.v1.Ingestion service.
        .target(
            name: "IngestionService",
            dependencies: [
                "CDPProto", "IdentityGraph", "IdentityRules", "IngestionFormats", "IngestionStore", "RPCCore",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Services/Ingestion/Service"
        ),
        .executableTarget(
            name: "cdp-ingestion",
            dependencies: [
                "CDPProto", "IngestionService", "IngestionStore", "RPCCore", "RPCHTTP2", "RPCServices",
                "ServiceSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Services/Ingestion/Main"
        ),

        // MARK: Identity
        // The identity graph: union-find over identities with guardrails, merges and splits. No I/O.
        .target(
            name: "IdentityGraph",
            path: "Services/Identity/Graph"
        ),

        // Which identities and references each kind of source record yields.
        .target(
            name: "IdentityRules",
            dependencies: ["CDPProto", "IdentityGraph", .product(name: "Crypto", package: "swift-crypto")],
            path: "Services/Identity/Rules"
        ),
        // Identity's storage behind one protocol; the embedded SQLite implementation.
        .target(
            name: "IdentityStore",
            dependencies: [
                "CDPProto", "IdentityGraph", "IdentityRules", "SQLiteSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Services/Identity/Store"
        ),
        // The engine (graphs + store on a thread of their own) and the cdp.identity.v1.Identity service.
        .target(
            name: "IdentityService",
            dependencies: [
                "CDPProto", "IdentityGraph", "IdentityRules", "IdentityStore", "RPCCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Services/Identity/Service"
        ),
        .executableTarget(
            name: "cdp-identity",
            dependencies: [
                "CDPProto", "IdentityGraph", "IdentityRules", "IdentityService", "IdentityStore", "RPCCore",
                "RPCHTTP2", "RPCServices", "ServiceSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Services/Identity/Main"
        ),
        // Identity benchmarks (release build): the in-memory graph alone, and the engine with its store.
        .executableTarget(
            name: "identity-benchmark",
            dependencies: [
                "BenchmarkSupport",
                "CDPProto", "IdentityGraph", "IdentityRules", "IdentityService", "IdentityStore",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Benchmarks/IdentityBenchmark"
        ),

        // MARK: Profile
        // Merge policies and the unifier; the relations' vocabulary. No I/O.
        .target(
            name: "ProfileModel",
            dependencies: ["CDPProto", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            path: "Services/Profile/Model"
        ),
        // Profile's storage behind one protocol; the embedded SQLite implementation, which builds the views.
        .target(
            name: "ProfileStore",
            dependencies: [
                "CDPProto", "IdentityRules", "ProfileModel", "SQLiteSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Services/Profile/Store"
        ),
        // The engine (the store on a thread of its own) and the cdp.profile.v1.Profile service.
        .target(
            name: "ProfileService",
            dependencies: [
                "CDPProto", "IdentityGraph", "IdentityRules", "ProfileStore", "RPCCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Services/Profile/Service"
        ),
        .executableTarget(
            name: "cdp-profile",
            dependencies: [
                "CDPProto", "IdentityRules", "ProfileModel", "ProfileService", "ProfileStore", "RPCCore", "RPCHTTP2",
                "RPCServices",
                "ServiceSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Services/Profile/Main"
        ),

        // Profile benchmark (release build): fragments/s, events/s, view builds/s, lookups.
        .executableTarget(
            name: "profile-benchmark",
            dependencies: [
                "BenchmarkSupport", "CDPProto", "ProfileStore",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Benchmarks/ProfileBenchmark"
        ),

        // What the benchmark programs share: a seeded random generator, the heap in use.
        .target(name: "BenchmarkSupport", dependencies: ["CMalloc"], path: "Benchmarks/Support"),

        // MARK: Segmentation
        // The PQL dialect: parser with positioned errors, the view schema, the type checker. No I/O.
        .target(
            name: "SegmentationLanguage",
            dependencies: ["CivilDate"],
            path: "Services/Segmentation/Language"
        ),
        // Checked definitions compiled to closures over person and account views; explanations.
        .target(
            name: "SegmentationEvaluation",
            dependencies: [
                "SegmentationLanguage", "CDPProto", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Services/Segmentation/Evaluation",
            // Evaluation reads the frame's arrays in closures, millions of times a second; dynamic
            // exclusivity checks on those class properties cost 13% of it (perf, segmentation-benchmark).
            // The frame is confined to one thread and no access overlaps another.
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])]
        ),
        // The state segments are evaluated on, in memory, kept up to date by profile's changes; it
        // builds person and account views as profile does and says what each change touches.
        .target(
            name: "SegmentationState",
            dependencies: [
                "CDPProto", "SegmentationEvaluation", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Services/Segmentation/State"
        ),
        // Segments, saved state, memberships, time re-checks, jobs and the outbox to destination.
        .target(
            name: "SegmentationStore",
            dependencies: [
                "CDPProto", "SQLiteSupport", .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Services/Segmentation/Store"
        ),
        // The engine actor, the RPC service, batch jobs, time re-checks and profile as a view source (for
        // Explain).
        .target(
            name: "SegmentationService",
            dependencies: [
                "CDPProto", "RPCCore", "SegmentationLanguage", "SegmentationEvaluation", "SegmentationState",
                "SegmentationStore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Services/Segmentation/Service"
        ),
        .executableTarget(
            name: "cdp-segmentation",
            dependencies: [
                "CDPProto", "RPCCore", "RPCHTTP2", "RPCServices", "SegmentationService", "SegmentationStore",
                "ServiceSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Services/Segmentation/Main"
        ),
        // Batch evaluation throughput and streaming latency over synthetic views.
        .executableTarget(
            name: "segmentation-benchmark",
            dependencies: [
                "BenchmarkSupport",
                "CDPProto", "SegmentationEvaluation", "SegmentationLanguage", "SegmentationService",
                "SegmentationState", "SegmentationStore",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Benchmarks/SegmentationBenchmark"
        ),

        // MARK: Destination
        // Destinations, activations, members, the delivery queue, what was delivered, the run log.
        .target(
            name: "DestinationStore",
            dependencies: [
                "CDPProto", "SQLiteSupport", .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Services/Destination/Store"
        ),
        // What each kind of destination is told, and how: identity mapping, consent, file exports.
        .target(
            name: "DestinationConnectors",
            dependencies: [
                "CDPProto", "DestinationStore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Services/Destination/Connectors"
        ),
        // The engine actor, the delivery workers (one per destination) and the RPC service.
        .target(
            name: "DestinationService",
            dependencies: [
                "CDPProto", "RPCCore", "ServiceSupport", "DestinationStore", "DestinationConnectors",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Services/Destination/Service"
        ),
        .executableTarget(
            name: "cdp-destination",
            dependencies: [
                "CDPProto", "RPCCore", "RPCHTTP2", "RPCServices", "DestinationConnectors", "DestinationService",
                "DestinationStore", "ServiceSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Services/Destination/Main"
        ),

        // Intake and delivery throughput, and change-to-delivery latency, of the destination engine.
        .executableTarget(
            name: "destination-benchmark",
            dependencies: [
                "BenchmarkSupport", "CDPProto", "DestinationConnectors", "DestinationService", "DestinationStore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Benchmarks/DestinationBenchmark"
        ),

        // MARK: Client
        // What every client of the platform needs: where the five services are, typed clients, their
        // backlogs and waiting for data to travel through them, and running them as local processes.
        .target(
            name: "CDPClient",
            dependencies: [
                "CDPProto", "RPCCore", "RPCHTTP2", "RPCServices", "ServiceSupport",
                .product(name: "CompressNIO", package: "compress-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Shared/CDPClient"
        ),
        // `cdp`, the command-line client: cdp up, status, demo, ingest, profile, segment, destination, ….
        .executableTarget(
            name: "cdp",
            dependencies: [
                "CDPClient", "CDPProto", "RPCCore", "RPCServices", "ServiceSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            path: "Services/CLI"
        ),

        // grpc.testing messages and stubs, used by the interop programs and the tests.
        .target(
            name: "InteropProto",
            dependencies: ["RPCCore", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            path: "Tests/Interop/InteropProto"
        ),
        .executableTarget(
            name: "cdp-interop-server",
            dependencies: [
                "RPCCore", "RPCHTTP2", "RPCServices", "InteropProto",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Tests/Interop/InteropServer"
        ),
        .executableTarget(
            name: "cdp-interop-client",
            dependencies: [
                "RPCCore", "RPCHTTP2", "InteropProto",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Tests/Interop/InteropClient"
        ),
        .testTarget(
            name: "CDPClientTests",
            dependencies: ["CDPClient", "RPCCore"],
            path: "Tests/CDPClientTests"
        ),
        .testTarget(
            name: "RPCCoreTests",
            dependencies: ["RPCCore"],
            path: "Tests/RPCCoreTests"
        ),
        .testTarget(
            name: "RPCHTTP2Tests",
            dependencies: [
                "RPCCore", "RPCHTTP2", "RPCServices", "InteropProto",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            path: "Tests/RPCHTTP2Tests"
        ),
        .testTarget(
            name: "IngestionTests",
            dependencies: [
                "TestSupport", "CDPProto", "IngestionFormats", "IngestionStore", "IngestionService", "RPCCore",
                "RPCHTTP2",
                "ServiceSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/IngestionTests",
            exclude: ["Fixtures"]
        ),
        // What the service tests share: the Bodea records of the running example, the seeded generator
        // of the randomized tests (the benchmarks').
        .target(
            name: "TestSupport",
            dependencies: ["BenchmarkSupport", "CDPProto", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            path: "Tests/Support"
        ),
        // Identity in process feeding a profile store, for the profile and segmentation tests.
        .target(
            name: "PipelineSupport",
            dependencies: [
                "TestSupport", "CDPProto", "IdentityService", "IdentityStore", "ProfileStore",
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Tests/PipelineSupport"
        ),
        .testTarget(
            name: "IdentityTests",
            dependencies: [
                "TestSupport", "IdentityGraph", "IdentityRules", "IdentityStore", "IdentityService", "CDPProto",
                "RPCCore",
                "RPCHTTP2", "ServiceSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Tests/IdentityTests"
        ),
        .testTarget(
            name: "ProfileTests",
            dependencies: [
                "TestSupport", "PipelineSupport", "CDPProto", "IdentityGraph", "IdentityRules", "IdentityService",
                "IdentityStore", "ProfileModel",
                "ProfileService", "ProfileStore", "RPCCore", "RPCHTTP2", "SegmentationState", "ServiceSupport",
                "SQLiteSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Tests/ProfileTests"
        ),
        .testTarget(
            name: "DestinationTests",
            dependencies: [
                "CDPProto", "DestinationConnectors", "DestinationService", "DestinationStore", "RPCCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Tests/DestinationTests"
        ),
        .testTarget(
            name: "SegmentationTests",
            dependencies: [
                "TestSupport", "PipelineSupport", "CDPProto", "ProfileStore", "SegmentationLanguage",
                "SegmentationEvaluation", "SegmentationState", "SegmentationStore", "SegmentationService",
                "ProfileService", "RPCCore",
                "RPCHTTP2", "ServiceSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Tests/SegmentationTests"
        ),
    ]
)

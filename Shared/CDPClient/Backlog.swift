import CDPProto
import Foundation
import RPCCore
import SwiftProtobuf

/// How much work a service holds that its downstream service has not yet acknowledged: ingestion's
/// records not yet taken by identity, identity's updates not yet applied by profile, profile's state
/// changes not yet taken by segmentation, segmentation's membership changes not yet taken by
/// destination, and destination's members not yet delivered (over all its destinations).
public struct Backlog: Sendable, Equatable {
    /// Items waiting.
    public var pending: UInt64
    /// When the oldest waiting item was committed; nil when nothing waits.
    public var oldestPending: Date?
    /// Items handed on since the store was created (what `pending` drains into); zero for destination.
    public var handedOn: UInt64
    /// The last error while handing on, if the last attempt failed.
    public var lastError: String

    /// What the items are, for messages: "records", "updates", "state changes", "changes", "members".
    public static func unit(of service: ServiceName) -> String {
        switch service {
        case .ingestion: "records"
        case .identity: "updates"
        case .profile: "state changes"
        case .segmentation: "changes"
        case .destination: "members"
        }
    }
}

extension ServiceClients {
    /// The backlog of `service`, from its `GetOutboxStatus` (destination: summed over `ListDestinations`).
    public func backlog(_ service: ServiceName, options: CallOptions) async throws -> Backlog {
        func date(_ has: Bool, _ timestamp: Google_Protobuf_Timestamp) -> Date? { has ? timestamp.date : nil }
        return try await calling(service) {
            switch service {
            case .ingestion:
                let s = try await ingestion.getOutboxStatus(.init(), options: options)
                return Backlog(
                    pending: s.pendingRecords,
                    oldestPending: date(s.hasOldestPending, s.oldestPending),
                    handedOn: s.forwardedRecords,
                    lastError: s.lastError
                )
            case .identity:
                let s = try await identity.getOutboxStatus(.init(), options: options)
                return Backlog(
                    pending: s.pendingUpdates,
                    oldestPending: date(s.hasOldestPending, s.oldestPending),
                    handedOn: s.forwardedUpdates,
                    lastError: s.lastError
                )
            case .profile:
                let s = try await profile.getOutboxStatus(.init(), options: options)
                return Backlog(
                    pending: s.pendingChanges,
                    oldestPending: date(s.hasOldestPending, s.oldestPending),
                    handedOn: s.sentChanges,
                    lastError: s.lastError
                )
            case .segmentation:
                let s = try await segmentation.getOutboxStatus(.init(), options: options)
                return Backlog(
                    pending: s.pendingChanges,
                    oldestPending: date(s.hasOldestPending, s.oldestPending),
                    handedOn: s.sentChanges,
                    lastError: s.lastError
                )
            case .destination:
                let list = try await destination.listDestinations(.init(), options: options).destinations
                return Backlog(
                    pending: list.reduce(0) { $0 + $1.pending },
                    oldestPending: list.filter(\.hasOldestPending).map(\.oldestPending.date).min(),
                    handedOn: 0,
                    lastError: list.first { !$0.lastError.isEmpty }.map { "\($0.id): \($0.lastError)" } ?? ""
                )
            }
        }
    }

    /// Waits until everything committed so far has travelled through `stages` in order (by default
    /// ingestion → identity → profile → segmentation): for each stage, it notes how many items the
    /// stage has handed on or holds, and waits until it has handed on that many. Counters only grow,
    /// so other clients' traffic arriving meanwhile does not make the wait longer than its own share.
    ///
    /// - Parameters:
    ///   - stages: the services whose outboxes to follow, upstream first.
    ///   - timeout: how long the whole wait may take.
    ///   - progress: called with each stage while it waits (stage, handed on, target).
    public func waitUntilDelivered(
        through stages: [ServiceName] = [.ingestion, .identity, .profile],
        timeout: Duration,
        options: CallOptions,
        progress: (ServiceName, UInt64, UInt64) -> Void = { _, _, _ in }
    ) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        for stage in stages {
            var backlog = try await self.backlog(stage, options: options)
            let target = backlog.handedOn + backlog.pending
            while backlog.handedOn < target {
                progress(stage, backlog.handedOn, target)
                guard clock.now < deadline else {
                    throw PipelineWaitTimeout(stage: stage, backlog: backlog, target: target, timeout: timeout)
                }
                try await Task.sleep(for: .milliseconds(50))
                backlog = try await self.backlog(stage, options: options)
            }
            progress(stage, backlog.handedOn, target)
        }
    }
}

/// The pipeline did not carry the data through a stage in time.
public struct PipelineWaitTimeout: Error, CustomStringConvertible {
    /// The stage that had not handed everything on.
    public var stage: ServiceName
    /// Its last backlog.
    public var backlog: Backlog
    /// The count it had to reach.
    public var target: UInt64
    /// The wait allowed.
    public var timeout: Duration

    public var description: String {
        let next = ServiceName.allCases.first { $0 > stage }.map { "\($0)" } ?? "its destinations"
        var text =
            "\(stage) has not handed its \(Backlog.unit(of: stage)) on to \(next) within \(timeout): "
            + "\(target - min(target, backlog.handedOn)) still pending"
        if !backlog.lastError.isEmpty { text += " (last error: \(backlog.lastError))" }
        return text
    }
}

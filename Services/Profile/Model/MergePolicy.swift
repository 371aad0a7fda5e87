import CDPProto
import Foundation
import SwiftProtobuf

/// How the fragments of one entity are merged into its unified record.
public enum MergePolicy: Sendable, Equatable {
    /// Each field from the fragment updated last (`lastUpdated`, then ingestion time) that has it.
    case timestampOrdered
    /// Each field from the first source in this list that has it (sources as `Type:instance`, e.g.
    /// `Salesforce:sf-1`); sources not listed come after, ordered by timestamp.
    case sourcePrecedence([String])

    /// Parses `timestamp` or `precedence:Type:instance,Type:instance,…`.
    public init?(_ text: String) {
        if text == "timestamp" {
            self = .timestampOrdered
            return
        }
        guard text.hasPrefix("precedence:") else { return nil }
        let sources = text.dropFirst("precedence:".count).split(separator: ",").map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        guard !sources.isEmpty, sources.allSatisfy({ $0.contains(":") }) else { return nil }
        self = .sourcePrecedence(sources)
    }
}

/// A stored fragment: one source record of an entity.
public struct Fragment: Sendable {
    /// The record's key.
    public var key: String
    /// The source, `Type:instance`.
    public var source: String
    /// `lastUpdated` in milliseconds, if the record has it.
    public var lastUpdated: Int64?
    /// When ingestion stored it, in milliseconds.
    public var ingestedAt: Int64
    /// The serialized `cdp.model.v1.Record`.
    public var record: Data

    /// Creates a fragment.
    public init(key: String, source: String, lastUpdated: Int64?, ingestedAt: Int64, record: Data) {
        self.key = key
        self.source = source
        self.lastUpdated = lastUpdated
        self.ingestedAt = ingestedAt
        self.record = record
    }
}

/// Merges fragments into a unified record.
///
/// Fragments are ordered from the lowest priority to the highest, then merged field by field with
/// protobuf merge semantics: a field a fragment sets (proto3 `optional` fields, non-default plain
/// fields, map entries of custom attributes) overwrites what lower-priority fragments set, and a field
/// it leaves unset keeps theirs. So each field comes from the highest-priority fragment that has it.
public enum Unifier {
    /// The fragments in merge order under `policy`: lowest priority first.
    public static func mergeOrder(_ fragments: [Fragment], policy: MergePolicy) -> [Fragment] {
        func byTime(_ a: Fragment, _ b: Fragment) -> Bool {
            let (left, right) = (a.lastUpdated ?? Int64.min, b.lastUpdated ?? Int64.min)
            if left != right { return left < right }
            if a.ingestedAt != b.ingestedAt { return a.ingestedAt < b.ingestedAt }
            return a.key < b.key
        }
        switch policy {
        case .timestampOrdered:
            return fragments.sorted(by: byTime)
        case .sourcePrecedence(let sources):
            // Rank: listed sources by position (first = highest), unlisted below them all.
            func rank(_ fragment: Fragment) -> Int {
                sources.firstIndex(of: fragment.source).map { sources.count - $0 } ?? 0
            }
            return fragments.sorted { a, b in
                let (left, right) = (rank(a), rank(b))
                return left != right ? left < right : byTime(a, b)
            }
        }
    }

    /// The unified record of `fragments`; nil if there are none. Its key is that of the
    /// highest-priority fragment.
    public static func unify(_ fragments: [Fragment], policy: MergePolicy) throws -> Cdp_Model_V1_Record? {
        let ordered = mergeOrder(fragments, policy: policy)
        guard let top = ordered.last else { return nil }
        var unified = Cdp_Model_V1_Record()
        for fragment in ordered { try unified.merge(serializedBytes: fragment.record) }
        unified.key = top.key
        unified.isDeleted = false
        return unified
    }
}

import CDPProto
import Foundation
import SwiftProtobuf

/// Values each held once and named by a number from 1, in the order first seen.
struct InternTable<Value: Hashable> {
    private var numbers: [Value: UInt32] = [:]
    private var values: [Value] = []

    /// The number of `value`, given one if it has none yet.
    mutating func number(_ value: Value) -> UInt32 {
        if let known = numbers[value] { return known }
        values.append(value)
        let number = UInt32(values.count)
        numbers[value] = number
        return number
    }

    /// The value a number (from 1) names.
    func value(_ number: UInt32) -> Value { values[Int(number) - 1] }
}

/// Strings that repeat across the held events (types, pages, names, the source part of keys, a
/// person's email and ecid), each held once and named by a number, and the events' pages. Number 0
/// names no string (a field the event does not have).
struct InternedStrings {
    private var strings = InternTable<String>()
    private var pages = InternTable<EventPage>()

    /// The number of `string`, given one if it has none yet.
    mutating func number(_ string: String) -> UInt32 { strings.number(string) }

    /// The number of `string` if it is present, else 0.
    mutating func number(_ present: Bool, _ string: @autoclosure () -> String) -> UInt32 {
        present ? number(string()) : 0
    }

    /// The string a number names; "" for 0.
    func string(_ number: UInt32) -> String { number == 0 ? "" : strings.value(number) }

    /// The number of `page`, given one if it has none yet.
    mutating func number(_ page: EventPage) -> UInt32 { pages.number(page) }

    /// The page a number names.
    func page(_ number: UInt32) -> EventPage { pages.value(number) }
}

/// What many events share: their type, page and title (interned), and whether they have a time. Held
/// once and named by a number, so that an event holds one number for the four.
struct EventPage: Hashable {
    var eventType: UInt32
    var url: UInt32
    var title: UInt32
    var hasTimestamp: Bool
}

/// The key of an event or of a fragment that makes a link, split where a source key puts its source
/// (`{id}@{instance}.{type}`: the id, and the interned rest from the last `@`), so that the part every
/// key of a source repeats is held once (and an id of up to 15 bytes needs no memory of its own). A
/// key without `@` is all head (with the empty rest). The split depends on the key alone, so one key
/// has one name.
struct ItemName: Hashable {
    var head: String
    var tail: UInt32

    init(head: String, tail: UInt32) {
        self.head = head
        self.tail = tail
    }

    init(_ key: String, strings: inout InternedStrings) {
        let utf8 = key.utf8
        if let at = utf8.lastIndex(of: UInt8(ascii: "@")) {
            head = String(key[..<at])
            tail = strings.number(String(key[at...]))
        } else {
            head = key
            tail = strings.number("")
        }
    }

    /// The whole key.
    func key(_ strings: InternedStrings) -> String { head + strings.string(tail) }
}

/// An event as segmentation holds it: its time and its fields, with every string that repeats across
/// events interned (64 bytes, against well over a kilobyte as a decoded protobuf message). Views
/// get the event back as profile sends it.
struct HeldEvent {
    var seconds: Int64
    /// The version of the change that put it here.
    var version: UInt64
    var name: ItemName
    var nanos: Int32
    /// Its type, url, title and whether it has a time (``EventPage``).
    var page: UInt32
    /// The event id when it is not the key's head (interned), else 0.
    var otherEventID: UInt32
    var email: UInt32
    var ecid: UInt32
    var personKey: UInt32

    init(_ name: ItemName, _ event: Cdp_Model_V1_ExperienceEvent, version: UInt64, strings: inout InternedStrings) {
        self.name = name
        self.version = version
        seconds = event.timestamp.seconds
        nanos = event.timestamp.nanos
        page = strings.number(
            EventPage(
                eventType: strings.number(event.eventType),
                url: strings.number(event.hasURL, event.url),
                title: strings.number(event.hasName, event.name),
                hasTimestamp: event.hasTimestamp
            )
        )
        otherEventID = event.eventID == name.head ? 0 : strings.number(event.eventID)
        email = strings.number(event.hasEmail, event.email)
        ecid = strings.number(event.hasEcid, event.ecid)
        personKey = strings.number(event.hasPersonKey, event.personKey)
    }

    /// The time in milliseconds, as profile compares events (computed as from the message: holding it
    /// would take 8 more bytes per event).
    var milliseconds: Int64 { EntityState.milliseconds(Google_Protobuf_Timestamp(seconds: seconds, nanos: nanos)) }

    /// The event as profile sends it in views.
    func message(_ strings: InternedStrings) -> Cdp_Profile_V1_Event {
        var message = Cdp_Profile_V1_Event()
        message.key = name.key(strings)
        let page = strings.page(page)
        var event = Cdp_Model_V1_ExperienceEvent()
        event.eventID = otherEventID == 0 ? name.head : strings.string(otherEventID)
        event.eventType = strings.string(page.eventType)
        if page.hasTimestamp {
            event.timestamp = Google_Protobuf_Timestamp(seconds: seconds, nanos: nanos)
        }
        if page.url != 0 { event.url = strings.string(page.url) }
        if page.title != 0 { event.name = strings.string(page.title) }
        if email != 0 { event.email = strings.string(email) }
        if ecid != 0 { event.ecid = strings.string(ecid) }
        if personKey != 0 { event.personKey = strings.string(personKey) }
        message.event = event
        return message
    }
}

/// A clustered entity's unified record as held (nil once the entity is gone) and the version it was
/// last changed at.
///
/// A person's record is held encoded: decoded, it took about 1.6 KB (the generated message's storage
/// with every entity type's fields inline, and each string of more than 15 bytes an allocation of its
/// own), encoded about 300 bytes, and persons are the most numerous records. Its views decode it: the
/// person's own, and its accounts'. What many views show (accounts, their opportunities, campaigns,
/// lists) is held decoded: a person's view shows a dozen of them, and decoding them for each view made
/// views twice as slow.
struct HeldRecord {
    /// The version, with ``savedBit`` set once a commit evaluated the record as it is (versions are
    /// below 2^63, ``EntityState/check(_:)``).
    private var versionAndSaved: UInt64
    private var content: Content?

    private enum Content {
        case encoded([UInt8])
        case decoded(Decoded)
    }

    /// A decoded record, boxed so that a held record takes two words either way.
    private final class Decoded {
        let record: Cdp_Profile_V1_UnifiedRecord

        init(_ record: Cdp_Profile_V1_UnifiedRecord) { self.record = record }
    }

    private static let savedBit: UInt64 = 1 << 63

    /// `unified` as held, not saved: encoded, or decoded with its cluster id.
    init(version: UInt64, unified: Cdp_Profile_V1_UnifiedRecord?, encoded: Bool, cluster: UInt64) throws {
        precondition(version & Self.savedBit == 0, "a version is below 2^63")
        versionAndSaved = version
        guard var unified else { return }
        if encoded {
            // Its cluster id is set on decoding.
            unified.clusterID = 0
            content = .encoded(try unified.serializedBytes())
        } else {
            unified.clusterID = cluster
            unified.shareEqualStrings()
            content = .decoded(Decoded(unified))
        }
    }

    var version: UInt64 { versionAndSaved & ~Self.savedBit }

    /// Whether a commit evaluated the record as it is (set after the commit; a new record starts unsaved).
    var saved: Bool {
        get { versionAndSaved & Self.savedBit != 0 }
        set { versionAndSaved = newValue ? versionAndSaved | Self.savedBit : version }
    }

    var isPresent: Bool { content != nil }

    /// The encoded record, if it is held encoded.
    var encoded: [UInt8]? {
        if case .encoded(let bytes)? = content { bytes } else { nil }
    }

    /// The record, with its cluster id.
    func unified(cluster: UInt64) -> Cdp_Profile_V1_UnifiedRecord? {
        switch content {
        case .encoded(let bytes)?:
            // The bytes were encoded here from a message: they decode.
            var record = try! Cdp_Profile_V1_UnifiedRecord(serializedBytes: bytes)
            record.clusterID = cluster
            return record
        case .decoded(let decoded)?:
            return decoded.record
        case nil:
            return nil
        }
    }
}

/// The held records, one table per entity type keyed by cluster: a key of 8 bytes, hashed in one
/// step, rather than an entity type and a cluster (24 bytes).
struct HeldRecords {
    private var tables: [[UInt64: HeldRecord]] = Array(repeating: [:], count: 5)

    /// The table of an entity type that has unified records (``EntityState/entityTypes``).
    private static func table(_ entity: Cdp_Model_V1_EntityType) -> Int? {
        switch entity {
        case .person: 0
        case .account: 1
        case .opportunity: 2
        case .campaign: 3
        case .marketingList: 4
        default: nil
        }
    }

    /// The record of an entity; setting one is only for the entity types that have unified records.
    subscript(key: EntityState.EntityKey) -> HeldRecord? {
        get { Self.table(key.entity).flatMap { tables[$0][key.cluster] } }
        set {
            guard let table = Self.table(key.entity) else {
                preconditionFailure("\(key.entity) has no unified records")
            }
            tables[table][key.cluster] = newValue
        }
    }

    /// Notes that a commit evaluated the entity's record as it is.
    mutating func markSaved(_ key: EntityState.EntityKey) {
        guard let table = Self.table(key.entity) else { return }
        tables[table][key.cluster]?.saved = true
    }

    /// Forgets the record of an entity, returning it.
    mutating func removeValue(forKey key: EntityState.EntityKey) -> HeldRecord? {
        guard let table = Self.table(key.entity) else { return nil }
        return tables[table].removeValue(forKey: key.cluster)
    }

    /// The clusters of an entity type with a present record, in no order.
    func presentClusters(of entity: Cdp_Model_V1_EntityType) -> [UInt64] {
        guard let table = Self.table(entity) else { return [] }
        return tables[table].compactMap { $0.value.isPresent ? $0.key : nil }
    }
}

extension Cdp_Profile_V1_UnifiedRecord {
    /// Makes strings that are equal in a decoded record the same string, so that they share one
    /// allocation instead of holding two copies (Swift keeps strings of up to 15 bytes inline; longer
    /// ones are an allocation each): the record's key and the fragment key it equals (it is always one
    /// of them), and an account's or opportunity's CRM id and its source id (equal in a CRM's own
    /// records), about 60 and 48 bytes less per record.
    mutating func shareEqualStrings() {
        if record.key.utf8.count > 15, let same = fragmentKeys.first(where: { $0 == record.key }) {
            record.key = same
        }
        switch record.entity {
        case .account(var account)
        where account.hasCrmID && account.crmID.utf8.count > 15
            && account.crmID == account.accountID:
            account.crmID = account.accountID
            record.account = account
        case .opportunity(var opportunity)
        where opportunity.hasCrmID && opportunity.crmID.utf8.count > 15
            && opportunity.crmID == opportunity.opportunityID:
            opportunity.crmID = opportunity.opportunityID
            record.opportunity = opportunity
        default:
            break
        }
    }
}

import CDPProto
import Foundation
import SwiftProtobuf

/// Strings that repeat across the held events (types, pages, names, the source part of keys, a
/// person's email and ecid), each held once and named by a number. Number 0 names no string (a field
/// the event does not have).
struct InternedStrings {
    private var numbers: [String: UInt32] = [:]
    private var strings: [String] = []

    /// The number of `string`, given one if it has none yet.
    mutating func number(_ string: String) -> UInt32 {
        if let known = numbers[string] { return known }
        strings.append(string)
        let number = UInt32(strings.count)
        numbers[string] = number
        return number
    }

    /// The number of `string` if it is present, else 0.
    mutating func number(_ present: Bool, _ string: @autoclosure () -> String) -> UInt32 {
        present ? number(string()) : 0
    }

    /// The string a number names; "" for 0.
    func string(_ number: UInt32) -> String { number == 0 ? "" : strings[Int(number) - 1] }
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
/// events interned (72 bytes, against well over a kilobyte as a decoded protobuf message). Views
/// get the event back as profile sends it.
struct HeldEvent {
    var seconds: Int64
    /// The version of the change that put it here.
    var version: UInt64
    var name: ItemName
    var nanos: Int32
    /// The event id when it is not the key's head (interned), else 0.
    var otherEventID: UInt32
    var eventType: UInt32
    var url: UInt32
    var title: UInt32
    var email: UInt32
    var ecid: UInt32
    var personKey: UInt32
    var hasTimestamp: Bool

    init(_ name: ItemName, _ event: Cdp_Model_V1_ExperienceEvent, version: UInt64, strings: inout InternedStrings) {
        self.name = name
        self.version = version
        hasTimestamp = event.hasTimestamp
        seconds = event.timestamp.seconds
        nanos = event.timestamp.nanos
        otherEventID = event.eventID == name.head ? 0 : strings.number(event.eventID)
        eventType = strings.number(event.eventType)
        url = strings.number(event.hasURL, event.url)
        title = strings.number(event.hasName, event.name)
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
        var event = Cdp_Model_V1_ExperienceEvent()
        event.eventID = otherEventID == 0 ? name.head : strings.string(otherEventID)
        event.eventType = strings.string(eventType)
        if hasTimestamp {
            event.timestamp = Google_Protobuf_Timestamp(seconds: seconds, nanos: nanos)
        }
        if url != 0 { event.url = strings.string(url) }
        if title != 0 { event.name = strings.string(title) }
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
/// Held encoded: decoded, a person's record took about 1.6 KB (the generated message's storage with
/// every entity type's fields inline, and each string of more than 15 bytes an allocation of its own),
/// and unified records were more than half of the state's memory; encoded, it takes the size of its
/// fields. A view decodes the records it shows, once per view.
struct HeldRecord {
    var version: UInt64
    var encoded: [UInt8]?
    /// Whether a commit evaluated the record as it is (set after the commit; a new record starts unsaved).
    var saved = false

    /// `unified` as held.
    init(version: UInt64, unified: Cdp_Profile_V1_UnifiedRecord?) throws {
        self.version = version
        encoded = try unified.map { try $0.serializedBytes() }
    }

    var isPresent: Bool { encoded != nil }

    /// The record, decoded, with its cluster id.
    func unified(cluster: UInt64) -> Cdp_Profile_V1_UnifiedRecord? {
        guard let encoded else { return nil }
        // The bytes were encoded here from a message: they decode.
        var record = try! Cdp_Profile_V1_UnifiedRecord(serializedBytes: encoded)
        record.clusterID = cluster
        return record
    }
}

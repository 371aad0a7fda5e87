import CDPProto

/// Every link the state has taken, present or not, found by its fragment (type and key) and by either
/// of its ends.
///
/// Links are most of what segmentation holds (several per person), so the table keeps each in one
/// slot of one array and indexes the slots by number, with no per-link allocation: the fragment index
/// is an open-addressing table of slot numbers, and each end's links form a doubly linked list through
/// the slots, from a head per end cluster. A from end (a person, or an opportunity) lists its links of
/// every type, being at most a few dozen; a to end lists its links of one type, so that an account's
/// opportunities are found without walking its persons (thousands, for the largest accounts).
/// About 140 bytes per link, against about 370 with a dictionary by fragment and an array of entries
/// per end and type.
struct LinkTable {
    /// A slot number.
    typealias Slot = UInt32

    /// No slot: the end of an end's list.
    static let none: Slot = .max

    /// The slots, some of them free (``free``).
    private var links: [HeldLink] = []
    /// Slots of forgotten links, taken again first.
    private var free: [Slot] = []
    /// The fragment index: slot + 1 at each position, 0 where empty, ``tombstone`` where a forgotten
    /// link was (probing goes on past it).
    private var index: [UInt32] = Array(repeating: 0, count: 16)
    /// How many positions of the index are not empty (links and tombstones).
    private var used = 0
    /// The first slot of each from end's list, by the kind of end and its cluster.
    private var fromHeads: [[UInt64: Slot]] = Array(repeating: [:], count: From.allCases.count)
    /// The first slot of each to end's list, by link type (the raw value) and cluster.
    private var toHeads: [[UInt64: Slot]] = Array(repeating: [:], count: 16)

    private static let tombstone: UInt32 = .max

    /// The kinds of cluster a link can start from. Clusters are numbered per entity type, so a cluster
    /// number names a from end only with its kind.
    enum From: Int, CaseIterable {
        case person, opportunity

        /// The kind of the from end of links made by fragments of `entity` (a link type).
        init(_ entity: UInt8) {
            self = entity == UInt8(Cdp_Model_V1_EntityType.opportunity.rawValue) ? .opportunity : .person
        }
    }

    /// How many links the table holds.
    var count: Int { links.count - free.count }

    /// The link in a slot.
    subscript(slot: Slot) -> HeldLink { links[Int(slot)] }

    /// The slot of the link of a fragment, if the table has it.
    func slot(of entity: UInt8, _ name: ItemName) -> Slot? {
        let mask = index.count - 1
        var position = Self.hash(entity, name) & mask
        while true {
            let entry = index[position]
            if entry == 0 { return nil }
            if entry != Self.tombstone {
                let link = links[Int(entry - 1)]
                if link.entity == entity && link.name == name { return entry - 1 }
            }
            position = (position + 1) & mask
        }
    }

    /// Adds the link of a fragment the table does not have yet (not linked to its ends; see
    /// ``attach(_:)``) and returns its slot.
    mutating func insert(_ link: HeldLink) -> Slot {
        if (used + 1) * 4 > index.count * 3 { rebuildIndex(toHold: count + 1) }
        let slot: Slot
        if let reused = free.popLast() {
            slot = reused
            links[Int(slot)] = link
        } else {
            slot = Slot(links.count)
            links.append(link)
        }
        place(slot)
        return slot
    }

    /// Replaces the link in a slot by a newer state of the same fragment (detach it first if it is
    /// attached).
    mutating func replace(_ slot: Slot, with link: HeldLink) {
        precondition(links[Int(slot)].entity == link.entity && links[Int(slot)].name == link.name)
        links[Int(slot)] = link
    }

    /// Forgets the link in a slot (detach it first if it is attached).
    mutating func remove(_ slot: Slot) {
        let link = links[Int(slot)]
        let mask = index.count - 1
        var position = Self.hash(link.entity, link.name) & mask
        while index[position] != slot + 1 { position = (position + 1) & mask }
        index[position] = Self.tombstone
        links[Int(slot)] = HeldLink.unused
        free.append(slot)
    }

    // MARK: - Ends

    /// Puts a present link at the head of its two ends' lists.
    mutating func attach(_ slot: Slot) {
        let link = links[Int(slot)]
        let nextFrom = fromHeads[From(link.entity).rawValue].updateValue(slot, forKey: link.from) ?? Self.none
        let nextTo = toHeads[Int(link.entity)].updateValue(slot, forKey: link.to) ?? Self.none
        links[Int(slot)].nextFrom = nextFrom
        links[Int(slot)].previousFrom = Self.none
        links[Int(slot)].nextTo = nextTo
        links[Int(slot)].previousTo = Self.none
        if nextFrom != Self.none { links[Int(nextFrom)].previousFrom = slot }
        if nextTo != Self.none { links[Int(nextTo)].previousTo = slot }
    }

    /// Takes a present link out of its two ends' lists.
    mutating func detach(_ slot: Slot) {
        let link = links[Int(slot)]
        let from = From(link.entity).rawValue
        let to = Int(link.entity)
        if link.previousFrom == Self.none {
            if link.nextFrom == Self.none {
                fromHeads[from][link.from] = nil
            } else {
                fromHeads[from][link.from] = link.nextFrom
            }
        } else {
            links[Int(link.previousFrom)].nextFrom = link.nextFrom
        }
        if link.nextFrom != Self.none { links[Int(link.nextFrom)].previousFrom = link.previousFrom }
        if link.previousTo == Self.none {
            if link.nextTo == Self.none {
                toHeads[to][link.to] = nil
            } else {
                toHeads[to][link.to] = link.nextTo
            }
        } else {
            links[Int(link.previousTo)].nextTo = link.nextTo
        }
        if link.nextTo != Self.none { links[Int(link.nextTo)].previousTo = link.previousTo }
    }

    /// Calls `body` with the slot of every present link (of any type) whose from end is the cluster of
    /// that kind.
    func forEach(from end: From, _ cluster: UInt64, _ body: (Slot) throws -> Void) rethrows {
        var slot = fromHeads[end.rawValue][cluster] ?? Self.none
        while slot != Self.none {
            let next = links[Int(slot)].nextFrom
            try body(slot)
            slot = next
        }
    }

    /// Calls `body` with the slot of every present link of fragments of `entity` (a link type) whose
    /// to end is the cluster.
    func forEach(to entity: UInt8, _ cluster: UInt64, _ body: (Slot) throws -> Void) rethrows {
        var slot = toHeads[Int(entity)][cluster] ?? Self.none
        while slot != Self.none {
            let next = links[Int(slot)].nextTo
            try body(slot)
            slot = next
        }
    }

    // MARK: - The fragment index

    private static func hash(_ entity: UInt8, _ name: ItemName) -> Int {
        var hasher = Hasher()
        hasher.combine(entity)
        hasher.combine(name)
        return hasher.finalize()
    }

    /// Puts a slot at the first empty or tombstone position of its probe sequence.
    private mutating func place(_ slot: Slot) {
        let link = links[Int(slot)]
        let mask = index.count - 1
        var position = Self.hash(link.entity, link.name) & mask
        while index[position] != 0 && index[position] != Self.tombstone { position = (position + 1) & mask }
        if index[position] == 0 { used += 1 }
        index[position] = slot + 1
    }

    /// Rebuilds the index without tombstones, large enough that `wanted` links fill at most half of it.
    private mutating func rebuildIndex(toHold wanted: Int) {
        var size = index.count
        while wanted * 2 > size { size *= 2 }
        index = Array(repeating: 0, count: size)
        used = 0
        for slot in links.indices where !links[slot].isUnused { place(Slot(slot)) }
    }
}

/// The link a fragment makes, as held: the fragment's type and key, its ends, the version it was last
/// changed at, the details of a role or a campaign membership (strings interned), and its neighbours
/// in its ends' lists (see ``LinkTable``). A link that is not present keeps its version (so that an
/// older change of it is known to be stale) and links nothing.
struct HeldLink {
    var from: UInt64
    var to: UInt64
    var version: UInt64
    var name: ItemName
    var role: UInt32
    var status: UInt32
    var nextFrom = LinkTable.none
    var previousFrom = LinkTable.none
    var nextTo = LinkTable.none
    var previousTo = LinkTable.none
    /// The fragment's entity type (a link type: small).
    var entity: UInt8
    var flags: Flags

    struct Flags: OptionSet {
        let rawValue: UInt8
        static let present = Flags(rawValue: 1)
        static let hasIsPrimary = Flags(rawValue: 2)
        static let isPrimary = Flags(rawValue: 4)
        static let hasHasResponded = Flags(rawValue: 8)
        static let hasResponded = Flags(rawValue: 16)
        /// A free slot of the table.
        static let unused = Flags(rawValue: 128)
    }

    /// Whether it links two clusters.
    var isPresent: Bool { flags.contains(.present) }

    /// The fragment's entity type.
    var entityType: Cdp_Model_V1_EntityType { Cdp_Model_V1_EntityType(rawValue: Int(entity)) ?? .unspecified }

    /// Whether it is a free slot of the table.
    var isUnused: Bool { flags.contains(.unused) }

    /// A free slot.
    static let unused: HeldLink = {
        // An absent link has no strings to intern.
        var strings = InternedStrings()
        var link = HeldLink(
            Cdp_Profile_V1_LinkState(),
            name: ItemName(head: "", tail: 0),
            version: 0,
            strings: &strings
        )
        link.flags = .unused
        return link
    }()

    init(_ link: Cdp_Profile_V1_LinkState, name: ItemName, version: UInt64, strings: inout InternedStrings) {
        self.name = name
        // Link types are checked: their raw values are small.
        entity = UInt8(truncatingIfNeeded: link.entityType.rawValue)
        self.version = version
        var flags: Flags = []
        if link.present && link.fromClusterID != 0 && link.toClusterID != 0 {
            flags.insert(.present)
            from = link.fromClusterID
            to = link.toClusterID
        } else {
            from = 0
            to = 0
        }
        role = strings.number(link.hasRole, link.role)
        status = strings.number(link.hasStatus, link.status)
        if link.hasIsPrimary { flags.insert(.hasIsPrimary) }
        if link.hasIsPrimary && link.isPrimary { flags.insert(.isPrimary) }
        if link.hasHasResponded_p { flags.insert(.hasHasResponded) }
        if link.hasHasResponded_p && link.hasResponded_p { flags.insert(.hasResponded) }
        self.flags = flags
    }
}

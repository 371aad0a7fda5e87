import CDPProto
import TestSupport
import Testing

@testable import SegmentationState

/// The link table against a dictionary model: after random inserts, moves of either end, links
/// becoming absent and present again, and forgotten links, every fragment is found in its slot and
/// every end lists exactly the present links that end there.
@Suite("Segmentation link table")
struct LinkTableTests {
    /// A link as the model holds it.
    struct Modelled: Equatable {
        var from: UInt64
        var to: UInt64
        var present: Bool
    }

    static let types: [Cdp_Model_V1_EntityType] = [
        .person, .opportunity, .accountPersonRelation, .opportunityPersonRelation, .campaignMember,
        .marketingListMember,
    ]

    static func held(
        _ type: Cdp_Model_V1_EntityType,
        _ key: String,
        _ modelled: Modelled,
        version: UInt64,
        strings: inout InternedStrings
    ) -> HeldLink {
        var state = Cdp_Profile_V1_LinkState()
        state.entityType = type
        state.key = key
        state.present = modelled.present
        state.fromClusterID = modelled.from
        state.toClusterID = modelled.to
        return HeldLink(state, name: ItemName(key, strings: &strings), version: version, strings: &strings)
    }

    @Test(arguments: [1, 2, 3])
    func randomOperationsKeepTheIndexAndTheEndsLists(seed: UInt64) {
        var random = SeededRandom(state: seed)
        var strings = InternedStrings()
        var table = LinkTable()
        var model: [String: (type: Cdp_Model_V1_EntityType, link: Modelled)] = [:]
        for step in 0..<6_000 {
            // Few clusters, so that ends share lists; keys with and without a source part.
            let type = Self.types[Int.random(in: 0..<Self.types.count, using: &random)]
            let id = Int.random(in: 0..<600, using: &random)
            let key = id % 3 == 0 ? "k\(id)" : "\(type.rawValue)-\(id)@crm.Salesforce"
            let modelKey = "\(type.rawValue)/\(key)"
            let name = ItemName(key, strings: &strings)
            let raw = UInt8(type.rawValue)
            let slot = table.slot(of: raw, name)
            #expect((slot != nil) == (model[modelKey] != nil), "step \(step): \(modelKey) found")
            if let slot, Int.random(in: 0..<10, using: &random) == 0 {
                if table[slot].isPresent { table.detach(slot) }
                table.remove(slot)
                model[modelKey] = nil
                continue
            }
            let modelled = Modelled(
                from: UInt64.random(in: 1...40, using: &random),
                to: UInt64.random(in: 1...40, using: &random),
                present: Int.random(in: 0..<5, using: &random) > 0
            )
            let link = Self.held(type, key, modelled, version: UInt64(step), strings: &strings)
            let taken: LinkTable.Slot
            if let slot {
                if table[slot].isPresent { table.detach(slot) }
                table.replace(slot, with: link)
                taken = slot
            } else {
                taken = table.insert(link)
            }
            if link.isPresent { table.attach(taken) }
            model[modelKey] = (type, modelled)
        }
        #expect(table.count == model.count)
        let present = model.filter { $0.value.link.present }
        for cluster in UInt64(1)...40 {
            for end in LinkTable.From.allCases {
                var listed: [String] = []
                table.forEach(from: end, cluster) { slot in
                    listed.append("\(table[slot].entity)/\(table[slot].name.key(strings))")
                }
                let expected = present.filter {
                    LinkTable.From(UInt8($0.value.type.rawValue)) == end && $0.value.link.from == cluster
                }
                #expect(listed.sorted() == expected.keys.sorted(), "from \(end) \(cluster)")
            }
            for type in Self.types {
                let raw = UInt8(type.rawValue)
                var listed: [String] = []
                table.forEach(to: raw, cluster) { slot in
                    listed.append("\(table[slot].entity)/\(table[slot].name.key(strings))")
                }
                let expected = present.filter { $0.value.type == type && $0.value.link.to == cluster }
                #expect(listed.sorted() == expected.keys.sorted(), "to \(type) \(cluster)")
            }
        }
    }
}

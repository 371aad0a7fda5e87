import Testing

@testable import IdentityGraph

/// The graph's string table: found by content and tag, numbered in order, removals that keep numbers,
/// growth past many entries.
@Suite("Key table")
struct KeyTableTests {
    @Test func entriesAreNumberedInOrderAndFoundByTagAndContent() {
        var table = KeyTable()
        #expect(table.find(0, "a") == nil)
        #expect(table.insert(0, "a") == (0, true))
        #expect(table.insert(1, "a") == (1, true))
        #expect(table.insert(0, "") == (2, true))
        let long = "a-value-longer-than-fifteen-bytes@ünïcode.example"
        #expect(table.insert(2, long) == (3, true))
        #expect(table.insert(0, "a") == (0, false))
        #expect(table.find(1, "a") == 1)
        #expect(table.find(0, "") == 2)
        #expect(table.find(2, long) == 3)
        #expect(table.find(2, "a") == nil)
        #expect(table.string(3) == long)
        #expect(table.tag(1) == 1)
        #expect(table.count == 4)
        #expect(table.endIndex == 4)
    }

    @Test func aRemovedEntryKeepsItsNumberAndAReturningValueGetsANewOne() {
        var table = KeyTable()
        _ = table.insert(0, "x@y.z")
        _ = table.insert(0, "w@y.z")
        table.remove(0)
        #expect(!table.isPresent(0))
        #expect(table.isPresent(1))
        #expect(table.find(0, "x@y.z") == nil)
        #expect(table.string(0) == "x@y.z")
        #expect(table.count == 1)
        #expect(table.insert(0, "x@y.z") == (2, true))
        #expect(table.find(0, "x@y.z") == 2)
        table.remove(0)
        #expect(table.count == 2)
    }

    /// A string as long as a span's length field can say or longer (16 MiB - 1 bytes; 20 here) is held
    /// with its length beside its bytes.
    @Test func aStringTooLongForItsSpanIsHeldWhole() {
        var table = KeyTable(longLength: 20)
        let long = String(repeating: "x", count: 20) + "ÿ"
        let exact = String(repeating: "x", count: 20)
        #expect(table.insert(0, "a") == (0, true))
        #expect(table.insert(0, long) == (1, true))
        #expect(table.insert(0, exact) == (2, true))
        #expect(table.insert(0, "b") == (3, true))
        #expect(table.find(0, long) == 1)
        #expect(table.find(0, exact) == 2)
        #expect(table.string(1) == long)
        #expect(table.string(2) == exact)
        #expect(table.string(3) == "b")
        #expect(table.insert(0, long) == (1, false))
    }

    /// Many entries, half removed and added again, through several growths of the table.
    @Test func manyEntriesSurviveGrowthAndRemovals() {
        var table = KeyTable()
        let count = 50_000
        for number in 0..<count { #expect(table.insert(UInt8(number % 3), "value-\(number)").entry == number) }
        for number in stride(from: 0, to: count, by: 2) { table.remove(number) }
        for number in stride(from: 0, to: count, by: 2) {
            #expect(table.insert(UInt8(number % 3), "value-\(number)") == (count + number / 2, true))
        }
        #expect(table.count == count)
        var mismatches = 0
        for number in 0..<count {
            let expected = number % 2 == 0 ? count + number / 2 : number
            if table.find(UInt8(number % 3), "value-\(number)") != expected { mismatches += 1 }
            if table.find(UInt8((number + 1) % 3), "value-\(number)") != nil { mismatches += 1 }
        }
        #expect(mismatches == 0)
    }
}

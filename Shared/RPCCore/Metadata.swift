/// Custom headers or trailers of an RPC: an ordered list of key-value pairs; a key may repeat.
///
/// Keys are lower-case ASCII. Keys ending in `-bin` carry binary values, which travel base64-encoded;
/// all other values are strings of printable ASCII.
public struct Metadata: Sendable, Hashable, Sequence {
    /// A metadata value: text, or bytes for `-bin` keys.
    public enum Value: Sendable, Hashable {
        case string(String)
        case binary([UInt8])
    }

    /// One key-value pair.
    public struct Entry: Sendable, Hashable {
        public var key: String
        public var value: Value
    }

    private var entries: [Entry]

    /// Creates empty metadata.
    public init() { self.entries = [] }

    /// Creates metadata from text pairs.
    public init(_ pairs: [(String, String)]) {
        self.entries = pairs.map { Entry(key: $0.0.lowercased(), value: .string($0.1)) }
    }

    /// The number of pairs.
    public var count: Int { self.entries.count }
    /// Whether there are no pairs.
    public var isEmpty: Bool { self.entries.isEmpty }

    /// Appends a text value.
    public mutating func add(_ key: String, _ value: String) {
        self.entries.append(Entry(key: key.lowercased(), value: .string(value)))
    }

    /// Appends a binary value; the key should end in `-bin`.
    public mutating func add(_ key: String, bytes: [UInt8]) {
        self.entries.append(Entry(key: key.lowercased(), value: .binary(bytes)))
    }

    /// Appends a pair as it came from the wire, decoding base64 for `-bin` keys.
    ///
    /// - Returns: `false` when a `-bin` value is not valid base64 (the pair is then dropped).
    @discardableResult
    public mutating func addWireValue(_ key: String, _ value: String) -> Bool {
        if key.hasSuffix("-bin") {
            guard let bytes = Base64.decode(value) else { return false }
            self.entries.append(Entry(key: key, value: .binary(bytes)))
        } else {
            self.entries.append(Entry(key: key, value: .string(value)))
        }
        return true
    }

    /// Removes every pair with this key.
    public mutating func removeAll(_ key: String) {
        let key = key.lowercased()
        self.entries.removeAll { $0.key == key }
    }

    /// Appends every pair of `other`.
    public mutating func add(contentsOf other: Metadata) {
        self.entries.append(contentsOf: other.entries)
    }

    /// The text values of a key, in order.
    public subscript(stringValues key: String) -> [String] {
        let key = key.lowercased()
        return self.entries.compactMap {
            guard $0.key == key, case .string(let value) = $0.value else { return nil }
            return value
        }
    }

    /// The binary values of a key, in order.
    public subscript(binaryValues key: String) -> [[UInt8]] {
        let key = key.lowercased()
        return self.entries.compactMap {
            guard $0.key == key, case .binary(let value) = $0.value else { return nil }
            return value
        }
    }

    /// The first text value of a key.
    public func first(_ key: String) -> String? { self[stringValues: key].first }

    public func makeIterator() -> IndexingIterator<[Entry]> { self.entries.makeIterator() }

    /// The pairs as they go on the wire: binary values base64-encoded (unpadded, as gRPC allows).
    public var wireEntries: [(key: String, value: String)] {
        self.entries.map { entry in
            switch entry.value {
            case .string(let text): (entry.key, text)
            case .binary(let bytes): (entry.key, Base64.encode(bytes))
            }
        }
    }
}

/// Base64 for `-bin` metadata, without Foundation: gRPC peers may send padded or unpadded values.
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let reverse: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, byte) in alphabet.enumerated() { table[Int(byte)] = UInt8(index) }
        return table
    }()

    static func encode(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index + 3 <= bytes.count {
            let value = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2])
            out.append(alphabet[Int(value >> 18 & 63)])
            out.append(alphabet[Int(value >> 12 & 63)])
            out.append(alphabet[Int(value >> 6 & 63)])
            out.append(alphabet[Int(value & 63)])
            index += 3
        }
        let rest = bytes.count - index
        if rest > 0 {
            var value = UInt32(bytes[index]) << 16
            if rest == 2 { value |= UInt32(bytes[index + 1]) << 8 }
            out.append(alphabet[Int(value >> 18 & 63)])
            out.append(alphabet[Int(value >> 12 & 63)])
            if rest == 2 { out.append(alphabet[Int(value >> 6 & 63)]) }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        var out = [UInt8]()
        var buffer: UInt32 = 0
        var bits = 0
        var sawPadding = false
        for byte in text.utf8 {
            if byte == UInt8(ascii: "=") {
                sawPadding = true
                continue
            }
            guard !sawPadding else { return nil }
            let value = reverse[Int(byte)]
            guard value != 0xFF else { return nil }
            buffer = buffer << 6 | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits)))
            }
        }
        return bits >= 6 ? nil : out
    }
}

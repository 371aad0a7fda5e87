import CDPProto
import Crypto
import DestinationStore
import Foundation
import Synchronization

/// A member as a destination is told about it: added or removed, under the identity the activation
/// maps it to, with the mapped attributes.
public struct OutboundMember: Sendable, Equatable, Codable {
    public var entityType: Cdp_Model_V1_EntityType
    public var cluster: UInt64
    /// True: add; false: remove.
    public var add: Bool
    /// An add of a member the destination already has, under the same identity, sent because its
    /// mapped attributes changed: destinations update it in place (Marketo upserts the lead, files and
    /// webhooks write an `update`).
    public var update: Bool
    /// The membership version the state comes from (webhooks send it, so receivers can dedupe).
    public var version: UInt64
    /// The identity at the destination: an email, a hashed email, a CRM id, or a company name.
    public var identity: String
    /// Destination field → value.
    public var attributes: [String: String]
    /// An account's web domain (LinkedIn company audiences match on it).
    public var domain: String?

    /// Creates a member.
    public init(
        entityType: Cdp_Model_V1_EntityType,
        cluster: UInt64,
        add: Bool,
        version: UInt64,
        identity: String,
        attributes: [String: String],
        domain: String? = nil,
        update: Bool = false
    ) {
        self.entityType = entityType
        self.cluster = cluster
        self.add = add
        self.update = update
        self.version = version
        self.identity = identity
        self.attributes = attributes
        self.domain = domain
    }

    private enum CodingKeys: String, CodingKey {
        case entity, cluster, add, update, version, identity, attributes, domain
    }

    /// How files and webhooks name the operation: `add`, `update` or `remove`.
    public var operation: String { add ? (update ? "update" : "add") : "remove" }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        entityType = Cdp_Model_V1_EntityType(rawValue: try container.decode(Int.self, forKey: .entity)) ?? .person
        cluster = try container.decode(UInt64.self, forKey: .cluster)
        add = try container.decode(Bool.self, forKey: .add)
        update = try container.decodeIfPresent(Bool.self, forKey: .update) ?? false
        version = try container.decode(UInt64.self, forKey: .version)
        identity = try container.decode(String.self, forKey: .identity)
        attributes = try container.decode([String: String].self, forKey: .attributes)
        domain = try container.decodeIfPresent(String.self, forKey: .domain)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(entityType.rawValue, forKey: .entity)
        try container.encode(cluster, forKey: .cluster)
        try container.encode(add, forKey: .add)
        if update { try container.encode(update, forKey: .update) }
        try container.encode(version, forKey: .version)
        try container.encode(identity, forKey: .identity)
        try container.encode(attributes, forKey: .attributes)
        try container.encodeIfPresent(domain, forKey: .domain)
    }
}

/// Why a delivery attempt failed.
public enum DeliveryFailure: Error, Sendable, Equatable, CustomStringConvertible {
    /// Worth another attempt (HTTP 429, 5xx, a timeout, a throttling code, refused credentials), after
    /// `after` if the destination said.
    case retryable(String, after: Duration?)
    /// The whole call cannot succeed as it is (a list that does not exist, a request the API rejects).
    case permanent(String)

    public var description: String {
        switch self {
        case .retryable(let message, _), .permanent(let message): message
        }
    }
}

/// What a delivery needs besides the members: the activation, the run, for full exports every member
/// the activation has added once these changes are applied, and the connector's state per activation.
public struct DeliveryContext: Sendable {
    public var activation: ActivationRecord
    /// The run's start in milliseconds since 1970: increasing, so file names sort by run. A delivery
    /// repeated after a crash keeps its number.
    public var runNumber: Int
    public var currentMembers: @Sendable () async throws -> [OutboundMember]
    /// Reads a value the connector kept for this activation.
    public var loadState: @Sendable (String) async throws -> String?
    /// Keeps a value for this activation (committed before it returns).
    public var saveState: @Sendable (String, String) async throws -> Void

    /// `<activation>-<run number>`: the same for every attempt of this delivery, also after a restart
    /// (webhooks send it as the idempotency key).
    public var deliveryID: String { "\(activation.id)-\(runNumber)" }

    /// Creates a context.
    public init(
        activation: ActivationRecord,
        runNumber: Int,
        currentMembers: @escaping @Sendable () async throws -> [OutboundMember] = { [] },
        loadState: @escaping @Sendable (String) async throws -> String? = { _ in nil },
        saveState: @escaping @Sendable (String, String) async throws -> Void = { _, _ in }
    ) {
        self.activation = activation
        self.runNumber = runNumber
        self.currentMembers = currentMembers
        self.loadState = loadState
        self.saveState = saveState
    }
}

/// One kind of destination.
public protocol Connector: Sendable {
    /// The most members one delivery takes.
    var batchLimit: Int { get }
    /// Whether persons who opted out of email are kept out (marketing destinations).
    var suppressesOptedOut: Bool { get }
    /// The identity a member is known by when the activation does not say.
    var defaultIdentity: Cdp_Destination_V1_IdentityMapping { get }
    /// The identities the destination can take.
    var supportedIdentities: Set<Cdp_Destination_V1_IdentityMapping> { get }

    /// Delivers adds and removes. Returns the members the destination refused for good, with its
    /// words; throws ``DeliveryFailure`` when the whole call failed.
    func deliver(_ members: [OutboundMember], _ context: DeliveryContext) async throws -> [UInt64: String]
}

extension Connector {
    public var supportedIdentities: Set<Cdp_Destination_V1_IdentityMapping> { [.email, .hashedEmail, .crmID] }
}

/// What the calls of a delivery achieved, kept between its attempts: a retry repeats only the calls
/// that did not succeed (Marketo counts every call against its limits). Kept in memory: after a
/// restart a delivery's calls are all made again, which the destinations take as no-ops.
final class DeliveryProgress<Entry: Sendable>: Sendable {
    private let entries = Mutex<[String: Entry]>([:])

    /// Runs `body` on the delivery's progress so far; keeps it if `body` fails with a retryable failure.
    func run(_ delivery: String, _ initial: Entry, _ body: (inout Entry) async throws -> Void) async throws -> Entry {
        var entry = entries.withLock { $0.removeValue(forKey: delivery) } ?? initial
        do {
            try await body(&entry)
        } catch {
            if case .retryable? = error as? DeliveryFailure { entries.withLock { $0[delivery] = entry } }
            throw error
        }
        return entry
    }
}

/// How records become outbound members.
public enum MemberMapping {
    /// SHA-256 of the trimmed, lower-cased email, lower-case hex (LinkedIn's and the file exports'
    /// hashed email).
    public static func hashedEmail(_ email: String) -> String {
        let normalized = email.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
        return SHA256.hash(data: Data(normalized.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// An account's web domain: its domain, else its website's host without `www.`.
    public static func domain(of record: Cdp_Profile_V1_UnifiedRecord) -> String? {
        guard case .account? = record.record.entity else { return nil }
        let account = record.record.account
        if account.hasDomain, !account.domain.isEmpty { return account.domain.lowercased() }
        guard account.hasWebsite, !account.website.isEmpty else { return nil }
        let website = account.website.contains("://") ? account.website : "https://" + account.website
        guard var host = URLComponents(string: website)?.host?.lowercased(), !host.isEmpty else { return nil }
        if host.hasPrefix("www.") { host.removeFirst(4) }
        return host
    }

    /// Whether the record is a person who opted out of email.
    public static func optedOut(_ record: Cdp_Profile_V1_UnifiedRecord) -> Bool {
        record.record.person.hasEmailOptOut && record.record.person.emailOptOut
    }

    /// The identity of a member under a mapping; nil if the record lacks it.
    public static func identity(
        of record: Cdp_Profile_V1_UnifiedRecord,
        _ mapping: Cdp_Destination_V1_IdentityMapping
    ) -> String? {
        if case .account? = record.record.entity {
            let account = record.record.account
            return account.hasName ? account.name : nil
        }
        let person = record.record.person
        switch mapping {
        case .hashedEmail: return person.hasEmail ? hashedEmail(person.email) : nil
        case .crmID: return person.hasCrmID ? person.crmID : nil
        default: return person.hasEmail ? person.email : nil
        }
    }

    /// A digest of what a destination is told about a member besides its identity: the mapped
    /// attributes and an account's domain. Two equal digests need no update.
    public static func content(attributes: [String: String], domain: String?) -> String {
        var text = domain.map { "domain=\($0)\n" } ?? ""
        for (field, value) in attributes.sorted(by: { $0.key < $1.key }) {
            text += "\(field.count):\(field)=\(value.count):\(value)\n"
        }
        return SHA256.hash(data: Data(text.utf8)).prefix(16).map { String(format: "%02x", $0) }.joined()
    }

    /// An activation's attribute mapping (destination field → profile field) applied to a record;
    /// fields the record lacks are left out.
    public static func attributes(
        _ mapping: [String: String],
        of record: Cdp_Profile_V1_UnifiedRecord
    )
        -> [String: String]
    {
        var attributes: [String: String] = [:]
        for (field, source) in mapping {
            if let value = value(source, of: record) { attributes[field] = value }
        }
        return attributes
    }

    /// The profile fields an attribute mapping may name, per entity type.
    public static let personFields = ["email", "firstName", "lastName", "jobTitle", "country", "crmId", "score"]
    public static let accountFields = ["name", "domain", "website", "industry", "country"]

    /// Why `field` cannot be mapped, if it cannot: it must be a person or account field, or a custom
    /// attribute as `attributes.NAME`.
    public static func problem(withField field: String) -> String? {
        if field.hasPrefix("attributes.") {
            return field.count > "attributes.".count ? nil : "attributes. needs a custom attribute's name"
        }
        if personFields.contains(field) || accountFields.contains(field) { return nil }
        let guess = Suggestion.closest(to: field, among: personFields + accountFields).map { "did you mean \($0)? " }
        return "\(field) is not a profile field; \(guess ?? "")person fields: \(personFields.joined(separator: ", ")); "
            + "account fields: \(accountFields.joined(separator: ", ")); a custom attribute: attributes.NAME"
    }

    /// The value of a profile field of the record, by its PQL name (`firstName`, `jobTitle`), or of a
    /// custom attribute (`attributes.NAME`; a bare name, as activations made before named them, too).
    public static func value(_ field: String, of record: Cdp_Profile_V1_UnifiedRecord) -> String? {
        let person = record.record.person
        let account = record.record.account
        switch (record.record.entity, field) {
        case (.person?, "email"): return person.hasEmail ? person.email : nil
        case (.person?, "firstName"): return person.hasFirstName ? person.firstName : nil
        case (.person?, "lastName"): return person.hasLastName ? person.lastName : nil
        case (.person?, "jobTitle"): return person.hasJobTitle ? person.jobTitle : nil
        case (.person?, "country"): return person.hasCountry ? person.country : nil
        case (.person?, "crmId"): return person.hasCrmID ? person.crmID : nil
        case (.person?, "score"): return person.hasScore ? String(person.score) : nil
        case (.account?, "name"): return account.hasName ? account.name : nil
        case (.account?, "domain"): return account.hasDomain ? account.domain : nil
        case (.account?, "website"): return account.hasWebsite ? account.website : nil
        case (.account?, "industry"): return account.hasIndustry ? account.industry : nil
        case (.account?, "country"): return account.hasCountry ? account.country : nil
        default: break
        }
        let custom = field.hasPrefix("attributes.") ? String(field.dropFirst("attributes.".count)) : field
        switch record.record.customAttributes[custom]?.kind {
        case .stringValue(let text)?: return text
        case .numberValue(let number)?: return String(number)
        case .boolValue(let flag)?: return String(flag)
        case .jsonValue(let json)?: return json
        case nil: return nil
        }
    }
}

/// The nearest of a few names to a typo, for "did you mean" hints.
public enum Suggestion {
    /// The candidate within two edits of `word` (case ignored), the nearest first; nil if none is.
    public static func closest(to word: String, among candidates: [String]) -> String? {
        let scored = candidates.map { ($0, distance(Array(word.lowercased()), Array($0.lowercased()))) }
        guard let best = scored.min(by: { $0.1 < $1.1 }), best.1 <= 2 else { return nil }
        return best.0
    }

    /// Levenshtein distance, with a transposition counted as one edit.
    static func distance(_ a: [Character], _ b: [Character]) -> Int {
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var previous2 = [Int](repeating: 0, count: b.count + 1)
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + [Int](repeating: 0, count: b.count)
            for j in 1...b.count {
                let cost = a[i - 1] == b[j - 1] ? 0 : 1
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
                if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                    current[j] = min(current[j], previous2[j - 2] + 1)
                }
            }
            previous2 = previous
            previous = current
        }
        return previous[b.count]
    }
}

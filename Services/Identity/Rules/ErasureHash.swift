import CDPProto
import Crypto
import Foundation
import IdentityGraph

/// How privacy requests name a person's identities without keeping them: SHA-256 of the UTF-8 bytes
/// `<namespace>\n<value>`, the value as identity stores it. Profile hashes the identities of a person
/// it erases; ingestion keeps the hashes and refuses records naming any of them.
public enum ErasureHash {
    /// The hash of one identity (its value normalized as identity stores it).
    public static func of(_ identity: Identity) -> Data {
        let value = Namespace.normalized(identity.value, in: identity.namespace)
        return Data(SHA256.hash(data: Data((identity.namespace + "\n" + value).utf8)))
    }

    /// The person identities a record names: its own when it is a person record (or a person's
    /// crosswalk row), and those of the persons it references (relations, memberships, events).
    public static func personIdentities(of record: Cdp_Model_V1_Record) -> [Identity] {
        guard let plan = IdentityRules.plan(for: record) else { return [] }
        var identities = plan.graph == .person ? plan.identities : []
        for reference in plan.references where reference.graph == .person {
            identities += reference.identities
        }
        return identities
    }
}

import RPCCore

// The methods whose messages a service sends or reads with some of them kept serialized: the same calls
// on the wire as the generated methods, with the `…Bytes` messages of the .proto files, so that stored
// or received bytes pass through a hop without a decode and an encoding made again.

extension Cdp_Identity_V1_Identity.Method {
    /// `AcceptRecords` as ingestion's relay sends it: each record as stored (`AcceptRecordsRequestBytes`).
    public static let acceptRecordsBytes = RPCMethod<
        Cdp_Identity_V1_AcceptRecordsRequestBytes, Cdp_Identity_V1_AcceptRecordsResponse
    >(wireCompatibleWith: acceptRecords)

    /// `AcceptRecords` as identity serves it: each `StoredRecord` kept as it came
    /// (`AcceptRecordsRequestRecordBytes`).
    public static let acceptRecordsRecordBytes = RPCMethod<
        Cdp_Identity_V1_AcceptRecordsRequestRecordBytes, Cdp_Identity_V1_AcceptRecordsResponse
    >(wireCompatibleWith: acceptRecords)
}

extension Cdp_Profile_V1_Profile.Method {
    /// `AcceptIdentityUpdates` as identity's relay sends it: each update as stored
    /// (`AcceptIdentityUpdatesRequestBytes`).
    public static let acceptIdentityUpdatesBytes = RPCMethod<
        Cdp_Profile_V1_AcceptIdentityUpdatesRequestBytes, Cdp_Profile_V1_AcceptIdentityUpdatesResponse
    >(wireCompatibleWith: acceptIdentityUpdates)

    /// `AcceptIdentityUpdates` as profile serves it: each record's `cdp.model.v1.Record` kept as it came
    /// (`AcceptIdentityUpdatesRequestStoredBytes`).
    public static let acceptIdentityUpdatesStoredBytes = RPCMethod<
        Cdp_Profile_V1_AcceptIdentityUpdatesRequestStoredBytes, Cdp_Profile_V1_AcceptIdentityUpdatesResponse
    >(wireCompatibleWith: acceptIdentityUpdates)
}

extension Cdp_Segmentation_V1_Segmentation.Method {
    /// `AcceptStateChanges` as profile's relay sends it and segmentation serves it: each `StateChange`
    /// serialized (`AcceptStateChangesRequestChangeBytes`).
    public static let acceptStateChangesChangeBytes = RPCMethod<
        Cdp_Segmentation_V1_AcceptStateChangesRequestChangeBytes, Cdp_Segmentation_V1_AcceptStateChangesResponse
    >(wireCompatibleWith: acceptStateChanges)
}

extension Cdp_Destination_V1_Destination.Method {
    /// `AcceptMembershipChanges` as segmentation's relay sends it: each change as its outbox stored it,
    /// with its sequence appended (`AcceptMembershipChangesRequestBytes`).
    public static let acceptMembershipChangesBytes = RPCMethod<
        Cdp_Destination_V1_AcceptMembershipChangesRequestBytes, Cdp_Destination_V1_AcceptMembershipChangesResponse
    >(wireCompatibleWith: acceptMembershipChanges)
}

// The master-data (MDM) crosswalk: which source records are the same real-world account or person.

extension NativeFormat {
    /// An MDM crosswalk CSV: one row per source record that a master record groups, with the columns
    /// `masterId,entity,source,id`.
    ///
    /// `source` names the linked record's source as `Type:instance` (`Marketo:mkto-1`) and `id` is the
    /// record's id in that source (not a key), so the row `M-TOWNSEND,account,Marketo:mkto-1,0015g00000TWN001`
    /// links the account `0015g00000TWN001@mkto-1.Marketo`. Rows with the same `masterId` are the same entity.
    /// MDM products name these columns differently; the crosswalk is our own format and its columns are the
    /// canonical field names. Other columns (match rule, golden name, …) stay custom attributes.
    public static let mdm = NativeFormat(
        name: "MDM crosswalk CSV",
        objects: [
            NativeObject(
                "identityLink",
                entity: .identityLink,
                rules: [
                    ColumnRule("masterId", "masterId"),
                    ColumnRule("entity", "entity"),
                    ColumnRule("source", "source"),
                    ColumnRule("id", "id"),
                ]
            )
        ]
    )
}

// The Salesforce objects we read and how their columns map onto canonical entities.
//
// Column names are the standard API field names (Object Reference for the Salesforce Platform), which is
// what a Bulk API 2.0 query result (`"Id","Name",…`, every value quoted) and a Data Loader export
// (`"ID","NAME",…`, upper case) carry in their header; columns match ignoring case, so both read alike.
// Salesforce writes date-times as `2026-05-01T10:00:00.000Z` (Bulk API, Data Loader) or
// `2026-05-01T10:00:00.000+0000` (REST, SOAP); the parser takes both. Dates (`CloseDate`) are `2026-03-31`.
// FORMATS.md lists the tables with their sources.

extension NativeFormat {
    /// Salesforce CSV exports (Bulk API 2.0 query results or Data Loader exports) of Account, Contact, Lead,
    /// Opportunity, OpportunityContactRole, Campaign and CampaignMember.
    ///
    /// Every Salesforce record's own `Id` is also its `crmId`: Marketo persons synced from Salesforce carry
    /// the same id in `sfdcContactId`/`sfdcLeadId`, and Marketo opportunities in `externalOpportunityId`, so
    /// identity resolution joins the two sources on the `crmId` namespace. References (`AccountId`,
    /// `ContactId`, …) are ids of the same org and become keys `{id}@{instance}.Salesforce`.
    public static let salesforce = NativeFormat(
        name: "Salesforce CSV",
        objects: [
            SalesforceObjects.account,
            SalesforceObjects.contact,
            SalesforceObjects.lead,
            SalesforceObjects.opportunity,
            SalesforceObjects.opportunityContactRole,
            SalesforceObjects.campaign,
            SalesforceObjects.campaignMember,
        ]
    )
}

/// The Salesforce objects, one mapping table each.
private enum SalesforceObjects {
    /// Salesforce `Account` → account.
    static let account = NativeObject(
        "Account",
        entity: .account,
        rules: [
            ColumnRule("Id", "accountId"),
            ColumnRule("Id", "crmId"),
            ColumnRule("Name", "name"),
            ColumnRule("Website", "website"),
            // Salesforce has no domain field; the account schema reduces the website to its host name
            // (`https://www.townsend.com/` → `townsend.com`).
            ColumnRule("Website", "domain"),
            ColumnRule("Industry", "industry"),
            ColumnRule("AnnualRevenue", "annualRevenue"),
            ColumnRule("NumberOfEmployees", "employees"),
            ColumnRule("BillingCountry", "country"),
            // Filled only in orgs with Data.com / D&B; empty otherwise.
            ColumnRule("DunsNumber", "dunsNumber"),
            ColumnRule("ParentId", "parentAccountId"),
            ColumnRule("LastModifiedDate", "lastUpdated"),
            ColumnRule("IsDeleted", "isDeleted"),
        ]
    )

    /// Salesforce `Contact` → person of type Contact.
    static let contact = NativeObject(
        "Contact",
        entity: .person,
        rules: [
            ColumnRule("Id", "personId"),
            ColumnRule("Id", "crmId"),
            ColumnRule("AccountId", "accountId"),
            ColumnRule("Email", "email"),
            ColumnRule("FirstName", "firstName"),
            ColumnRule("LastName", "lastName"),
            ColumnRule("Title", "jobTitle"),
            // A contact's address of record is its mailing address (Adobe maps it to workAddress too).
            ColumnRule("MailingCountry", "country"),
            ColumnRule("HasOptedOutOfEmail", "emailOptOut"),
            ColumnRule("LastModifiedDate", "lastUpdated"),
            ColumnRule("IsDeleted", "isDeleted"),
        ],
        constants: [(field: "personType", value: "Contact")]
    )

    /// Salesforce `Lead` → person of type Lead.
    static let lead = NativeObject(
        "Lead",
        entity: .person,
        rules: [
            ColumnRule("Id", "personId"),
            ColumnRule("Id", "crmId"),
            ColumnRule("Email", "email"),
            ColumnRule("FirstName", "firstName"),
            ColumnRule("LastName", "lastName"),
            ColumnRule("Title", "jobTitle"),
            ColumnRule("Country", "country"),
            ColumnRule("HasOptedOutOfEmail", "emailOptOut"),
            // An open lead has no account in Salesforce (its `Company` is free text and stays a custom
            // attribute); a converted lead belongs to the account it was converted into.
            ColumnRule("ConvertedAccountId", "accountId"),
            ColumnRule("LastModifiedDate", "lastUpdated"),
            ColumnRule("IsDeleted", "isDeleted"),
        ],
        constants: [(field: "personType", value: "Lead")]
    )

    /// Salesforce `Opportunity` → opportunity.
    static let opportunity = NativeObject(
        "Opportunity",
        entity: .opportunity,
        rules: [
            ColumnRule("Id", "opportunityId"),
            ColumnRule("Id", "crmId"),
            ColumnRule("AccountId", "accountId"),
            ColumnRule("Name", "name"),
            ColumnRule("StageName", "stage"),
            ColumnRule("Amount", "amount"),
            // Present only in multi-currency orgs; single-currency exports have no currency column.
            ColumnRule("CurrencyIsoCode", "currency"),
            ColumnRule("IsClosed", "isClosed"),
            ColumnRule("IsWon", "isWon"),
            ColumnRule("CloseDate", "closeDate"),
            ColumnRule("LastModifiedDate", "lastUpdated"),
            ColumnRule("IsDeleted", "isDeleted"),
        ]
    )

    /// Salesforce `OpportunityContactRole` → opportunity-person relation. Its own `Id` is not needed: the
    /// relation's key is opportunity + person, so `Id` stays a custom attribute.
    static let opportunityContactRole = NativeObject(
        "OpportunityContactRole",
        entity: .opportunityPersonRelation,
        rules: [
            ColumnRule("OpportunityId", "opportunityId"),
            ColumnRule("ContactId", "personId"),
            ColumnRule("Role", "role"),
            ColumnRule("IsPrimary", "isPrimary"),
            ColumnRule("LastModifiedDate", "lastUpdated"),
            ColumnRule("IsDeleted", "isDeleted"),
        ]
    )

    /// Salesforce `Campaign` → campaign.
    static let campaign = NativeObject(
        "Campaign",
        entity: .campaign,
        rules: [
            ColumnRule("Id", "campaignId"),
            ColumnRule("Name", "name"),
            ColumnRule("Type", "type"),
            ColumnRule("Status", "status"),
            ColumnRule("LastModifiedDate", "lastUpdated"),
            ColumnRule("IsDeleted", "isDeleted"),
        ]
    )

    /// Salesforce `CampaignMember` → campaign member.
    ///
    /// A member is a lead or a contact, both persons of the same org, so `LeadId`, `ContactId` and
    /// `LeadOrContactId` (the one Adobe's Salesforce source reads) all feed `personId`; an empty cell feeds
    /// nothing. A member created from a lead that was later converted has both `LeadId` and `ContactId`;
    /// the mapper keeps the value of the last non-empty of these columns, so exports should list `LeadId`
    /// before `ContactId`/`LeadOrContactId` to make such a member the contact's.
    static let campaignMember = NativeObject(
        "CampaignMember",
        entity: .campaignMember,
        rules: [
            ColumnRule("CampaignId", "campaignId"),
            ColumnRule("LeadId", "personId"),
            ColumnRule("ContactId", "personId"),
            ColumnRule("LeadOrContactId", "personId"),
            ColumnRule("Status", "status"),
            ColumnRule("HasResponded", "hasResponded"),
            ColumnRule("LastModifiedDate", "lastUpdated"),
            ColumnRule("IsDeleted", "isDeleted"),
        ]
    )
}

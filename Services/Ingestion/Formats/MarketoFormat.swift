// The Marketo objects we read and how their columns map onto canonical entities.
//
// Leads, activities and program members come from Marketo's bulk extracts, whose CSV header is the REST API
// name of each exported field. Companies, opportunities, opportunity roles, programs, static lists and list
// membership have no bulk extract: their files carry one column per REST API field of the object (nested
// values such as a program's `folder` flattened by the exporting tool), and list membership is a pair
// `listId,leadId` of our own choosing. FORMATS.md lists the tables with their sources.
//
// Keys follow Marketo's own links so that references resolve inside one instance: leads and opportunities
// name their company by `externalCompanyId` (Marketo's dedupe field for companies), so a company's
// `accountId` is its `externalCompanyId` and its numeric `id` stays a custom attribute; opportunity roles
// name their opportunity by `externalOpportunityId`, so that is the opportunity's id (its `marketoGUID`
// stays a custom attribute).

extension NativeFormat {
    /// Marketo bulk extract CSV (leads, activities, program members) and CSV renderings of the REST objects
    /// (companies, opportunities, opportunity roles, programs, static lists, static list members).
    ///
    /// Objects are named as the batch's `entity` names them: `leads`, `companies`, `opportunities`,
    /// `opportunityRoles`, `programs`, `programMembers`, `staticLists`, `staticListMembers`, `activities`.
    public static let marketo = NativeFormat(
        name: "Marketo bulk extract CSV",
        objects: [
            MarketoObjects.leads,
            MarketoObjects.companies,
            MarketoObjects.opportunities,
            MarketoObjects.opportunityRoles,
            MarketoObjects.programs,
            MarketoObjects.programMembers,
            MarketoObjects.staticLists,
            MarketoObjects.staticListMembers,
            MarketoObjects.activities,
        ]
    )
}

extension ValueTransform {
    /// Marketo's bulk extracts write the word `null` for an empty field ("If a requested lead field is empty
    /// … `null` is placed in the corresponding field in the export file"). The lookup turns it (in any case)
    /// into empty text, which every field kind reads as absent; other values pass unchanged.
    fileprivate static let marketoNull = ValueTransform.lookup(["null": ""], otherwise: .keep)

    /// Marketo activity type ids → XDM `eventType`. The ids and names are Marketo's standard activity types
    /// (the same in every instance; custom types start at 100000) as Adobe's Marketo activity event list
    /// gives them; the values are the XDM ExperienceEvent `eventType` values that Adobe's Marketo connector
    /// uses for those activities (Adobe publishes no id → eventType table, so the pairing is ours). Types
    /// without an XDM value become `marketo.activity.{id}` (e.g. `marketo.activity.13`, Change Data Value).
    fileprivate static let marketoActivityType = ValueTransform.lookup(
        [
            "1": "web.webpagedetails.pageViews",  // Visit Webpage
            "2": "web.formFilledOut",  // Fill Out Form
            "3": "web.webinteraction.linkClicks",  // Click Link
            "6": "directMarketing.emailSent",  // Send Email
            "7": "directMarketing.emailDelivered",  // Email Delivered
            "8": "directMarketing.emailBounced",  // Email Bounced
            "9": "directMarketing.emailUnsubscribed",  // Unsubscribe Email
            "10": "directMarketing.emailOpened",  // Open Email
            "11": "directMarketing.emailClicked",  // Click Email
            "12": "leadOperation.newLead",  // New Lead
            "21": "leadOperation.convertLead",  // Convert Lead
            "22": "leadOperation.scoreChanged",  // Change Score
            "24": "listOperation.addToList",  // Add to List
            "25": "listOperation.removeFromList",  // Remove from List
            "27": "directMarketing.emailBouncedSoft",  // Email Bounced Soft
            "32": "leadOperation.mergeLeads",  // Merge Leads
            "34": "opportunityEvent.addToOpportunity",  // Add to Opportunity
            // 35 and 36 are the other two opportunity activities of Adobe's mapping (with 34); their
            // Marketo names (Remove from / Update Opportunity) are not in Adobe's published event list.
            "35": "opportunityEvent.removeFromOpportunity",
            "36": "opportunityEvent.opportunityUpdated",
            "46": "leadOperation.interestingMoment",  // Interesting Moment
            "104": "leadOperation.statusInCampaignProgressionChanged",  // Change Status in Progression
            "110": "leadOperation.callWebhook",  // Call Webhook
            "114": "leadOperation.changeCampaignStream",  // Change Nurture Track
            "115": "leadOperation.changeEngagementCampaignCadence",  // Change Nurture Cadence
        ],
        otherwise: .template("marketo.activity.{}")
    )
}

/// The Marketo objects, one mapping table each.
private enum MarketoObjects {
    /// Bulk lead extract → person. Every Marketo person is a lead; one synced to a Salesforce contact says
    /// so in `sfdcType` (`Lead` or `Contact`), which overrides the default type.
    static let leads = NativeObject(
        "leads",
        entity: .person,
        rules: [
            ColumnRule("id", "personId", .marketoNull),
            ColumnRule("email", "email", .marketoNull),
            ColumnRule("firstName", "firstName", .marketoNull),
            ColumnRule("lastName", "lastName", .marketoNull),
            ColumnRule("title", "jobTitle", .marketoNull),
            // Values other than Lead/Contact (and null) are dropped, so the constant Lead applies.
            ColumnRule("sfdcType", "personType", .lookup(["Lead": "Lead", "Contact": "Contact"], otherwise: .drop)),
            ColumnRule("leadScore", "score", .marketoNull),
            ColumnRule("country", "country", .marketoNull),
            // The lead's company, by the company's dedupe field (see `companies`).
            ColumnRule("externalCompanyId", "accountId", .marketoNull),
            // The Salesforce record the lead is synced with, so it joins the Salesforce person with the same
            // `crmId`. Adobe picks one of the two by `sfdcType`; here a synced lead fills one of them, and
            // when both are filled (a converted lead) the later column of the header wins, so extracts
            // should list `sfdcLeadId` before `sfdcContactId`.
            ColumnRule("sfdcLeadId", "crmId", .marketoNull),
            ColumnRule("sfdcContactId", "crmId", .marketoNull),
            ColumnRule("unsubscribed", "emailOptOut", .marketoNull),
            ColumnRule("updatedAt", "lastUpdated", .marketoNull),
        ],
        constants: [(field: "personType", value: "Lead")]
    )

    /// Companies (REST `GET /rest/v1/companies.json` fields) → account.
    static let companies = NativeObject(
        "companies",
        entity: .account,
        rules: [
            ColumnRule("externalCompanyId", "accountId", .marketoNull),
            ColumnRule("company", "name", .marketoNull),
            ColumnRule("website", "website", .marketoNull),
            // Marketo has no domain field; the account schema reduces the website to its host name.
            ColumnRule("website", "domain", .marketoNull),
            ColumnRule("industry", "industry", .marketoNull),
            ColumnRule("annualRevenue", "annualRevenue", .marketoNull),
            ColumnRule("numberOfEmployees", "employees", .marketoNull),
            ColumnRule("billingCountry", "country", .marketoNull),
            ColumnRule("updatedAt", "lastUpdated", .marketoNull),
        ]
    )

    /// Opportunities (REST `GET /rest/v1/opportunities.json` fields) → opportunity.
    static let opportunities = NativeObject(
        "opportunities",
        entity: .opportunity,
        rules: [
            ColumnRule("externalOpportunityId", "opportunityId", .marketoNull),
            // Marketo labels `externalOpportunityId` "SFDC Oppty Id": with a CRM sync it is the CRM's id.
            ColumnRule("externalOpportunityId", "crmId", .marketoNull),
            ColumnRule("externalCompanyId", "accountId", .marketoNull),
            ColumnRule("name", "name", .marketoNull),
            ColumnRule("stage", "stage", .marketoNull),
            ColumnRule("amount", "amount", .marketoNull),
            ColumnRule("isClosed", "isClosed", .marketoNull),
            ColumnRule("isWon", "isWon", .marketoNull),
            ColumnRule("closeDate", "closeDate", .marketoNull),
            ColumnRule("updatedAt", "lastUpdated", .marketoNull),
        ]
    )

    /// Opportunity roles (REST `GET /rest/v1/opportunities/roles.json` fields) → opportunity-person relation.
    static let opportunityRoles = NativeObject(
        "opportunityRoles",
        entity: .opportunityPersonRelation,
        rules: [
            ColumnRule("externalOpportunityId", "opportunityId", .marketoNull),
            ColumnRule("leadId", "personId", .marketoNull),
            ColumnRule("role", "role", .marketoNull),
            ColumnRule("isPrimary", "isPrimary", .marketoNull),
            ColumnRule("updatedAt", "lastUpdated", .marketoNull),
        ]
    )

    /// Programs (Asset REST `GET /rest/asset/v1/programs.json` fields) → campaign. `channel`, `folder`,
    /// `sfdcId` and the rest stay custom attributes.
    static let programs = NativeObject(
        "programs",
        entity: .campaign,
        rules: [
            ColumnRule("id", "campaignId", .marketoNull),
            ColumnRule("name", "name", .marketoNull),
            ColumnRule("type", "type", .marketoNull),
            ColumnRule("status", "status", .marketoNull),
            ColumnRule("updatedAt", "lastUpdated", .marketoNull),
        ]
    )

    /// Bulk program member extract → campaign member.
    static let programMembers = NativeObject(
        "programMembers",
        entity: .campaignMember,
        rules: [
            ColumnRule("programId", "campaignId", .marketoNull),
            ColumnRule("leadId", "personId", .marketoNull),
            ColumnRule("statusName", "status", .marketoNull),
            // Marketo's notion of a response: the member reached a success status of the program's channel
            // (the statuses Marketo's Salesforce campaign sync marks as responded).
            ColumnRule("reachedSuccess", "hasResponded", .marketoNull),
            ColumnRule("updatedAt", "lastUpdated", .marketoNull),
        ]
    )

    /// Static lists (Asset REST `GET /rest/asset/v1/staticLists.json` fields) → marketing list.
    static let staticLists = NativeObject(
        "staticLists",
        entity: .marketingList,
        rules: [
            ColumnRule("id", "listId", .marketoNull),
            ColumnRule("name", "name", .marketoNull),
            ColumnRule("updatedAt", "lastUpdated", .marketoNull),
        ]
    )

    /// Static list membership (`listId` plus the lead's `id` from `GET /rest/v1/lists/{listId}/leads.json`,
    /// written `leadId`) → marketing list member. Other lead fields in the file stay custom attributes.
    static let staticListMembers = NativeObject(
        "staticListMembers",
        entity: .marketingListMember,
        rules: [
            ColumnRule("listId", "listId", .marketoNull),
            ColumnRule("leadId", "personId", .marketoNull),
        ]
    )

    /// Bulk activity extract → event.
    ///
    /// For Visit Webpage the export has no full URL: `primaryAttributeValue` is host and path without the
    /// scheme (`bodea.example/new-product`) and the `Webpage URL` attribute is the path (`/new-product`),
    /// with the query string apart in `Query Parameters`. As Adobe's connector does, `url` takes the
    /// `Webpage URL` attribute and `name` the primary attribute value (for other types the name of the
    /// email, form, list or program). Click Email carries the clicked URL in its `Link` attribute.
    static let activities = NativeObject(
        "activities",
        entity: .event,
        rules: [
            ColumnRule("marketoGUID", "eventId", .marketoNull),
            ColumnRule("leadId", "personId", .marketoNull),
            ColumnRule("activityDate", "timestamp", .marketoNull),
            ColumnRule("activityTypeId", "eventType", .marketoActivityType),
            // An activity has at most one of the two attributes; a missing one feeds nothing.
            ColumnRule("attributes", "url", .jsonProperty("Webpage URL")),
            ColumnRule("attributes", "url", .jsonProperty("Link")),
            ColumnRule("primaryAttributeValue", "name", .marketoNull),
        ]
    )
}

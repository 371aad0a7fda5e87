import CDPProto

/// Validates and normalizes records that arrive typed (StreamRecords, or records instead of a file):
/// the same rules as for files, applied to the message's fields.
public enum TypedRecords {
    /// The record as stored: source set, ids checked, emails and references normalized, key built.
    /// Keys sent by the client are ignored: the key is always built from the source and the ids.
    public static func normalize(_ input: Cdp_Model_V1_Record, source: Cdp_Model_V1_Source) -> MappedRecord {
        var record = input
        record.source = source
        var check = Checker(source: source)
        switch record.entity {
        case .person(var person)?:
            check.identifier(&person.personID, "personId", required: true)
            if person.hasEmail { check.email(&person.email, "email") }
            if person.hasAccountKey { check.reference(&person.accountKey, "accountId") }
            if person.hasCrmID { check.identifier(&person.crmID, "crmId") }
            if person.hasEcid { check.identifier(&person.ecid, "ecid") }
            return check.finish(record, person, EntitySchema.person)
        case .account(var account)?:
            check.identifier(&account.accountID, "accountId", required: true)
            if account.hasParentAccountKey { check.reference(&account.parentAccountKey, "parentAccountId") }
            if account.hasCrmID { check.identifier(&account.crmID, "crmId") }
            if account.hasDunsNumber { check.identifier(&account.dunsNumber, "dunsNumber") }
            return check.finish(record, account, EntitySchema.account)
        case .opportunity(var opportunity)?:
            check.identifier(&opportunity.opportunityID, "opportunityId", required: true)
            if opportunity.hasAccountKey { check.reference(&opportunity.accountKey, "accountId") }
            if opportunity.hasCurrency { check.currency(&opportunity.currency) }
            if opportunity.hasCrmID { check.identifier(&opportunity.crmID, "crmId") }
            return check.finish(record, opportunity, EntitySchema.opportunity)
        case .accountPersonRelation(var relation)?:
            check.reference(&relation.accountKey, "accountId", required: true)
            check.reference(&relation.personKey, "personId", required: true)
            return check.finish(record, relation, EntitySchema.accountPersonRelation)
        case .opportunityPersonRelation(var relation)?:
            check.reference(&relation.opportunityKey, "opportunityId", required: true)
            check.reference(&relation.personKey, "personId", required: true)
            return check.finish(record, relation, EntitySchema.opportunityPersonRelation)
        case .campaign(var campaign)?:
            check.identifier(&campaign.campaignID, "campaignId", required: true)
            return check.finish(record, campaign, EntitySchema.campaign)
        case .campaignMember(var member)?:
            check.reference(&member.campaignKey, "campaignId", required: true)
            check.reference(&member.personKey, "personId", required: true)
            return check.finish(record, member, EntitySchema.campaignMember)
        case .marketingList(var list)?:
            check.identifier(&list.listID, "listId", required: true)
            return check.finish(record, list, EntitySchema.marketingList)
        case .marketingListMember(var member)?:
            check.reference(&member.listKey, "listId", required: true)
            check.reference(&member.personKey, "personId", required: true)
            return check.finish(record, member, EntitySchema.marketingListMember)
        case .event(var event)?:
            check.identifier(&event.eventID, "eventId", required: true)
            if event.hasPersonKey { check.reference(&event.personKey, "personId") }
            if event.hasEmail { check.email(&event.email, "email") }
            if event.hasEcid { check.identifier(&event.ecid, "ecid") }
            event.eventType = Normalize.trim(event.eventType)
            if event.eventType.isEmpty { check.missing("eventType") }
            if !event.hasTimestamp { check.missing("timestamp") }
            return check.finish(record, event, EntitySchema.event)
        case .identityLink(var link)?:
            check.identifier(&link.masterID, "masterId", required: true)
            if link.entityType != .person && link.entityType != .account {
                check.errors.append(
                    FieldError(field: "entity", reason: "an identity link is for a person or an account")
                )
            }
            guard SourceKey.isSourceKey(link.linkedKey) else {
                check.errors.append(
                    FieldError(field: "id", reason: "linkedKey must be a source key {id}@{instance}.{type}")
                )
                return .rejected(check.errors)
            }
            // The schema's finish builds the linked key from a source and id; a typed link has the key.
            record.key = SourceKey.make(link.masterID + "/" + link.linkedKey, in: source)
            guard check.errors.isEmpty else { return .rejected(check.errors) }
            record.entity = .identityLink(link)
            return .record(record)
        case nil:
            return .rejected([FieldError(field: "", reason: "the record has no entity (person, account, event, ...)")])
        }
    }

    private struct Checker {
        let source: Cdp_Model_V1_Source
        var errors: [FieldError] = []

        mutating func missing(_ field: String) {
            errors.append(FieldError(field: field, reason: "\(field) is required and is missing or empty"))
        }

        mutating func identifier(_ value: inout String, _ field: String, required: Bool = false) {
            value = Normalize.trim(value)
            if value.isEmpty {
                if required { missing(field) }
                return
            }
            if case .failure(let failure) = FieldConverter.convert(.string(value), to: .identifier) {
                errors.append(FieldError(field: field, reason: failure.message))
            }
        }

        mutating func reference(_ value: inout String, _ field: String, required: Bool = false) {
            identifier(&value, field, required: required)
            if !value.isEmpty { value = SourceKey.reference(value, in: source) }
        }

        mutating func email(_ value: inout String, _ field: String) {
            switch FieldConverter.convert(.string(value), to: .email) {
            case .success(.string(let email)?): value = email
            case .failure(let failure): errors.append(FieldError(field: field, reason: failure.message))
            default: break
            }
        }

        mutating func currency(_ value: inout String) {
            switch FieldConverter.convert(.string(value), to: .currency) {
            case .success(.string(let code)?): value = code
            case .failure(let failure): errors.append(FieldError(field: "currency", reason: failure.message))
            default: break
            }
        }

        func finish<Entity>(
            _ record: Cdp_Model_V1_Record,
            _ entity: Entity,
            _ schema: EntitySchema<Entity>
        )
            -> MappedRecord
        {
            guard errors.isEmpty else { return .rejected(errors) }
            var draft = RecordDraft(record: record, entity: entity, source: source, linkedSource: nil)
            if let failure = schema.finish(&draft) {
                return .rejected([FieldError(field: failure.field, reason: failure.reason)])
            }
            draft.record.entity = schema.wrap(draft.entity)
            return .record(draft.record)
        }
    }
}

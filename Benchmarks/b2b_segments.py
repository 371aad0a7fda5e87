"""Twenty segments over the generated B2B data (Benchmarks/b2b_generator.py), for the pipeline benchmark
and the crash test.

They cover the PQL dialect's kinds of condition, each over values the generator writes (its manifest's
``vocabulary``): person attributes, string functions, the person's accounts and their opportunities
(sums, filters, counts), opportunity roles, campaign and list memberships, event windows, ``inSegment``,
and account audiences. ``segments(manifest)`` returns them as (name, entity, definition); names are
unique, so a later ``inSegment`` can name an earlier segment by the id the service gave it (the
``{ref:NAME}`` placeholder, replaced by ``resolve``).
"""

from __future__ import annotations

import re

BODEA_URL = "https://bodea.example/new-product"


def _pick(vocabulary: dict, key: str, index: int, fallback: str) -> str:
    values = vocabulary.get(key) or []
    return values[index % len(values)] if values else fallback


def segments(manifest: dict) -> list[tuple[str, str, str]]:
    """The twenty (name, entity, PQL) of the benchmark, with values from the manifest's vocabulary."""
    v = manifest.get("vocabulary", {})
    industry, industry2 = _pick(v, "industries", 0, "Software"), _pick(v, "industries", 1, "Retail")
    country, country2 = _pick(v, "countries", 0, "US"), _pick(v, "countries", 1, "DE")
    campaign_type = _pick(v, "campaign_types", 0, "Webinar")
    pricing = next((u for u in v.get("urls", []) if u.endswith("/pricing")), "https://bodea.example/pricing")
    demo = next((u for u in v.get("urls", []) if u.endswith("/demo")), "https://bodea.example/demo")
    return [
        ("bodea-won-and-visited", "person",
         "(sum O.amount over O from person.accounts.opportunities where (O.isClosed = true and O.isWon = true))"
         f' > 1000000 and exists E from xEvent where (E.eventType = "web.webpagedetails.pageViews"'
         f' and E.url = "{BODEA_URL}" and E.timestamp occurs <= 1 months before now)'),
        ("engaged-and-reachable", "person", "person.score >= 50 and not person.emailOptOut"),
        ("two-countries", "person", f'person.country in ["{country}", "{country2}"]'),
        ("senior-titles", "person",
         'person.jobTitle.contains("vp", false) or person.jobTitle.contains("director", false)'
         ' or person.jobTitle.contains("chief", false)'),
        ("industry-accounts", "person", f'person.accounts[industry = "{industry}"].count() >= 1'),
        ("decision-makers-of-won", "person",
         'exists R from person.opportunityRoles where (R.role = "Decision Maker" and R.opportunity.isWon = true)'),
        ("active-readers", "person",
         'xEvent[eventType = "web.webpagedetails.pageViews" and timestamp occurs <= 30 days before now]'
         ".count() >= 3"),
        ("pricing-last-week", "person",
         f'exists E from xEvent where (E.url = "{pricing}" and E.timestamp occurs <= 7 days before now)'),
        ("big-open-pipeline", "person",
         "exists O from person.opportunities where (O.isClosed = false and O.amount > 100000)"),
        ("campaign-responders", "person",
         f'exists C from person.campaigns where (C.hasResponded = true and C.campaign.type = "{campaign_type}")'),
        ("on-two-lists", "person", "person.lists.count() >= 2"),
        ("contacts-with-email", "person", 'person.personType = "Contact" and person.email.endsWith(".com")'),
        ("demo-requesters-q1", "person",
         f'exists E from xEvent where (E.url = "{demo}" and E.timestamp occurs between date(2026, 1, 1)'
         " and date(2026, 4, 1))"),
        ("large-enterprise-people", "person", "person.accounts[employees > 5000].count() >= 1"),
        ("closing-this-quarter", "person",
         "exists O from person.opportunities where (O.closeDate >= date(2026, 4, 1) and O.isClosed = false)"),
        ("engaged-senior", "person", "inSegment({ref:senior-titles}) and inSegment({ref:engaged-and-reachable})"),
        ("accounts-two-wins", "account", "account.opportunities[isWon = true].count() >= 2"),
        ("accounts-big-wins", "account",
         "(sum O.amount over O from account.opportunities where O.isWon = true) > 500000"),
        ("accounts-many-people", "account", "account.persons.count() >= 10"),
        ("accounts-in-two-industries", "account",
         f'account.industry in ["{industry}", "{industry2}"] and account.annualRevenue > 10000000'),
    ]


def resolve(definition: str, ids: dict[str, str]) -> str:
    """The definition with each ``{ref:NAME}`` replaced by the quoted id of the segment NAME."""
    return re.sub(r"\{ref:([^}]+)\}", lambda m: f'"{ids[m.group(1)]}"', definition)

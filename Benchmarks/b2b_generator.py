"""Synthetic B2B customer data with ground truth, as canonical files for `cdp ingest`.

Usage:
    .venv/bin/python Benchmarks/b2b_generator.py --out DIR [--seed 42] [--persons 1000000]
        [--accounts 200000] [--opportunities 500000] [--events 5000000] [--end 2026-05-01T00:00:00Z]

or, from Python, ``generate(Path(DIR), seed=42, persons=..., ...) -> manifest``.

Data model
----------
Five sources: ``Salesforce:sfdc-1`` (the CRM), ``Marketo:mkto-1`` and ``Marketo:mkto-2`` (two
marketing-automation instances), ``MDM:mdm-1`` (a crosswalk) and ``Web:web-1`` (web and email events).
The sizes are RECORD counts (fragments, summed over all sources); the true entity counts follow from
them and are reported in the manifest. Same seed and sizes give byte-identical files.

* True accounts have fragments in 1-3 of sfdc-1 / mkto-1 / mkto-2 (about 55% / 30% / 15%). Salesforce
  fragments have crmId = their Id (``0015g…``); Marketo companies have numeric ids. A multi-fragment
  account is joined either by MDM crosswalk rows (~75%, one ``identityLink`` row per fragment with a
  shared ``M-ACC-nnnnnnn`` master id) or by a shared ``dunsNumber`` (the rest). Persons per account are
  skewed (by employee count) and capped at 300, opportunities per account at 80 (raised only when the
  sizes cannot fit otherwise).
* True persons have fragments in 1-3 sources (~45% / 40% / 15%). Their fragments share one email
  (sometimes in other case or with surrounding spaces, which ingestion normalises); Salesforce
  fragments (Contacts ``0035g…``, some Leads ``00Q5g…``) have crmId = Id and most synced Marketo leads
  carry that crmId; Marketo leads carry the person's ecid. About 3% of multi-source persons have a
  different email and no crmId/ecid in one Marketo instance: only an MDM ``identityLink`` pair
  (``M-PER-nnnnnnn``) joins that fragment. No email, crmId, ecid, dunsNumber or master id is ever
  shared by two true entities, and none is a placeholder (empty, "null", "0", ...).
* Person fragments name an account fragment of their true account in their own source, else a full
  source key (``{id}@{instance}.{type}``) of another fragment of it; ~5% have no account. ~5% of
  persons get an extra Salesforce ``accountPersonRelation`` to a second account.
* Opportunities live in Salesforce (in a Marketo instance when the account has no Salesforce
  fragment); ~10% of Salesforce ones are synced into mkto-1 as a second fragment with crmId = the
  Salesforce Id (one true opportunity). Each true opportunity has 0-3 ``opportunityPersonRelation``
  rows to persons of its account. Stages are consistent with isClosed/isWon; closeDate falls in the
  year before --end.
* Campaigns (Salesforce, ~200 per million person records) with ~0.3 members per person record;
  marketing lists (~100 per million, alternating between the Marketo instances) with ~0.2 members
  per person record.
* Events (NDJSON): spread over the 365 days before --end, denser towards --end, a minority of persons
  producing most of them; ~70% page views, the rest form fills and email opens/clicks on ~60 pages
  of https://bodea.example. The person is named by ecid (~50%), email (~35%) or the full source key of
  a Marketo lead (~15%), always an identity some person fragment carries.

Files
-----
``DIR/<instance>/<entity>.csv`` in canonical CSV (header = canonical field names),
``DIR/mdm-1/identityLink.csv`` (masterId,entity,source,id), ``DIR/web-1/event.ndjson`` and:

* ``DIR/manifest.json``: generator, version, seed, end, sizes, sources, files (in the recommended
  ingestion order: accounts, the crosswalk, persons, opportunities, relations, campaigns, members,
  lists, list members, events last; each with path, entity, source, format and record count),
  records per entity (and total), truth counts and the vocabularies used.
* ``DIR/truth/persons.csv`` (sourceKey,truePerson,email - the fragment's normalised email or empty),
  ``truth/accounts.csv`` (sourceKey,trueAccount), ``truth/opportunities.csv``
  (sourceKey,trueOpportunity), ``truth/events.csv`` (eventKey,truePerson).

Benchmarks/ground_truth.py compares what profile unified against these truth files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from bisect import bisect_right
from datetime import datetime, timedelta, timezone
from itertools import accumulate
from pathlib import Path
from random import Random

VERSION = 1
DEFAULT_END = "2026-05-01T00:00:00Z"
DEFAULT_SIZES = {"persons": 1_000_000, "accounts": 200_000, "opportunities": 500_000, "events": 5_000_000}

# The CRM/marketing sources that hold persons, accounts and opportunities, by index.
SFDC, MKTO1, MKTO2 = 0, 1, 2
SRC_SPEC = ("Salesforce:sfdc-1", "Marketo:mkto-1", "Marketo:mkto-2")
SRC_INSTANCE = ("sfdc-1", "mkto-1", "mkto-2")
SRC_SUFFIX = ("@sfdc-1.Salesforce", "@mkto-1.Marketo", "@mkto-2.Marketo")
MDM_SPEC, WEB_SPEC = "MDM:mdm-1", "Web:web-1"
SOURCES = [{"type": "Salesforce", "instance": "sfdc-1"}, {"type": "Marketo", "instance": "mkto-1"},
           {"type": "Marketo", "instance": "mkto-2"}, {"type": "MDM", "instance": "mdm-1"},
           {"type": "Web", "instance": "web-1"}]

HEADERS = {
    "person": "personId,email,firstName,lastName,jobTitle,personType,score,country,accountId,crmId,ecid,"
              "emailOptOut,lastUpdated",
    "account": "accountId,name,domain,website,industry,annualRevenue,employees,country,dunsNumber,crmId,lastUpdated",
    "opportunity": "opportunityId,accountId,name,stage,amount,currency,isClosed,isWon,closeDate,crmId,lastUpdated",
    "accountPersonRelation": "accountId,personId,role,isPrimary,isActive",
    "opportunityPersonRelation": "opportunityId,personId,role,isPrimary",
    "campaign": "campaignId,name,type,status",
    "campaignMember": "campaignId,personId,status,hasResponded",
    "marketingList": "listId,name",
    "marketingListMember": "listId,personId",
    "identityLink": "masterId,entity,source,id",
}

# Fragment count (1, 2, 3) weights and the source sets of each count, with weights.
ACCOUNT_FRAGMENTS = (55, 30, 15)
PERSON_FRAGMENTS = (45, 40, 15)
ACCOUNT_SOURCE_SETS = {1: (((SFDC,), 60), ((MKTO1,), 25), ((MKTO2,), 15)),
                       2: (((SFDC, MKTO1), 50), ((SFDC, MKTO2), 30), ((MKTO1, MKTO2), 20)),
                       3: (((SFDC, MKTO1, MKTO2), 1),)}
PERSON_SOURCE_SETS = {1: (((SFDC,), 35), ((MKTO1,), 40), ((MKTO2,), 25)),
                      2: (((SFDC, MKTO1), 50), ((SFDC, MKTO2), 25), ((MKTO1, MKTO2), 25)),
                      3: (((SFDC, MKTO1, MKTO2), 1),)}
ACCOUNT_MDM_SHARE = 0.75        # of multi-fragment accounts; the rest share a dunsNumber
PERSON_MDM_ONLY_SHARE = 0.03    # of multi-source persons with at least one Marketo fragment
PERSON_NO_ACCOUNT_SHARE = 0.05
PERSON_EXTRA_RELATION_SHARE = 0.05
SYNCED_OPPORTUNITY_SHARE = 0.10
MAX_PERSONS_PER_ACCOUNT = 300
MAX_OPPORTUNITIES_PER_ACCOUNT = 80
CAMPAIGNS_PER_MILLION, LISTS_PER_MILLION = 200, 100
CAMPAIGN_MEMBERS_PER_PERSON, LIST_MEMBERS_PER_PERSON = 0.3, 0.2
# Events per person follow a Pareto law, capped so that a view's event window is not dominated by one.
EVENT_WEIGHT_CAP = 200.0
# Marketo numeric id ranges per object, disjoint so that no id is reused across entity kinds.
MKTO_LEAD_BASE, MKTO_COMPANY_BASE, MKTO_OPPORTUNITY_BASE, MKTO_LIST_BASE = 1_000_001, 50_000_001, 90_000_001, 1001

INDUSTRIES = (("Software", 14), ("Financial Services", 10), ("Healthcare", 9), ("Manufacturing", 11),
              ("Retail", 8), ("Telecommunications", 5), ("Energy", 4), ("Education", 5), ("Government", 3),
              ("Media & Entertainment", 5), ("Transportation & Logistics", 6), ("Pharmaceuticals", 4),
              ("Insurance", 6), ("Hospitality", 4), ("Professional Services", 9))
COUNTRIES = (("United States", 40, "com"), ("United Kingdom", 9, "co.uk"), ("Germany", 8, "de"),
             ("France", 6, "fr"), ("Canada", 5, "ca"), ("Japan", 4, "jp"), ("India", 4, "in"),
             ("Australia", 4, "com.au"), ("Netherlands", 3, "nl"), ("Brazil", 3, "com.br"), ("Spain", 3, "es"),
             ("Italy", 3, "it"), ("Sweden", 2, "se"), ("Switzerland", 2, "ch"), ("Singapore", 2, "sg"),
             ("Ireland", 2, "ie"))
STAGES = (("Prospecting", 15), ("Qualification", 15), ("Proposal", 12), ("Negotiation", 8),
          ("Closed Won", 25), ("Closed Lost", 25))
CURRENCIES = (("USD", 75), ("EUR", 12), ("GBP", 8), ("CAD", 3), ("AUD", 2))
EVENT_TYPES = (("web.webpagedetails.pageViews", 70), ("web.formFilledOut", 8), ("email.opened", 12),
               ("email.clicked", 10))
CAMPAIGN_TYPES = ("Webinar", "Email", "Event", "Trade Show")
CAMPAIGN_STATUSES = (("Completed", 55), ("In Progress", 25), ("Planned", 15), ("Aborted", 5))
MEMBER_STATUSES = (("Sent", 45), ("Opened", 20), ("Responded", 20), ("Registered", 8), ("Attended", 7))
RESPONDED = frozenset(("Responded", "Registered", "Attended"))
OPPORTUNITY_ROLES = ("Decision Maker", "Economic Buyer", "Influencer", "Technical Buyer", "Executive Sponsor")
ACCOUNT_ROLES = ("Influencer", "Consultant", "Partner Contact", "Billing Contact", "Board Member")
PRODUCTS = ("Bodea Platform", "Bodea Analytics", "Bodea Connect", "Bodea Insights", "Premium Support",
            "Data Services")
DEAL_KINDS = ("New Business", "Renewal", "Expansion", "Upsell", "Pilot")
CAMPAIGN_TOPICS = ("Customer Data Foundations", "Account-Based Marketing 101", "Identity Resolution at Scale",
                   "Personalisation Playbook", "Marketing Ops Summit", "Product Launch: Bodea Insights",
                   "Data Privacy Essentials", "Revenue Operations Roundtable", "Partner Summit",
                   "Executive Dinner", "Analytics Deep Dive", "Customer Success Stories", "Pipeline Acceleration",
                   "Retail Innovation Day", "Healthcare Data Forum", "Financial Services Breakfast",
                   "Manufacturing Insights", "Spring Newsletter", "Holiday Promotion", "Year in Review")
LIST_BASES = ("Newsletter Subscribers", "Webinar Attendees", "Trade Show Leads", "Product Updates",
              "Customer Advocates", "Event Invitees", "Nurture - Early Stage", "Nurture - Late Stage",
              "Partners", "Beta Program", "Win-back", "Executive Briefing", "Free Trial Users",
              "Content Downloads", "Pricing Page Visitors", "Demo Requests", "Community Members",
              "Churn Risk", "Upsell Candidates", "Do Not Call Review")
LIST_REGIONS = ("NA", "EMEA", "APAC", "LATAM", "Global")
FIRST_NAMES = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth", "William",
    "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen", "Daniel", "Lisa",
    "Matthew", "Nancy", "Anthony", "Betty", "Mark", "Sandra", "Steven", "Ashley", "Paul", "Kimberly", "Andrew",
    "Emily", "Joshua", "Donna", "Kenneth", "Michelle", "Kevin", "Carol", "Brian", "Amanda", "George", "Melissa",
    "Timothy", "Deborah", "Ronald", "Stephanie", "Jason", "Rebecca", "Edward", "Laura", "Jeffrey", "Helen", "Ryan",
    "Sharon", "Jacob", "Cynthia", "Gary", "Kathleen", "Nicholas", "Amy", "Eric", "Angela", "Jonathan", "Anna",
    "Stephen", "Ruth", "Larry", "Brenda", "Justin", "Pamela", "Scott", "Nicole", "Brandon", "Katherine", "Frank",
    "Samantha", "Benjamin", "Christine", "Gregory", "Emma", "Raymond", "Catherine", "Samuel", "Debra", "Patrick",
    "Rachel", "Alexander", "Carolyn", "Jack", "Janet", "Dennis", "Maria", "Jerry", "Olivia", "Tyler", "Heather",
    "Aaron", "Diane", "Hans", "Sophie", "Lukas", "Marie", "Felix", "Lea", "Yuki", "Hiroshi", "Priya", "Arjun",
    "Lucas", "Camille", "Mateo", "Sofia", "Liam", "Chloe", "Noah", "Ines", "Oliver", "Aisha", "Wei", "Mei")
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee",
    "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young",
    "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker",
    "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Gomez", "Phillips", "Evans", "Turner", "Diaz",
    "Parker", "Cruz", "Edwards", "Collins", "Reyes", "Stewart", "Morris", "Morales", "Murphy", "Cook", "Rogers",
    "Gutierrez", "Ortiz", "Morgan", "Cooper", "Peterson", "Bailey", "Reed", "Kelly", "Howard", "Ramos", "Kim",
    "Cox", "Ward", "Richardson", "Watson", "Brooks", "Chavez", "Wood", "James", "Bennett", "Gray", "Mendoza",
    "Ruiz", "Hughes", "Price", "Alvarez", "Castillo", "Sanders", "Patel", "Myers", "Long", "Ross", "Foster",
    "Jimenez", "Mueller", "Schmidt", "Schneider", "Fischer", "Weber", "Dubois", "Lefebvre", "Moreau", "Tanaka",
    "Suzuki", "Sato", "Sharma", "Gupta", "Silva", "Santos", "Rossi", "Russo", "Jansen", "de Vries", "O'Brien",
    "Murray", "Andersson", "Larsson", "Chen", "Wang", "Zhang", "Singh", "Kowalski", "Novak", "Fernandes")
JOB_TITLES = (
    ("Marketing Manager", 10), ("Senior Marketing Manager", 6), ("Director of Marketing", 6),
    ("VP, Marketing", 3), ("Chief Marketing Officer", 1), ("Marketing Operations Manager", 5),
    ("Demand Generation Manager", 5), ("Product Marketing Manager", 4), ("Digital Marketing Specialist", 6),
    ("Sales Manager", 6), ("Account Executive", 8), ("Sales Director", 4), ("VP of Sales", 2),
    ("Chief Revenue Officer", 1), ("Sales Operations Analyst", 3), ("IT Manager", 5), ("Director of IT", 3),
    ("CIO", 1), ("CTO", 1), ("Software Engineer", 6), ("Data Engineer", 4), ("Data Scientist", 3),
    ("Business Analyst", 5), ("Head of Data", 2), ("Procurement Manager", 3), ("Operations Manager", 4),
    ("CFO", 1), ("Finance Director", 2), ("CEO", 1), ("Customer Success Manager", 4), ("Project Manager", 4),
    ("Consultant", 3), ("Analyst", 4), ("Coordinator", 3))
BRAND_HEADS = ("Nova", "Veri", "Opti", "Quanti", "Blue", "Silver", "North", "Summit", "Apex", "Terra", "Helio",
               "Lumi", "Astra", "Cyber", "Data", "Omni", "Pro", "Tri", "Uni", "Vertex", "Zen", "Aero", "Bright",
               "Clear", "Core", "Delta", "Echo", "Evo", "Flex", "Fusion", "Grand", "Green", "High", "Infini",
               "Inno", "Key", "Kinet", "Meta", "Micro", "Neo", "Next", "Pan", "Peak", "Pinna", "Prime", "Pulse",
               "Red", "River", "Sky", "Smart", "Sol", "Stone", "Strat", "Sun", "Synth", "Tech", "True", "Vista",
               "West", "Wise")
BRAND_TAILS = ("tek", "tas", "nova", "logic", "gen", "sys", "core", "wave", "point", "line", "field", "bridge",
               "stream", "works", "scape", "ly", "ify", "io", "ix", "on", "ara", "era", "ent", "ura", "ium", "is",
               "ex", "ic", "um", "path", "gate", "hub", "mark", "forge", "labs", "star", "stone", "crest", "view",
               "way", "vale", "ridge", "port", "haven", "land", "light", "shift", "sense", "mind", "bit", "cloud",
               "dyne", "tron", "plex", "ward", "well", "wood", "berg", "ton", "ford")
COMPANY_NOUNS = ("Systems", "Analytics", "Logistics", "Solutions", "Technologies", "Holdings", "Partners",
                 "Industries", "Health", "Capital", "Foods", "Energy", "Media", "Labs", "Networks", "Software",
                 "Consulting", "Manufacturing", "Retail", "Pharma", "Insurance", "Group", "Dynamics", "Robotics",
                 "Motors", "Finance", "Security", "Telecom", "Hotels", "Education")
COMPANY_SUFFIXES = (("", 40), (" Inc.", 20), (", Inc.", 6), (" LLC", 8), (" Ltd", 8), (" Corp.", 8),
                    (" Group", 5), (" GmbH", 5))
FREEMAIL = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me")
PAGES = (
    ("/", "Bodea | Customer Data for B2B"), ("/new-product", "Introducing Bodea Insights"),
    ("/pricing", "Pricing | Bodea"), ("/demo", "Request a Demo | Bodea"), ("/contact", "Contact Sales | Bodea"),
    ("/about", "About Bodea"), ("/careers", "Careers at Bodea"), ("/customers", "Customer Stories | Bodea"),
    ("/partners", "Partner Program | Bodea"), ("/security", "Security & Compliance | Bodea"),
    ("/trial", "Start Your Free Trial | Bodea"), ("/webinars", "Webinars | Bodea"), ("/events", "Events | Bodea"),
    ("/resources", "Resources | Bodea"), ("/docs", "Documentation | Bodea"), ("/docs/getting-started",
                                                                               "Getting Started | Bodea Docs"),
    ("/docs/api", "API Reference | Bodea Docs"), ("/docs/integrations/salesforce", "Salesforce Integration"),
    ("/docs/integrations/marketo", "Marketo Integration"), ("/product/platform", "The Bodea Platform"),
    ("/product/analytics", "Bodea Analytics"), ("/product/connect", "Bodea Connect"),
    ("/product/insights", "Bodea Insights"), ("/product/identity", "Identity Resolution | Bodea"),
    ("/product/segmentation", "Audience Segmentation | Bodea"), ("/product/activation", "Activation | Bodea"),
    ("/solutions/abm", "Account-Based Marketing | Bodea"), ("/solutions/revops", "Revenue Operations | Bodea"),
    ("/solutions/financial-services", "Bodea for Financial Services"),
    ("/solutions/healthcare", "Bodea for Healthcare"), ("/solutions/manufacturing", "Bodea for Manufacturing"),
    ("/solutions/retail", "Bodea for Retail"), ("/compare/legacy-crm", "Bodea vs. Legacy CRM Add-ons"),
    ("/roi-calculator", "ROI Calculator | Bodea"), ("/whitepaper/b2b-identity", "Whitepaper: B2B Identity"),
    ("/ebook/abm-playbook", "eBook: The ABM Playbook"), ("/case-study/townsend", "Case Study: Townsend"),
    ("/case-study/novatek", "Case Study: Novatek Systems"), ("/newsletter", "Newsletter | Bodea"),
    ("/blog", "Blog | Bodea"), ("/blog/what-is-a-cdp", "What Is a Customer Data Platform?"),
    ("/blog/b2b-identity-resolution", "Identity Resolution for B2B"),
    ("/blog/account-scoring", "Account Scoring That Sales Trusts"),
    ("/blog/lead-to-account-matching", "Lead-to-Account Matching Explained"),
    ("/blog/marketo-salesforce-sync", "Marketo-Salesforce Sync Pitfalls"),
    ("/blog/data-privacy-2026", "Data Privacy in 2026"), ("/blog/intent-data", "Making Sense of Intent Data"),
    ("/blog/buying-committees", "Selling to Buying Committees"),
    ("/blog/pipeline-velocity", "Measuring Pipeline Velocity"), ("/blog/event-roi", "Proving Event ROI"),
    ("/blog/webinar-tips", "10 Webinar Tips"), ("/blog/customer-journey", "Mapping the B2B Customer Journey"),
    ("/blog/first-party-data", "First-Party Data Strategy"), ("/blog/segmentation-pql", "Segments in PQL"),
    ("/blog/release-notes-2026-04", "Release Notes: April 2026"),
    ("/blog/release-notes-2026-03", "Release Notes: March 2026"), ("/support", "Support | Bodea"),
    ("/login", "Sign In | Bodea"), ("/legal/privacy", "Privacy Policy | Bodea"),
    ("/unsubscribe", "Email Preferences | Bodea"))
SITE = "https://bodea.example"

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SF_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def csv_field(text: str) -> str:
    """`text` as one RFC 4180 field: quoted when it holds a separator, a quote or edge spaces."""
    if any(c in text for c in ',"\n\r') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def salesforce_id(prefix: str, n: int) -> str:
    """A distinct 18-character Salesforce-style id for each n: key prefix, pod `5g`, scrambled base-62 digits
    (n times an odd prime not dividing 62, a bijection modulo 62**6) and the case-checksum suffix."""
    x = (n * 48271 + 9_000_001) % 62 ** 6
    digits = []
    for _ in range(6):
        x, r = divmod(x, 62)
        digits.append(_B62[r])
    body = prefix + "5g0000" + "".join(reversed(digits))
    suffix = ""
    for chunk in (body[0:5], body[5:10], body[10:15]):
        bits = sum(1 << i for i, c in enumerate(chunk) if "A" <= c <= "Z")
        suffix += _SF_CHECKSUM[bits]
    return body + suffix


class _Weighted:
    """Weighted choice over fixed values, by cumulative weights and one random number."""

    def __init__(self, pairs) -> None:
        self.values = [p[0] for p in pairs]
        self.cum = list(accumulate(p[1] for p in pairs))
        self.total = self.cum[-1]

    def pick(self, rng: Random):
        return self.values[bisect_right(self.cum, rng.random() * self.total)]

    def many(self, rng: Random, k: int) -> list:
        return rng.choices(self.values, cum_weights=self.cum, k=k)


class _Clock:
    """RFC 3339 UTC strings for instants `offset` seconds before the end, from precomputed day and
    time-of-day strings: datetime formatting per record would dominate the run time."""

    def __init__(self, end: datetime, days: int) -> None:
        self.end_epoch = int(end.timestamp())
        self.first_day = (self.end_epoch - days * 86400 - 86400) // 86400
        base = datetime(1970, 1, 1, tzinfo=timezone.utc)
        self.dates = [(base + timedelta(days=self.first_day + i)).strftime("%Y-%m-%dT") for i in range(days + 3)]
        self.times = [f"{h:02d}:{m:02d}:{s:02d}Z" for h in range(24) for m in range(60) for s in range(60)]

    def before_end(self, offset: int) -> str:
        t = self.end_epoch - offset
        day, second = divmod(t, 86400)
        return self.dates[day - self.first_day] + self.times[second]


class _Files:
    """Output lines per (instance, entity), written at the end in manifest order."""

    def __init__(self) -> None:
        self.lines: dict[tuple[str, str], list[str]] = {}

    def get(self, instance: str, entity: str) -> list[str]:
        return self.lines.setdefault((instance, entity), [])


def _parse_end(text: str) -> datetime:
    end = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if end.tzinfo is None:
        raise ValueError(f"--end needs a UTC offset or Z: {text}")
    return end.astimezone(timezone.utc)


def _fragment_counts(rng: Random, total: int, weights: tuple[int, int, int]) -> list[int]:
    """Fragments per true entity (1-3 by `weights`) summing to exactly `total`: the last is cut to fit."""
    chooser = _Weighted(((1, weights[0]), (2, weights[1]), (3, weights[2])))
    counts: list[int] = []
    n = 0
    while n < total:
        c = min(chooser.pick(rng), total - n)
        counts.append(c)
        n += c
    return counts


def _assign_capped(rng: Random, n_items: int, weights: list[float], cap: int) -> list[int]:
    """Owner index per item, drawn by `weights`; an owner at `cap` is drawn again. The cap is raised when
    n_items could not fit under it at all (tiny account counts)."""
    cap = max(cap, math.ceil(n_items / max(1, len(weights)) * 2))
    cum = list(accumulate(weights))
    owners = rng.choices(range(len(weights)), cum_weights=cum, k=n_items)
    load = [0] * len(weights)
    for i, owner in enumerate(owners):
        while load[owner] >= cap:
            owner = bisect_right(cum, rng.random() * cum[-1])
        load[owner] += 1
        owners[i] = owner
    return owners


def _email_variant(rng: Random, email: str) -> str:
    """The email as a source may hold it: mostly as is, sometimes capitalised or with edge spaces, which
    ingestion trims and lower-cases."""
    u = rng.random()
    if u < 0.08:
        local, _, domain = email.partition("@")
        return ".".join(p.capitalize() for p in local.split(".")) + "@" + domain
    if u < 0.10:
        return email.upper()
    if u < 0.13:
        return " " + email + " "
    return email


def generate(out: Path, *, seed: int = 42, persons: int = DEFAULT_SIZES["persons"],
             accounts: int = DEFAULT_SIZES["accounts"], opportunities: int = DEFAULT_SIZES["opportunities"],
             events: int = DEFAULT_SIZES["events"], end: str = DEFAULT_END) -> dict:
    """Writes the data set under `out` and returns its manifest (also written as out/manifest.json)."""
    if persons < 1 or accounts < 1 or opportunities < 0 or events < 0:
        raise ValueError("persons and accounts must be at least 1, opportunities and events at least 0")
    end_dt = _parse_end(end)
    end_text = end_dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    rng = Random(seed)
    files = _Files()
    clock = _Clock(end_dt, 730)
    two_years = 730 * 86400

    industries = _Weighted(INDUSTRIES)
    countries = _Weighted([((name, tld), w) for name, w, tld in COUNTRIES])
    suffixes = _Weighted(COMPANY_SUFFIXES)
    titles = _Weighted([(csv_field(t), w) for t, w in JOB_TITLES])
    first_names = [csv_field(n) for n in FIRST_NAMES]
    last_names = [csv_field(n) for n in LAST_NAMES]
    # Email local parts: lower case ASCII letters only ("de Vries" -> "devries", "O'Brien" -> "obrien").
    first_locals = ["".join(c for c in n.lower() if c.isalpha()) for n in FIRST_NAMES]
    last_locals = ["".join(c for c in n.lower() if c.isalpha()) for n in LAST_NAMES]

    # ----------------------------------------------------------------------------------------------
    # Accounts
    # ----------------------------------------------------------------------------------------------
    acc_counts = _fragment_counts(rng, accounts, ACCOUNT_FRAGMENTS)
    n_acc = len(acc_counts)
    acc_sets = {c: _Weighted(ACCOUNT_SOURCE_SETS[c]) for c in (1, 2, 3)}
    brand_space = len(BRAND_HEADS) * len(BRAND_TAILS) * len(COMPANY_NOUNS)
    brand_order = list(range(brand_space))
    rng.shuffle(brand_order)
    duns_pool = rng.sample(range(100_000_000, 1_000_000_000), n_acc)
    acc_ids: list[list[str]] = [[""] * n_acc for _ in range(3)]
    acc_domain: list[str] = [""] * n_acc
    acc_name: list[str] = [""] * n_acc
    acc_country: list[str] = [""] * n_acc
    acc_employees: list[int] = [0] * n_acc
    next_sf = 0
    next_company = [MKTO_COMPANY_BASE, MKTO_COMPANY_BASE]
    mdm_rows = files.get("mdm-1", "identityLink")
    truth_accounts: list[str] = []
    used_domains: set[str] = set()
    n_acc_mdm = n_acc_duns = n_acc_multi = 0
    for t in range(n_acc):
        combo = brand_order[t % brand_space]
        variant = t // brand_space
        combo, noun = divmod(combo, len(COMPANY_NOUNS))
        head, tail = divmod(combo, len(BRAND_TAILS))
        brand = BRAND_HEADS[head] + BRAND_TAILS[tail]
        country, tld = countries.pick(rng)
        tld = tld if rng.random() < 0.6 else "com"
        domain = f"{brand}{COMPANY_NOUNS[noun]}{variant or ''}".lower() + "." + tld
        while domain in used_domains:   # rare: two brands concatenating to the same text
            variant += 1
            domain = f"{brand}{COMPANY_NOUNS[noun]}{variant}".lower() + "." + tld
        used_domains.add(domain)
        name = csv_field(f"{brand} {COMPANY_NOUNS[noun]}{suffixes.pick(rng)}")
        employees = max(1, int(rng.lognormvariate(4.0, 1.6)))
        revenue = max(50_000, round(employees * rng.lognormvariate(12.0, 0.6), -3))
        industry = csv_field(industries.pick(rng))
        srcs = acc_sets[acc_counts[t]].pick(rng)
        link = ""
        if len(srcs) > 1:
            n_acc_multi += 1
            link = "mdm" if rng.random() < ACCOUNT_MDM_SHARE else "duns"
        duns = str(duns_pool[t])
        master = f"M-ACC-{t + 1:07d}"
        true_id = f"A{t + 1:07d}"
        acc_domain[t], acc_name[t], acc_country[t], acc_employees[t] = domain, name, country, employees
        for position, s in enumerate(srcs):
            if s == SFDC:
                next_sf += 1
                fid = salesforce_id("001", next_sf)
                crm = fid
            else:
                fid = str(next_company[s - 1])
                next_company[s - 1] += 1
                crm = ""
            acc_ids[s][t] = fid
            if link == "duns":
                frag_duns = duns
            elif link == "mdm":
                # A crosswalk-linked account may still carry its D-U-N-S number in one system.
                frag_duns = duns if position == 0 and rng.random() < 0.3 else ""
            else:
                frag_duns = duns if rng.random() < 0.5 else ""
            # Marketo companies miss firmographics now and then; Salesforce is the better-kept system.
            sparse = s != SFDC and rng.random() < 0.2
            files.get(SRC_INSTANCE[s], "account").append(
                f"{fid},{name},{domain},https://www.{domain}/,{'' if sparse else industry},"
                f"{'' if sparse else f'{revenue:.0f}'},{employees},{country},{frag_duns},{crm},"
                f"{clock.before_end(int(rng.random() * two_years) + 1)}\n")
            truth_accounts.append(f"{fid}{SRC_SUFFIX[s]},{true_id}\n")
            if link == "mdm":
                mdm_rows.append(f"{master},account,{SRC_SPEC[s]},{fid}\n")
        if link == "mdm":
            n_acc_mdm += 1
        elif link == "duns":
            n_acc_duns += 1

    def account_ref(t: int, s: int) -> str:
        """How a record in source `s` names true account `t`: its own fragment, else a full key."""
        if acc_ids[s][t]:
            return acc_ids[s][t]
        for other in (SFDC, MKTO1, MKTO2):
            if acc_ids[other][t]:
                return acc_ids[other][t] + SRC_SUFFIX[other]
        raise AssertionError("an account without fragments")

    # ----------------------------------------------------------------------------------------------
    # Persons
    # ----------------------------------------------------------------------------------------------
    per_counts = _fragment_counts(rng, persons, PERSON_FRAGMENTS)
    n_per = len(per_counts)
    per_sets = {c: _Weighted(PERSON_SOURCE_SETS[c]) for c in (1, 2, 3)}
    person_weights = [e ** 0.75 for e in acc_employees]
    per_account = _assign_capped(rng, n_per, person_weights, MAX_PERSONS_PER_ACCOUNT)
    acc_persons: list[list[int]] = [[] for _ in range(n_acc)]
    per_ids: list[list[str]] = [[""] * n_per for _ in range(3)]
    used_emails: set[str] = set()
    used_ecids: set[str] = set()
    next_lead = [MKTO_LEAD_BASE, MKTO_LEAD_BASE]
    truth_persons: list[str] = []
    # Event-capable persons (they have a Marketo lead, hence an ecid): ecid, email, lead key, true id.
    ev_ecid: list[str] = []
    ev_email: list[str] = []
    ev_key: list[str] = []
    ev_true: list[str] = []
    n_multi = n_mdm_only = 0
    patterns = ("{f}.{l}", "{f0}{l}", "{f}{l0}", "{f}_{l}", "{f}")
    pattern_choice = _Weighted(((0, 60), (1, 20), (2, 8), (3, 8), (4, 4)))
    for p in range(n_per):
        t = per_account[p]
        acc_persons[t].append(p)
        fi = int(rng.random() * len(FIRST_NAMES))
        li = int(rng.random() * len(LAST_NAMES))
        fl, ll = first_locals[fi], last_locals[li]
        local = patterns[pattern_choice.pick(rng)].format(f=fl, l=ll, f0=fl[0], l0=ll[0])
        email = f"{local}@{acc_domain[t]}"
        k = 1
        while email in used_emails:
            k += 1
            email = f"{local}{k}@{acc_domain[t]}"
        used_emails.add(email)
        srcs = per_sets[per_counts[p]].pick(rng)
        multi = len(srcs) > 1
        marketo = [s for s in srcs if s != SFDC]
        # The fragment joined to the others only by the crosswalk: the last Marketo one.
        odd = marketo[-1] if multi and marketo and rng.random() < PERSON_MDM_ONLY_SHARE else -1
        if multi:
            n_multi += 1
        has_ecid = any(s != odd for s in marketo)
        ecid = ""
        if has_ecid:
            ecid = str(rng.randrange(10 ** 37, 10 ** 38))
            while ecid in used_ecids:
                ecid = str(rng.randrange(10 ** 37, 10 ** 38))
            used_ecids.add(ecid)
        true_id = f"P{p + 1:07d}"
        first, last = first_names[fi], last_names[li]
        title = titles.pick(rng)
        country = acc_country[t] if rng.random() < 0.9 else countries.pick(rng)[0]
        opt_out = "true" if rng.random() < 0.04 else "false"
        sf_id = ""
        lead_key = ""
        for s in srcs:
            if s == SFDC:
                is_lead = rng.random() < 0.15
                next_sf += 1
                fid = salesforce_id("00Q" if is_lead else "003", next_sf)
                sf_id = fid
                ptype, score, crm, frag_ecid = ("Lead" if is_lead else "Contact"), "", fid, ""
                # A few single-source contacts have no email in the CRM.
                frag_email = "" if not multi and rng.random() < 0.02 else email
            else:
                fid = str(next_lead[s - 1])
                next_lead[s - 1] += 1
                ptype, score = "Lead", str(1 + int(rng.random() * 150))
                if s == odd:
                    n_mdm_only += 1
                    frag_email = f"{fl}.{ll}.{p + 1}@{FREEMAIL[int(rng.random() * len(FREEMAIL))]}"
                    used_emails.add(frag_email)
                    crm, frag_ecid = "", ""
                    master = f"M-PER-{p + 1:07d}"
                    anchor = next(a for a in srcs if a != s)
                    # The anchor comes before the odd (last Marketo) fragment in `srcs`: its id is known.
                    mdm_rows.append(f"{master},person,{SRC_SPEC[s]},{fid}\n")
                    mdm_rows.append(f"{master},person,{SRC_SPEC[anchor]},{per_ids[anchor][p]}\n")
                else:
                    frag_email = email
                    # Most leads synced with the CRM carry the Salesforce Id (sfdcContactId/sfdcLeadId).
                    crm = sf_id if sf_id and rng.random() < 0.85 else ""
                    frag_ecid = ecid
                    if not lead_key:
                        lead_key = fid + SRC_SUFFIX[s]
            per_ids[s][p] = fid
            if rng.random() < PERSON_NO_ACCOUNT_SHARE:
                account = ""
            else:
                account = account_ref(t, s)
            shown_email = csv_field(_email_variant(rng, frag_email)) if frag_email else ""
            files.get(SRC_INSTANCE[s], "person").append(
                f"{fid},{shown_email},{first},{last},{title},{ptype},{score},{country},{account},{crm},"
                f"{frag_ecid},{opt_out},{clock.before_end(int(rng.random() * two_years) + 1)}\n")
            truth_persons.append(f"{fid}{SRC_SUFFIX[s]},{true_id},{frag_email}\n")
        if has_ecid:
            ev_ecid.append(ecid)
            ev_email.append(email)
            ev_key.append(lead_key)
            ev_true.append(true_id)

    def person_ref(p: int, s: int) -> str:
        """How a record in source `s` names true person `p`: its own fragment, else a full key."""
        if per_ids[s][p]:
            return per_ids[s][p]
        for other in (SFDC, MKTO1, MKTO2):
            if per_ids[other][p]:
                return per_ids[other][p] + SRC_SUFFIX[other]
        raise AssertionError("a person without fragments")

    # Extra account-person relations, kept in the CRM.
    relations = files.get("sfdc-1", "accountPersonRelation")
    for p in range(n_per):
        if rng.random() < PERSON_EXTRA_RELATION_SHARE and n_acc > 1:
            second = int(rng.random() * n_acc)
            if second == per_account[p]:
                second = (second + 1) % n_acc
            active = "true" if rng.random() < 0.9 else "false"
            relations.append(f"{account_ref(second, SFDC)},{person_ref(p, SFDC)},"
                             f"{csv_field(ACCOUNT_ROLES[int(rng.random() * len(ACCOUNT_ROLES))])},false,{active}\n")

    # ----------------------------------------------------------------------------------------------
    # Opportunities
    # ----------------------------------------------------------------------------------------------
    stages = _Weighted(STAGES)
    currencies = _Weighted(CURRENCIES)
    role_count = _Weighted(((0, 20), (1, 35), (2, 30), (3, 15)))
    opp_owner = _assign_capped(rng, opportunities, [e ** 0.5 for e in acc_employees],
                               MAX_OPPORTUNITIES_PER_ACCOUNT)
    end_date = end_dt.date()
    truth_opps: list[str] = []
    written = n_true_opp = n_synced = 0
    next_mkto_opp = [MKTO_OPPORTUNITY_BASE, MKTO_OPPORTUNITY_BASE]
    while written < opportunities:
        t = opp_owner[n_true_opp]
        n_true_opp += 1
        true_id = f"O{n_true_opp:07d}"
        stage = stages.pick(rng)
        closed = stage.startswith("Closed")
        won = stage == "Closed Won"
        amount = max(1000, round(rng.lognormvariate(10.3, 1.0), -2))
        close_date = (end_date - timedelta(days=int(rng.random() * 365))).isoformat()
        name = csv_field(f"{acc_name[t].strip(chr(34))} - {PRODUCTS[int(rng.random() * len(PRODUCTS))]} "
                         f"{DEAL_KINDS[int(rng.random() * len(DEAL_KINDS))]}")
        body = (f"{stage},{amount:.0f},{currencies.pick(rng)},{'true' if closed else 'false'},"
                f"{'true' if won else 'false'},{close_date}")
        if acc_ids[SFDC][t]:
            home = SFDC
            next_sf += 1
            oid = salesforce_id("006", next_sf)
            crm = oid
        else:
            home = MKTO1 if acc_ids[MKTO1][t] else MKTO2
            oid = str(next_mkto_opp[home - 1])
            next_mkto_opp[home - 1] += 1
            crm = ""
        files.get(SRC_INSTANCE[home], "opportunity").append(
            f"{oid},{acc_ids[home][t]},{name},{body},{crm},"
            f"{clock.before_end(int(rng.random() * 365 * 86400) + 1)}\n")
        truth_opps.append(f"{oid}{SRC_SUFFIX[home]},{true_id}\n")
        written += 1
        if home == SFDC and written < opportunities and rng.random() < SYNCED_OPPORTUNITY_SHARE:
            # Marketo keys a synced opportunity by its externalOpportunityId: the Salesforce Id.
            n_synced += 1
            written += 1
            files.get("mkto-1", "opportunity").append(
                f"{oid},{account_ref(t, MKTO1)},{name},{body},{oid},"
                f"{clock.before_end(int(rng.random() * 365 * 86400) + 1)}\n")
            truth_opps.append(f"{oid}{SRC_SUFFIX[MKTO1]},{true_id}\n")
        members = acc_persons[t]
        k = min(role_count.pick(rng), len(members))
        if k:
            roles = files.get(SRC_INSTANCE[home], "opportunityPersonRelation")
            for i, p in enumerate(rng.sample(members, k)):
                role = OPPORTUNITY_ROLES[int(rng.random() * len(OPPORTUNITY_ROLES))]
                roles.append(f"{oid},{person_ref(p, home)},{role},{'true' if i == 0 else 'false'}\n")

    # ----------------------------------------------------------------------------------------------
    # Campaigns and marketing lists
    # ----------------------------------------------------------------------------------------------
    sf_people = [per_ids[SFDC][p] for p in range(n_per) if per_ids[SFDC][p]]
    n_campaigns = max(10, round(CAMPAIGNS_PER_MILLION * persons / 1_000_000))
    campaign_statuses = _Weighted(CAMPAIGN_STATUSES)
    member_statuses = _Weighted(MEMBER_STATUSES)
    campaign_rows = files.get("sfdc-1", "campaign")
    member_rows = files.get("sfdc-1", "campaignMember")
    campaign_ids = []
    for c in range(n_campaigns):
        next_sf += 1
        cid = salesforce_id("701", next_sf)
        campaign_ids.append(cid)
        when = end_dt - timedelta(days=int(rng.random() * 365))
        ctype = CAMPAIGN_TYPES[int(rng.random() * len(CAMPAIGN_TYPES))]
        topic = CAMPAIGN_TOPICS[int(rng.random() * len(CAMPAIGN_TOPICS))]
        cname = csv_field(f"{when.year} Q{(when.month - 1) // 3 + 1} {ctype}: {topic}")
        campaign_rows.append(f"{cid},{cname},{ctype},{campaign_statuses.pick(rng)}\n")
    _write_memberships(rng, member_rows, campaign_ids, sf_people,
                       round(CAMPAIGN_MEMBERS_PER_PERSON * persons), member_statuses)

    n_lists = max(4, round(LISTS_PER_MILLION * persons / 1_000_000))
    list_names: list[str] = []
    list_ids: dict[int, list[str]] = {MKTO1: [], MKTO2: []}
    for i in range(n_lists):
        s = MKTO1 if i % 2 == 0 else MKTO2
        base = LIST_BASES[i % len(LIST_BASES)]
        region = LIST_REGIONS[(i // len(LIST_BASES)) % len(LIST_REGIONS)]
        lap = i // (len(LIST_BASES) * len(LIST_REGIONS))
        lname = f"{base} - {region}" + (f" {lap + 1}" if lap else "")
        list_names.append(lname)
        lid = str(MKTO_LIST_BASE + len(list_ids[s]))
        list_ids[s].append(lid)
        files.get(SRC_INSTANCE[s], "marketingList").append(f"{lid},{csv_field(lname)}\n")
    list_member_total = round(LIST_MEMBERS_PER_PERSON * persons)
    for s in (MKTO1, MKTO2):
        leads = [per_ids[s][p] for p in range(n_per) if per_ids[s][p]]
        share = round(list_member_total * len(list_ids[s]) / n_lists)
        _write_memberships(rng, files.get(SRC_INSTANCE[s], "marketingListMember"), list_ids[s], leads, share, None)

    # ----------------------------------------------------------------------------------------------
    # Write the CRM/marketing files, the crosswalk and the truth
    # ----------------------------------------------------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    order = ("account", "identityLink", "person", "opportunity", "accountPersonRelation",
             "opportunityPersonRelation", "campaign", "campaignMember", "marketingList", "marketingListMember")
    source_of = {"sfdc-1": SRC_SPEC[SFDC], "mkto-1": SRC_SPEC[MKTO1], "mkto-2": SRC_SPEC[MKTO2], "mdm-1": MDM_SPEC}
    manifest_files = []
    records: dict[str, int] = {}
    for entity in order:
        for instance in ("sfdc-1", "mkto-1", "mkto-2", "mdm-1"):
            lines = files.lines.get((instance, entity))
            if not lines:
                continue
            path = f"{instance}/{entity}.csv"
            _write_lines(out / path, HEADERS[entity], lines)
            manifest_files.append({"path": path, "entity": entity, "source": source_of[instance],
                                   "format": "csv", "records": len(lines)})
            records[entity] = records.get(entity, 0) + len(lines)
    files.lines.clear()
    _write_lines(out / "truth/persons.csv", "sourceKey,truePerson,email", truth_persons)
    _write_lines(out / "truth/accounts.csv", "sourceKey,trueAccount", truth_accounts)
    _write_lines(out / "truth/opportunities.csv", "sourceKey,trueOpportunity", truth_opps)
    del truth_persons, truth_accounts, truth_opps

    # ----------------------------------------------------------------------------------------------
    # Events
    # ----------------------------------------------------------------------------------------------
    by_kind = _write_events(rng, out, events, clock, ev_ecid, ev_email, ev_key, ev_true)
    if events:
        manifest_files.append({"path": "web-1/event.ndjson", "entity": "event", "source": WEB_SPEC,
                               "format": "ndjson", "records": events})
        records["event"] = events
    records["total"] = sum(records.values())

    truth_counts = {
        "persons": n_per, "accounts": n_acc, "opportunities": n_true_opp, "multi_source_persons": n_multi,
        "multi_source_accounts": n_acc_multi, "persons_linked_only_by_mdm": n_mdm_only,
        "accounts_linked_by_mdm": n_acc_mdm, "accounts_linked_by_duns": n_acc_duns, "synced_opportunities": n_synced,
        "campaigns": n_campaigns, "lists": n_lists, "events_by_ecid": by_kind[0], "events_by_email": by_kind[1],
        "events_by_person_key": by_kind[2]}
    manifest = {
        "generator": "Benchmarks/b2b_generator.py", "version": VERSION, "seed": seed, "end": end_text,
        "sizes": {"persons": persons, "accounts": accounts, "opportunities": opportunities, "events": events},
        "sources": SOURCES, "files": manifest_files, "records": records, "truth": truth_counts,
        "vocabulary": {
            "industries": [i for i, _ in INDUSTRIES], "countries": [c for c, _, _ in COUNTRIES],
            "stages": [s for s, _ in STAGES], "event_types": [e for e, _ in EVENT_TYPES],
            "urls": [SITE + path for path, _ in PAGES], "campaign_types": list(CAMPAIGN_TYPES),
            "list_names": list_names},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")
    return manifest


def _write_memberships(rng: Random, rows: list[str], group_ids: list[str], people: list[str], total: int,
                       statuses: _Weighted | None) -> None:
    """About `total` member rows over `group_ids`, group sizes skewed, each group's members distinct
    (a repeated (group, person) pair would be one record twice). Campaign members (`statuses` given) also
    get a status and hasResponded."""
    if not group_ids or not people or total <= 0:
        return
    weights = [rng.paretovariate(1.5) for _ in group_ids]
    scale = total / sum(weights)
    for gid, w in zip(group_ids, weights):
        size = min(len(people), round(w * scale))
        for person in rng.sample(people, size):
            if statuses is None:
                rows.append(f"{gid},{person}\n")
            else:
                status = statuses.pick(rng)
                rows.append(f"{gid},{person},{status},{'true' if status in RESPONDED else 'false'}\n")


def _write_events(rng: Random, out: Path, events: int, clock: _Clock, ecids: list[str], emails: list[str],
                  keys: list[str], true_ids: list[str]) -> tuple[int, int, int]:
    """Writes web-1/event.ndjson and truth/events.csv in chunks; returns the events by ecid, email, key."""
    if events and not ecids:
        raise ValueError("events need persons with a Marketo fragment: raise --persons")
    # A minority of persons produce most events: Pareto weights, capped.
    cum = list(accumulate(min(EVENT_WEIGHT_CAP, rng.paretovariate(1.2)) for _ in ecids))
    types = _Weighted([(f'"eventType":"{e}","timestamp":"', w) for e, w in EVENT_TYPES])
    # Page popularity: Zipf-like over a shuffled page order (the home page and pricing stay on top).
    page_tails = [f'","url":{json.dumps(SITE + path)},"name":{json.dumps(title)}}}\n' for path, title in PAGES]
    pages = _Weighted([(tail, 1.0 / (rank + 1) ** 0.8) for rank, tail in enumerate(page_tails)])
    counts = [0, 0, 0]
    chunk = 100_000
    event_path, truth_path = out / "web-1/event.ndjson", out / "truth/events.csv"
    event_path.parent.mkdir(parents=True, exist_ok=True)
    with open(event_path, "w", encoding="utf-8", buffering=1 << 22) as ev, \
            open(truth_path, "w", encoding="utf-8", buffering=1 << 22) as tr:
        tr.write("eventKey,truePerson\n")
        rand = rng.random
        before_end = clock.before_end
        year = 365 * 86400
        for start in range(0, events, chunk):
            k = min(chunk, events - start)
            who = rng.choices(range(len(ecids)), cum_weights=cum, k=k)
            kinds = types.many(rng, k)
            tails = pages.many(rng, k)
            lines = []
            truths = []
            for j in range(k):
                n = start + j + 1
                p = who[j]
                u = rand()
                if u < 0.5:
                    ident = f'"ecid":"{ecids[p]}",'
                    counts[0] += 1
                elif u < 0.85:
                    ident = f'"email":"{emails[p]}",'
                    counts[1] += 1
                else:
                    ident = f'"personId":"{keys[p]}",'
                    counts[2] += 1
                # Squaring a uniform number puts more events on recent days.
                v = rand()
                offset = int(v * v * year) + 1
                lines.append(f'{{"eventId":"web-{n}",{ident}{kinds[j]}{before_end(offset)}{tails[j]}')
                truths.append(f"web-{n}@web-1.Web,{true_ids[p]}\n")
            ev.write("".join(lines))
            tr.write("".join(truths))
    return counts[0], counts[1], counts[2]


def _write_lines(path: Path, header: str, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", buffering=1 << 22) as f:
        f.write(header + "\n")
        f.write("".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="b2b_generator.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output directory (created; files overwritten)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--persons", type=int, default=DEFAULT_SIZES["persons"],
                        help="person fragment records over all sources (default %(default)s)")
    parser.add_argument("--accounts", type=int, default=DEFAULT_SIZES["accounts"],
                        help="account fragment records over all sources (default %(default)s)")
    parser.add_argument("--opportunities", type=int, default=DEFAULT_SIZES["opportunities"],
                        help="opportunity fragment records over all sources (default %(default)s)")
    parser.add_argument("--events", type=int, default=DEFAULT_SIZES["events"],
                        help="event records (default %(default)s)")
    parser.add_argument("--end", default=DEFAULT_END,
                        help="RFC 3339 instant every timestamp precedes (default %(default)s)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        manifest = generate(args.out, seed=args.seed, persons=args.persons, accounts=args.accounts,
                            opportunities=args.opportunities, events=args.events, end=args.end)
    except ValueError as error:
        parser.error(str(error))
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{manifest['records']['total']} records in {len(manifest['files'])} files, {size / 1e6:.1f} MB, "
          f"{time.monotonic() - started:.1f} s -> {args.out}", file=sys.stderr)
    print(json.dumps(manifest["truth"], sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

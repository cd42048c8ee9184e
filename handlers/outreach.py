"""The example "morning outreach" workflow: research leads, draft emails, update a CRM,
triage the inbox's replies beside all that, summarize.

Research goes to an external service (simulated by handlers.fake_research) that calls back
signed; drafting, the CRM write and reply triage are simulated locally with a delay.
OUTREACH_DELAY_SCALE scales every simulated delay (0 makes them instant). The shape is what
matters: 30 research tasks at once, a join, 10 drafts at once, one batched CRM write, and
the reply triage running beside them from the start, all joined by one summary.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from pydantic import BaseModel

from orchestrator.invoke import AwaitCallback, Context

COMPANIES = [
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka", "Tyrell",
    "Cyberdyne", "Soylent", "Vandelay", "Pied Piper", "Aperture", "Black Mesa",
]  # fmt: skip


class Draft(BaseModel):
    """What a drafted email must look like; output that does not fit fails the task."""

    lead_id: str
    to: str
    subject: str
    body: str


def _scale() -> float:
    return float(os.environ.get("OUTREACH_DELAY_SCALE", "1"))


def _rng(*parts: object) -> random.Random:
    return random.Random("/".join(map(str, parts)))  # noqa: S311 - simulated latency, not security


def fetch_leads(ctx: Context) -> dict[str, Any]:
    """Today's leads (a CRM query in real life); the event payload may set `count`."""
    count = int(ctx.event.get("count", 30))
    leads = []
    for index in range(count):
        company = COMPANIES[index % len(COMPANIES)]
        leads.append(
            {
                "id": f"lead-{index + 1:03d}",
                "name": f"Contact {index + 1}",
                "company": f"{company} {index // len(COMPANIES) + 1}",
                "email": f"contact{index + 1}@{company.lower().replace(' ', '')}.example",
            }
        )
    return {"leads": leads}


class Research(BaseModel):
    """What the research service reports about a lead; a callback that does not fit is refused."""

    id: str
    name: str
    company: str
    email: str
    score: float
    signal: str


async def research_lead(ctx: Context, lead: dict[str, Any]) -> AwaitCallback[Research]:
    """Hand one lead to the research service and return at once: it calls back when done.

    The task then waits as a row in the database, costing nothing, until the signed callback
    arrives (or 30 s pass). The service signs with the per-task secret it is handed here.
    """
    await ctx.dispatch(
        json={
            "lead": lead,
            "callback_url": ctx.callback_url,
            "callback_secret": ctx.callback_secret,
        }
    )
    return ctx.await_callback(timeout="30s")


def pick_top(ctx: Context) -> dict[str, Any]:
    """The ten best-scored leads among those whose research arrived."""
    researched = ctx.upstream["research"].values()
    top = sorted(researched, key=lambda lead: lead["score"], reverse=True)[:10]
    return {
        "top": top,
        "considered": len(researched),
        "missing": len(ctx.upstream["research"].missing),
    }


async def draft_email(ctx: Context, lead: dict[str, Any]) -> Draft:
    """Draft an email for one lead (simulated: 0.5-2 s)."""
    await asyncio.sleep(_rng("draft", lead["id"]).uniform(0.5, 2.0) * _scale())
    return Draft(
        lead_id=lead["id"],
        to=lead["email"],
        subject=f"Congrats on the {lead['signal']}, {lead['company']}",
        body=f"Hi {lead['name']}, saw the news about {lead['company']}'s {lead['signal']}...",
    )


def update_crm(ctx: Context) -> dict[str, Any]:
    """Write every draft to the CRM in one batch (a plain sync call: it runs in a worker thread)."""
    drafts = ctx.upstream["draft"].values()
    time.sleep(0.3 * _scale())
    return {"updated": len(drafts), "lead_ids": [draft["lead_id"] for draft in drafts]}


REPLIES = [
    ("contact3@initech.example", "Sounds interesting, can we talk on Thursday?"),
    ("contact7@wayne.example", "Not right now, maybe next quarter."),
    ("contact12@vandelay.example", "Please remove me from your list."),
    ("contact5@hooli.example", "Send me the pricing, please."),
    ("contact9@tyrell.example", "I'm out of office until Monday."),
]
LABELS = {
    "talk": "interested", "pricing": "interested", "next quarter": "later",
    "out of office": "auto_reply", "remove me": "unsubscribe",
}  # fmt: skip


class Triaged(BaseModel):
    """The inbox's replies, each with a label, and how many got each label."""

    replies: list[dict[str, str]]
    counts: dict[str, int]


async def triage_replies(ctx: Context) -> Triaged:
    """Label this morning's replies to earlier outreach (simulated: 0.3-1.5 s each, all at once).

    It needs nothing from the research, so it starts with fetch_leads and runs beside it.
    """

    async def triage(sender: str, text: str) -> dict[str, str]:
        await asyncio.sleep(_rng("triage", sender).uniform(0.3, 1.5) * _scale())
        label = next((tag for key, tag in LABELS.items() if key in text.lower()), "other")
        return {"from": sender, "label": label}

    count = int(ctx.event.get("replies", len(REPLIES)))
    replies = await asyncio.gather(*(triage(*reply) for reply in REPLIES[:count]))
    counts: dict[str, int] = {}
    for reply in replies:
        counts[reply["label"]] = counts.get(reply["label"], 0) + 1
    return Triaged(replies=list(replies), counts=counts)


def write_summary(ctx: Context) -> dict[str, Any]:
    """One line for the morning report."""
    crm = ctx.upstream["update_crm"].output
    triaged = ctx.upstream["triage_replies"].output
    labels = ", ".join(f"{count} {label}" for label, count in sorted(triaged["counts"].items()))
    return {
        "summary": f"{crm['updated']} personalised emails drafted and logged in the CRM; "
        f"{len(triaged['replies'])} replies triaged ({labels or 'none'})"
    }

"""The example "morning outreach" workflow: research leads, draft emails, update a CRM, summarize.

The "external work" here is simulated with a delay (OUTREACH_DELAY_SCALE scales it; 0 makes
it instant), so the demo shows the shape that matters: 30 research tasks at once, a join,
10 drafts at once, one batched CRM write, one summary.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from pydantic import BaseModel

from orchestrator.invoke import Context

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


async def research_lead(ctx: Context, lead: dict[str, Any]) -> dict[str, Any]:
    """Research one lead (simulated: 0.5-3 s) and score how promising it is."""
    rng = _rng("research", lead["id"])
    await asyncio.sleep(rng.uniform(0.5, 3.0) * _scale())
    ctx.log.debug("lead_researched", lead=lead["id"])
    return {
        **lead,
        "score": round(rng.uniform(0, 100), 1),
        "signal": rng.choice(["hiring", "funding", "launch", "expansion"]),
    }


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


def write_summary(ctx: Context) -> dict[str, Any]:
    """One line for the morning report."""
    crm = ctx.upstream["update_crm"].output
    return {"summary": f"{crm['updated']} personalised emails drafted and logged in the CRM"}

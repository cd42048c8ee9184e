"""Reading the rejection counts through GET /admin/rejections, as an operator would."""

from __future__ import annotations

import httpx

AUTH = {"Authorization": "Bearer t"}  # the admin token of the API tests' settings


async def counted(client: httpx.AsyncClient) -> dict[tuple[str, str], int]:
    """(route, reason) -> how many requests were refused so, over the last hour."""
    response = await client.get("/admin/rejections", headers=AUTH)
    assert response.status_code == 200, response.text
    totals = response.json()["totals"]
    return {(total["route"], total["reason"]): total["count"] for total in totals}

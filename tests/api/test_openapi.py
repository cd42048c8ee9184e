"""/openapi.json describes exactly the routes the app serves."""

from __future__ import annotations

from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from orchestrator.settings import Settings


def settings_for(tmp_path: Path) -> Settings:
    return Settings.model_validate({"database_url": f"sqlite:///{tmp_path / 'openapi.db'}"})


def served(routes: list[object], prefix: str = "") -> set[tuple[str, str]]:
    """(path, method) for every route, mounts included; HEAD comes free with GET."""
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Mount):
            found |= served(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            found |= {
                (prefix + route.path, method.lower())
                for method in route.methods or ()
                if method != "HEAD"
            }
    return found


async def test_document_lists_every_route_and_method(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Every served (path, method) is documented, and nothing documented is missing."""
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == served(list(app.routes))


async def test_admin_operations_declare_bearer_auth(client: httpx.AsyncClient) -> None:
    """Every /admin API operation says it needs the bearer token and may answer 401."""
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path, item in paths.items():
        for operation in item.values():
            if path.startswith("/admin/") and path != "/admin/":
                assert operation["security"] == [{"bearer": []}], path
                assert "401" in operation["responses"], path


async def test_dashboard_page_is_served_without_the_token(client: httpx.AsyncClient) -> None:
    """/admin/ is static HTML (its script asks for the token); the API beside it still needs one."""
    page = await client.get("/admin/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/admin/events/stream" in page.text
    assert (await client.get("/admin/runs")).status_code == 401

"""Where client commands look for the server, and what they tell the person who started it."""

from __future__ import annotations

import pytest

from orchestrator.cli import banner
from orchestrator.client import DEFAULT_URL, ServerAddress, server_address

CONFIGURED = ("conf/o.toml", "127.0.0.1", 9100)


@pytest.mark.parametrize(
    ("url", "environ", "configured", "expected"),
    [
        ("http://a:1", {"ORCHESTRATOR_URL": "http://b:2"}, CONFIGURED, ("http://a:1", "from --url")),
        (None, {"ORCHESTRATOR_URL": "http://b:2"}, CONFIGURED, ("http://b:2", "from ORCHESTRATOR_URL")),
        (None, {"ORCHESTRATOR_URL": ""}, CONFIGURED, ("http://127.0.0.1:9100", "host and port of conf/o.toml")),
        (None, {}, None, (DEFAULT_URL, "the default")),
        (None, {}, ("o.toml", "0.0.0.0", 9100), ("http://127.0.0.1:9100", "host and port of o.toml")),  # noqa: S104 - a config that binds all
        (None, {}, ("o.toml", "::", 9100), ("http://[::1]:9100", "host and port of o.toml")),
        (None, {}, ("o.toml", "::1", 9100), ("http://[::1]:9100", "host and port of o.toml")),
        (None, {}, ("o.toml", "orchestrator.internal", 80), ("http://orchestrator.internal:80", "host and port of o.toml")),
        (None, {}, ("o.toml", "127.0.0.1", 0), (DEFAULT_URL, "the default")),
    ],
    ids=["flag", "environment", "blank-environment", "default", "any-v4", "any-v6", "v6", "name", "port-0"],
)  # fmt: skip
def test_server_address_precedence(
    url: str | None,
    environ: dict[str, str],
    configured: tuple[str, str, int] | None,
    expected: tuple[str, str],
) -> None:
    """--url, then ORCHESTRATOR_URL, then the config's host and port (a bind-all address
    asked on loopback; port 0 says nothing), then 127.0.0.1:8000."""
    assert server_address(url, environ, configured) == ServerAddress(*expected)


def test_banner_shows_a_generated_token_with_a_command_to_try() -> None:
    """The banner names the admin API and dashboard; a generated token comes with a try line."""
    lines = banner("http://127.0.0.1:8000", [("research", "http://127.0.0.1:8001")], "tok", "w")
    assert lines[1:3] == [
        "  admin API   http://127.0.0.1:8000/admin/runs",
        "  dashboard   http://127.0.0.1:8000/admin/",
    ]
    assert "  sidecar     research at http://127.0.0.1:8001" in lines
    assert any(line.startswith("  admin token tok  (generated") for line in lines)
    assert lines[-1].startswith("  try: ORCHESTRATOR_ADMIN_TOKEN=tok orchestrator fire w --url")
    assert not [line for line in banner("http://h:1", [], None, "w") if "token" in line]

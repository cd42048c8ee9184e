"""deploy/compose.yaml: two replicas on PostgreSQL 15 behind Caddy, wired to what really exists."""

from __future__ import annotations

import re
from typing import Any

import yaml

from orchestrator.durations import parse_duration
from orchestrator.settings import Settings
from tests.deploy.parts import (
    DEPLOY,
    REPO,
    config_path_in_image,
    env_names,
    example_grace,
    routes,
)

REPLICAS = ("orchestrator-1", "orchestrator-2")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def caddyfile() -> str:
    return (DEPLOY / "Caddyfile").read_text()


def test_two_identical_replicas_of_the_image_built_from_this_repository() -> None:
    """Both replicas are one definition, built with deploy/Dockerfile from the repo root;
    only their hostnames differ (each replica's id, kept across its restarts)."""
    first, second = (service(name) for name in REPLICAS)
    assert [first.pop("hostname"), second.pop("hostname")] == list(REPLICAS)
    assert first == second
    assert (DEPLOY / first["build"]["context"]).resolve() == REPO
    assert (REPO / first["build"]["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()


def test_replicas_share_postgres_the_public_url_and_the_secrets() -> None:
    """The URL is postgresql:// on the compose database; every variable is one Settings reads."""
    environment = service(REPLICAS[0])["environment"]
    assert set(environment) <= env_names(), set(environment) - env_names()
    for required in ("DATABASE_URL", "PUBLIC_URL", "ADMIN_TOKEN", "CALLBACK_KEY"):
        assert f"ORCHESTRATOR_{required}" in environment
    url = environment["ORCHESTRATOR_DATABASE_URL"]
    assert url.startswith("postgresql://orchestrator:")
    assert url.endswith("@postgres:5432/orchestrator")
    assert "${ORCHESTRATOR_ADMIN_TOKEN:?" in environment["ORCHESTRATOR_ADMIN_TOKEN"]
    assert "${ORCHESTRATOR_CALLBACK_KEY:?" in environment["ORCHESTRATOR_CALLBACK_KEY"]


def test_every_variable_compose_reads_is_in_the_env_example() -> None:
    """deploy/env.example names each ${VAR} compose.yaml uses, so copying it is enough."""
    used = set(re.findall(r"\$\{([A-Z_]+)", (DEPLOY / "compose.yaml").read_text()))
    example = {
        line.partition("=")[0]
        for line in (DEPLOY / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert used <= example, used - example
    assert {name for name in example if name.startswith("ORCHESTRATOR_")} <= env_names()
    assert "deploy/.env" in (REPO / ".gitignore").read_text().split()


def test_the_config_is_mounted_where_the_image_reads_it() -> None:
    """The example config is mounted read-only at the image's --config path."""
    mounts = service(REPLICAS[0])["volumes"]
    assert f"./orchestrator.toml:{config_path_in_image()}:ro" in mounts


def test_replicas_listen_on_the_default_port_and_outlive_their_drain() -> None:
    """Port 8000 inside the network; compose waits longer than shutdown_grace before SIGKILL."""
    replica = service(REPLICAS[0])
    assert replica["expose"] == [str(Settings.model_fields["port"].default)]
    assert "ORCHESTRATOR_PORT" not in replica["environment"]
    assert parse_duration(replica["stop_grace_period"]) > example_grace()
    assert replica["read_only"] is True
    assert replica["cap_drop"] == ["ALL"]


def test_postgres_15_keeps_its_data_in_a_named_volume_and_reports_health() -> None:
    """PostgreSQL 15, its data in a declared volume, a health check the replicas wait on."""
    postgres = service("postgres")
    assert postgres["image"] == "postgres:15"
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose()["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for name in REPLICAS:
        assert service(name)["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_caddy_balances_both_replicas_on_readiness_and_hides_metrics() -> None:
    """The proxy's upstreams are the replicas' port; its health check is the app's /readyz."""
    proxy = service("proxy")
    assert proxy["image"].startswith("caddy:")
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]
    port = Settings.model_fields["port"].default
    upstreams = re.search(r"reverse_proxy ([^{]+)\{", caddyfile())
    assert upstreams is not None
    assert set(upstreams.group(1).split()) == {f"{name}:{port}" for name in REPLICAS}
    health = re.search(r"health_uri (\S+)", caddyfile())
    assert health is not None
    assert health.group(1) == "/readyz"
    assert health.group(1) in routes()
    assert "respond /metrics 404" in caddyfile()
    assert "/metrics" in routes()
    for name in REPLICAS:
        assert proxy["depends_on"][name]["condition"] == "service_healthy"


def test_the_published_ports_belong_to_the_proxy_alone() -> None:
    """Only the proxy publishes ports; replicas are reached through it."""
    published = {name for name, spec in compose()["services"].items() if "ports" in spec}
    assert published == {"proxy"}

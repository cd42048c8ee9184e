"""deploy/Dockerfile: two stages, a non-root final image, and the command the tests run."""

from __future__ import annotations

from orchestrator.settings import Settings
from tests.deploy.parts import (
    DEPLOY,
    EXAMPLE_CONFIG,
    REPO,
    config_path_in_image,
    dockerfile,
    entry_command,
    env_names,
    exec_form,
    routes,
)


def test_a_wheel_is_built_in_one_stage_and_installed_in_a_slim_final_one() -> None:
    """Stage one builds wheels; the final stage installs them from the first, nothing else."""
    build, final = dockerfile()
    assert build.name == "build"
    assert final.name is None
    assert {build.base, final.base} == {"${PYTHON_IMAGE}"}
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in (DEPLOY / "Dockerfile").read_text()
    assert any("pip wheel" in run for run in build.all("RUN"))
    install = " ".join(final.all("RUN"))
    assert "from=build" in install
    assert "--no-index" in install
    final_text = " ".join(args for _, args in final.instructions)
    for tool in ("apt-get", "gcc", "build-essential", "COPY --from"):
        assert tool not in final_text, f"{tool} in the final stage"


def test_the_final_image_runs_as_a_numeric_non_root_user() -> None:
    """USER is a numeric uid other than 0, so Kubernetes can check runAsNonRoot."""
    user = dockerfile()[-1].last("USER").split(":")[0]
    assert user.isdigit()
    assert int(user) != 0


def test_it_exposes_the_port_the_server_binds_by_default() -> None:
    """EXPOSE is the settings' default port."""
    assert dockerfile()[-1].last("EXPOSE") == str(Settings.model_fields["port"].default)


def test_the_entry_command_serves_the_mounted_config_on_all_interfaces() -> None:
    """ENTRYPOINT + CMD: `orchestrator serve --config <the image's config> --host 0.0.0.0`."""
    everywhere = "0.0.0.0"  # noqa: S104 - a container listens beyond its own loopback
    config = "/etc/orchestrator/orchestrator.toml"
    assert entry_command() == ["orchestrator", "serve", "--config", config, "--host", everywhere]
    copies = dockerfile()[-1].all("COPY")
    assert f"{EXAMPLE_CONFIG.relative_to(REPO)} {config_path_in_image()}" in copies


def test_environment_set_in_the_image_is_known_to_settings() -> None:
    """Every ORCHESTRATOR_ variable the image sets is one Settings reads."""
    for env in dockerfile()[-1].all("ENV"):
        for assignment in env.split():
            name = assignment.partition("=")[0]
            if name.startswith("ORCHESTRATOR_"):
                assert name in env_names(), name


def test_the_healthcheck_asks_a_route_the_app_serves() -> None:
    """HEALTHCHECK calls /healthz with Python (slim has no curl)."""
    healthcheck = dockerfile()[-1].last("HEALTHCHECK")
    command = exec_form(healthcheck.partition("CMD")[2].strip())
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]
    assert "/healthz" in routes()
    assert "curl" not in healthcheck


def test_the_build_context_holds_everything_the_dockerfile_copies() -> None:
    """.dockerignore keeps out everything but what COPY needs (and nothing COPY needs)."""
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for stage in dockerfile():
        for copy in stage.all("COPY"):
            if copy.startswith("--from"):
                continue
            *sources, _ = copy.split()
            for source in sources:
                assert source in allowed, f"COPY {source} is excluded by .dockerignore"
                assert (REPO / source).exists(), source

"""Serving helpers: sidecar specs and listening sockets explain what is wrong."""

from __future__ import annotations

import pytest

from orchestrator.serve import listening_socket, sidecar
from orchestrator.settings import ConfigError, Settings


def settings_with(url: str | None) -> Settings:
    service = {} if url is None else {"url": url}
    return Settings.model_validate({"services": {"research": service}})


@pytest.mark.parametrize(
    ("spec", "url", "expected"),
    [
        ("research", "http://127.0.0.1:1/x", "expected SERVICE=module:factory"),
        ("other=handlers.fake_research:create_app", "http://127.0.0.1:1/x", "expected SERVICE"),
        ("research=handlers.fake_research:create_app", None, "expected SERVICE"),
        ("research=no.such.module:app", "http://127.0.0.1:1/x", "cannot load"),
        ("research=handlers.fake_research:nothing", "http://127.0.0.1:1/x", "cannot load"),
        ("research=handlers.fake_research:create_app", "http://127.0.0.1/x", "host and port"),
    ],
)
def test_bad_sidecar_specs_are_config_errors(spec: str, url: str | None, expected: str) -> None:
    """Each malformed --sidecar names the problem instead of failing later."""
    with pytest.raises(ConfigError, match=expected):
        sidecar(spec, settings_with(url))


def test_sidecar_listens_at_its_service_url() -> None:
    """A sidecar's socket is bound where the service's URL says, before anything serves."""
    with listening_socket("127.0.0.1", 0) as probe:
        port = probe.getsockname()[1]
    car = sidecar(
        "research=handlers.fake_research:create_app",
        settings_with(f"http://127.0.0.1:{port}/research"),
    )
    try:
        assert car.url == f"http://127.0.0.1:{port}"
    finally:
        car.sock.close()


def test_a_taken_port_is_a_config_error() -> None:
    """Binding a port that is in use says which address and suggests another port."""
    with listening_socket("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        taken.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_REUSEADDR, 0)
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            listening_socket("127.0.0.1", port)

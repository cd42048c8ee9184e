"""deploy/k8s: Deployment, Service, ConfigMap, Secret and PDB, checked against the real app."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import yaml

from orchestrator.settings import Settings, check_handlers, load_settings
from tests.deploy.parts import (
    DEPLOY,
    EXAMPLE_CONFIG,
    config_path_in_image,
    dockerfile,
    entry_command,
    env_names,
    example_grace,
    routes,
)

K8S = DEPLOY / "k8s"


def documents() -> dict[str, dict[str, Any]]:
    """Every manifest in deploy/k8s by kind (one of each)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] not in found, f"two {document['kind']}s"
            found[document["kind"]] = document
    return found


def pod() -> dict[str, Any]:
    spec: dict[str, Any] = documents()["Deployment"]["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod()["containers"]
    found: dict[str, Any] = only
    return found


def port_named(name: str) -> int:
    (port,) = [p["containerPort"] for p in container()["ports"] if p["name"] == name]
    value: int = port
    return value


def test_every_kind_is_there_and_kustomize_applies_all_but_the_secret_example() -> None:
    """kubectl apply -k applies every manifest except the Secret with placeholders."""
    kinds = set(documents())
    assert kinds == {
        "Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "Kustomization",
    }  # fmt: skip
    resources = documents()["Kustomization"]["resources"]
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(resources) == on_disk - {"secret.example.yaml"}


def test_two_replicas_selected_by_the_service_and_the_budget() -> None:
    """The Deployment runs 2; the Service and the PodDisruptionBudget select its pods."""
    deployment = documents()["Deployment"]["spec"]
    assert deployment["replicas"] == 2
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    assert documents()["Service"]["spec"]["selector"].items() <= labels.items()
    budget = documents()["PodDisruptionBudget"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["minAvailable"] == 1


def test_probes_ask_routes_the_app_serves_on_its_port() -> None:
    """Readiness /readyz, liveness /healthz, on the port the server binds by default."""
    probes = {kind: container()[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert container()["startupProbe"]["httpGet"]["path"] in routes()
    for probe in probes.values():
        assert probe["path"] in routes()
        assert port_named(probe["port"]) == Settings.model_fields["port"].default
    service_port = documents()["Service"]["spec"]["ports"][0]
    assert port_named(service_port["targetPort"]) == Settings.model_fields["port"].default


def test_the_container_runs_the_image_command() -> None:
    """args are the Dockerfile's CMD (the entrypoint is `orchestrator`)."""
    assert container()["args"] == entry_command()[1:]


def test_environment_and_secret_keys_are_settings_the_server_reads() -> None:
    """Every variable set, and every Secret key loaded with envFrom, is a known setting."""
    names = {variable["name"] for variable in container()["env"]}
    secret = documents()["Secret"]
    assert names <= env_names(), names - env_names()
    assert set(secret["stringData"]) <= env_names(), set(secret["stringData"]) - env_names()
    assert {"ORCHESTRATOR_ADMIN_TOKEN", "ORCHESTRATOR_CALLBACK_KEY", "ORCHESTRATOR_DATABASE_URL"} <= set(secret["stringData"])  # fmt: skip
    assert secret["stringData"]["ORCHESTRATOR_DATABASE_URL"].startswith("postgresql://")
    assert secret["stringData"]["ORCHESTRATOR_ADMIN_TOKEN"] == "", "no usable placeholder token"
    assert "ORCHESTRATOR_PUBLIC_URL" in names
    (source,) = container()["envFrom"]
    assert source["secretRef"]["name"] == secret["metadata"]["name"]


def test_the_configmap_holds_the_example_config_where_the_image_reads_it() -> None:
    """Mounted at the --config directory, under the --config file name, equal to the example."""
    config = PurePosixPath(config_path_in_image())
    (mount,) = [m for m in container()["volumeMounts"] if m["mountPath"] == str(config.parent)]
    (volume,) = [v for v in pod()["volumes"] if v["name"] == mount["name"]]
    configmap = documents()["ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert configmap["data"][config.name] == EXAMPLE_CONFIG.read_text()


def test_the_example_config_is_valid_and_its_handlers_import() -> None:
    """`orchestrator check` would pass on the config every replica runs."""
    check_handlers(load_settings(EXAMPLE_CONFIG), EXAMPLE_CONFIG)


def test_pods_run_locked_down_as_the_image_user() -> None:
    """Non-root (the image's uid), read-only root, no privilege escalation, no capabilities."""
    security = pod()["securityContext"]
    image_uid = int(dockerfile()[-1].last("USER").split(":")[0])
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == image_uid
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    locked = container()["securityContext"]
    assert locked["readOnlyRootFilesystem"] is True
    assert locked["allowPrivilegeEscalation"] is False
    assert locked["capabilities"]["drop"] == ["ALL"]


def test_resources_are_requested_and_limited() -> None:
    """CPU and memory requests, and limits, so the scheduler and the node can plan."""
    resources = container()["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind


def test_termination_waits_for_pre_stop_and_the_drain() -> None:
    """terminationGracePeriodSeconds covers the preStop pause plus shutdown_grace."""
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = pod()["terminationGracePeriodSeconds"]
    assert budget > float(pre_stop[1]) + example_grace()

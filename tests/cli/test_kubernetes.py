"""deploy/kubernetes/: the manifests parse and name what exists: the image's port, user and
paths, configuration keys behind every CLAUDE_HOOKS_* variable, the probes' routes, the
scaler's query (store/scaler.py), and each other (selectors, Secret keys, the service account)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from claude_hooks.cli.main import app
from claude_hooks.config import Config, load_config
from claude_hooks.config_env import ENV_PREFIX, environment_overrides
from claude_hooks.core.exposure import weak_secrets
from claude_hooks.store.scaler import NODES_NEEDED
from claude_hooks.web.app import create_app
from tests.cli.test_deploy import DOCKERFILE, UNIT, _instructions
from tests.cli.test_readme import _paths
from tests.conftest import ServiceFactory

FOLDER = DOCKERFILE.parent / "kubernetes"
POD_NAME = "claude-hooks-5d9c7-a1b2c"
POD_IP = "10.244.1.7"


def _documents() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource of the folder by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(FOLDER.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["apiVersion"] and document["kind"], path
            name = document.get("metadata", {}).get("name", path.name)
            assert (document["kind"], name) not in found, f"{path}: {name} twice"
            found[(document["kind"], name)] = document
    return found


DOCS = _documents()


def _one(kind: str) -> dict[str, Any]:
    matches = [doc for (k, _), doc in DOCS.items() if k == kind]
    assert len(matches) == 1, kind
    return matches[0]


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for argv in _instructions(DOCKERFILE):
        if argv[0] == "ENV":
            env.update(item.split("=", 1) for item in argv[1:])
    return env


def _container() -> dict[str, Any]:
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _pod_environment() -> dict[str, str]:
    """What the container's environment comes to in a pod: the image's, the Secret's, and
    its own variables with the downward API's fields and $(VAR) references filled in."""
    fields = {"metadata.name": POD_NAME, "status.podIP": POD_IP}
    environ = dict(_image_env())
    for source in _container()["envFrom"]:
        secret = DOCS[("Secret", source["secretRef"]["name"])]
        environ.update(secret["stringData"])
    for variable in _container()["env"]:
        if "valueFrom" in variable:
            value = fields[variable["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            value = re.sub(r"\$\((\w+)\)", lambda m: environ[m.group(1)], variable["value"])
        environ[variable["name"]] = value
    return environ


def _configuration(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """The ConfigMap's file, where the pod mounts it (under tmp_path)."""
    config_map = _one("ConfigMap")
    mount = next(m for m in _container()["volumeMounts"] if m["name"] == "config")
    volume = next(
        v
        for v in _one("Deployment")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "config"
    )
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    image_path = Path(_image_env()["CLAUDE_HOOKS_CONFIG"])
    assert image_path.parent == Path(mount["mountPath"])
    text = config_map["data"][image_path.name]
    path = tmp_path / image_path.name
    path.write_text(text)
    return path, tomllib.loads(text)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(_one("Kustomization")["resources"])
    assert listed == {p.name for p in FOLDER.glob("*.yaml")} - {"kustomization.yaml"}


def test_every_variable_names_a_setting_and_the_pod_gets_its_own_name_and_address(
    tmp_path: Path,
) -> None:
    path, data = _configuration(tmp_path)
    environ = _pod_environment()
    settings = {name: value for name, value in environ.items() if name.startswith(ENV_PREFIX)}
    assert "CLAUDE_HOOKS_SERVER__NODE" in settings and "CLAUDE_HOOKS_TYPES__DEV__TOKEN" in settings
    # Each variable maps to a real key (an unknown one is a ConfigError naming it).
    _, variables = environment_overrides(settings, data, Config)
    assert set(variables.values()) == set(settings) - {"CLAUDE_HOOKS_CONFIG"}
    config = load_config(path, environ)
    assert config.server.node == POD_NAME
    assert config.server.node_url == f"http://{POD_IP}:{config.server.port}"
    assert config.server.host == "0.0.0.0" and config.server.capacity == 4
    assert config.database_url.startswith("postgresql://")
    assert str(config.data_dir) == next(
        m["mountPath"] for m in _container()["volumeMounts"] if m["name"] == "data"
    )
    assert {a.type for a in config.agents} == set(config.types)
    # The shipped values are placeholders, which `serve` refuses on a pod's address.
    weak = " ".join(weak_secrets(config))
    assert "webhook_secret" in weak and "api_token" in weak


def test_the_image_port_user_and_command_are_the_dockerfiles() -> None:
    port = int(_image_env()["CLAUDE_HOOKS_SERVER__PORT"])
    exposed = [argv for argv in _instructions(DOCKERFILE) if argv[0] == "EXPOSE"]
    assert exposed == [["EXPOSE", str(port)]]
    container = _container()
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["args"] == ["serve"]
    assert ["ENTRYPOINT", "[claude-hooks]"] in _instructions(DOCKERFILE)  # shlex drops quotes
    assert "serve" in typer.main.get_command(app).commands  # type: ignore[attr-defined]
    uid = re.search(r"useradd --system --uid (\d+)", DOCKERFILE.read_text())
    assert uid is not None
    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The stop as the systemd unit allows it: agents stopped, tasks handed back.
    stop = re.search(r"^TimeoutStopSec=(\d+)$", UNIT.read_text(), re.MULTILINE)
    assert stop is not None
    assert pod["terminationGracePeriodSeconds"] == int(stop.group(1))


def test_the_sandbox_settings_are_there_and_each_is_explained() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    context = _container()["securityContext"]
    assert pod["hostUsers"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "Unconfined"}
    assert context["appArmorProfile"] == {"type": "Unconfined"}
    assert context["procMount"] == "Unmasked"
    assert context["readOnlyRootFilesystem"] is True
    text = (FOLDER / "deployment.yaml").read_text()
    block = text[text.index("          securityContext:") :].split("\n      volumes:")[0]
    lines = block.splitlines()[1:]
    for index, line in enumerate(lines):
        if re.match(r"^ {12}\w+:", line):  # each setting has a comment just above it
            assert lines[index - 1].strip().startswith("#"), line


async def test_the_probes_name_the_apps_routes(start_service: ServiceFactory) -> None:
    container = _container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    routes = _paths(create_app(await start_service()).routes)
    port_names = {p["name"] for p in container["ports"]}
    for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
        assert container[probe]["httpGet"]["port"] in port_names


def test_the_service_pdb_and_scaler_point_at_the_deployment() -> None:
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    service = _one("Service")
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels
    scaled = _one("ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]


def test_the_scaler_runs_the_one_query_on_the_pods_database(tmp_path: Path) -> None:
    (trigger,) = _one("ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    assert trigger["metadata"]["query"] == NODES_NEEDED
    readme = (DOCKERFILE.parents[1] / "README.md").read_text()
    assert f"```sql\n{NODES_NEEDED}```" in readme  # the query the README explains
    assert trigger["metadata"]["targetQueryValue"] == "1"  # replicas = the query's answer
    auth = DOCS[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
    (reference,) = auth["spec"]["secretTargetRef"]
    assert reference["parameter"] == "connection"
    secret = DOCS[("Secret", reference["name"])]
    assert reference["key"] == "CLAUDE_HOOKS_SERVER__DATABASE_URL"
    assert secret["stringData"][reference["key"]].startswith("postgresql://")
    # Enough pods for every instance the configuration declares.
    _, data = _configuration(tmp_path)
    maximum = _one("ScaledObject")["spec"]["maxReplicaCount"]
    assert maximum * data["server"]["capacity"] >= len(data["agents"])


def test_the_pods_account_may_annotate_pods_and_nothing_more() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    binding = _one("RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"]}]
    role = DOCS[("Role", binding["roleRef"]["name"])]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]


@pytest.mark.timeout(60)
def test_scaler_query_prints_the_query() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "claude_hooks", "scaler-query"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == NODES_NEEDED

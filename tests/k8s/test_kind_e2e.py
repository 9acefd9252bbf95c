"""The parts of the kind flow that need no cluster: manifests, status interpretation, waiting, preconditions."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qs, urlparse

import helm_python
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KIND_VALUES = yaml.safe_load((REPO / "k8s" / "values-kind.yaml").read_text())


def by_name(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


# ---------------------------------------------------------------- manifests


def test_manifests_are_valid_kubernetes_objects(e2e: ModuleType) -> None:
    objects = e2e.render_manifests()
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == ["ConfigMap", "Deployment", "Job", "Namespace", "Role", "RoleBinding", "Secret", "Service",
                     "ServiceAccount"]  # fmt: skip
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30.0", strict=True)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == e2e.NAMESPACE, obj["metadata"]["name"]


def test_manifests_follow_the_namespace_and_image_given(e2e: ModuleType) -> None:
    objects = e2e.render_manifests(namespace="other", image="registry.local/mnist-train:dev")
    assert {o["metadata"].get("namespace", o["metadata"]["name"]) for o in objects} == {"other"}
    job = by_name(objects, "Job", "s3-bucket")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/mnist-train:dev"


def test_store_secret_and_urls_match_the_kind_values(e2e: ModuleType) -> None:
    """The values name the store and the Pushgateway by bare Service name, so they hold in any --namespace."""
    objects = e2e.render_manifests(namespace="elsewhere")
    storage = KIND_VALUES["storage"]
    secret = by_name(objects, "Secret", storage["existingSecret"])
    assert storage["existingSecret"] == e2e.S3_SECRET
    assert sorted(secret["data"]) == sorted(["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
    for url, service in ((storage["endpointUrl"], "s3"), (KIND_VALUES["metrics"]["pushgatewayUrl"], "pushgateway")):
        parsed = urlparse(url)
        assert parsed.hostname == service
        ports = [p["port"] for p in by_name(objects, "Service", service)["spec"]["ports"]]
        assert parsed.port in ports
    image = KIND_VALUES["image"]
    assert f"{image['repository']}:{image['tag']}" == e2e.IMAGE
    assert KIND_VALUES["gpu"]["enabled"] is False


def test_prometheus_scrapes_the_pushgateway_and_the_chart_ports(e2e: ModuleType) -> None:
    config_map = by_name(e2e.render_manifests(), "ConfigMap", "prometheus")
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["pushgateway"]["static_configs"][0]["targets"] == ["pushgateway:9091"]
    assert jobs["pushgateway"]["honor_labels"] is True
    keeps = {tuple(r["source_labels"]): r["regex"] for r in jobs["mnist-train-pods"]["relabel_configs"]
             if r.get("action") == "keep"}  # fmt: skip
    assert keeps[("__meta_kubernetes_pod_container_port_name",)] == "metrics|train-metrics"
    assert keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)] == "mnist-train"


def test_script_waits_for_the_rayjob_the_chart_creates(e2e: ModuleType) -> None:
    with helm_python.Chart.load(REPO / "charts" / "mnist-train") as chart:
        rendered = chart.render(KIND_VALUES, name=e2e.RELEASE, namespace=e2e.NAMESPACE)
    (rayjob,) = [yaml.safe_load(text) for path, text in rendered.items() if path.endswith("/rayjob.yaml")]
    assert rayjob["metadata"]["name"] == e2e.RELEASE
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] in e2e.CPU_BASE_IMAGE


def test_kuberay_version_is_pinned_and_new_enough(e2e: ModuleType) -> None:
    minimum = yaml.safe_load((REPO / "charts" / "mnist-train" / "Chart.yaml").read_text())["annotations"]
    version = tuple(int(part) for part in e2e.KUBERAY_VERSION.split("."))
    assert len(version) == 3
    assert version >= tuple(int(p) for p in minimum["kuberay.io/min-operator-version"].split("."))


# ---------------------------------------------------------------- status interpretation and waiting


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        (None, "pending"),
        ({}, "pending"),
        ({"jobDeploymentStatus": "Initializing"}, "pending"),
        ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, "pending"),
        ({"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED"}, "pending"),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, "done"),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}, "failed"),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, "failed"),
        ({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"}, "failed"),
        ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded"}, "failed"),
        ({"jobDeploymentStatus": "ValidationFailed", "message": "bad spec"}, "failed"),
        ({"jobDeploymentStatus": "Suspended"}, "failed"),
    ],
)
def test_interpret(e2e: ModuleType, status: dict | None, phase: str) -> None:
    assert e2e.interpret(status)[0].value == phase


def test_interpret_summary_names_the_reason(e2e: ModuleType) -> None:
    status = {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed", "message": "exit 1"}
    assert e2e.interpret(status)[1] == "deployment=Failed job=FAILED (AppFailed: exit 1)"


class FakeClock:
    """A clock that only moves when the waiter sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def statuses(*items: dict | None):
    """A status source returning `items` one per call, then the last one forever."""
    seq = list(items)

    def get() -> dict | None:
        return seq.pop(0) if len(seq) > 1 else seq[0]

    return get


def test_wait_returns_the_final_status_and_reports_changes(e2e: ModuleType) -> None:
    clock, said = FakeClock(), []
    running = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    done = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
    source = statuses(None, {"jobDeploymentStatus": "Initializing"}, running, running, done)
    result = e2e.wait_for_rayjob(source, timeout=60, poll=5, clock=clock, sleep=clock.sleep, report=said.append)
    assert result == done
    assert said == [
        "RayJob: deployment=New job=-",
        "RayJob: deployment=Initializing job=-",
        "RayJob: deployment=Running job=RUNNING",
        "RayJob: deployment=Complete job=SUCCEEDED",
    ]
    assert clock.now == 20


def test_wait_raises_when_the_job_fails(e2e: ModuleType) -> None:
    clock = FakeClock()
    source = statuses({"jobDeploymentStatus": "Running"}, {"jobDeploymentStatus": "Failed", "reason": "AppFailed"})
    with pytest.raises(e2e.E2EError, match=r"the RayJob failed: deployment=Failed job=- \(AppFailed"):
        e2e.wait_for_rayjob(source, timeout=60, poll=1, clock=clock, sleep=clock.sleep, report=lambda _: None)
    assert clock.now == 1


def test_wait_gives_up_at_the_timeout(e2e: ModuleType) -> None:
    clock = FakeClock()
    source = statuses({"jobDeploymentStatus": "Running", "jobStatus": "PENDING"})
    with pytest.raises(e2e.E2EError, match=r"did not finish in 30 s; last status: deployment=Running job=PENDING"):
        e2e.wait_for_rayjob(source, timeout=30, poll=7, clock=clock, sleep=clock.sleep, report=lambda _: None)
    assert 30 <= clock.now < 37


# ---------------------------------------------------------------- preconditions and commands


def fake_tools(directory: Path, *names: str) -> str:
    for name in names:
        tool = directory / name
        tool.write_text("#!/bin/sh\nexit 0\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return str(directory)


def test_require_names_exactly_what_is_missing(e2e: ModuleType, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", fake_tools(tmp_path, "kind", "kubectl"))
    e2e.require("kind", "kubectl")
    with pytest.raises(e2e.E2EError) as caught:
        e2e.require("docker", "kind", "helm")
    message = str(caught.value)
    assert message.startswith("missing on PATH: docker, helm (docker: https://docs.docker.com")
    assert "kind," not in message


@pytest.mark.parametrize(
    ("command", "missing"),
    [("up", "docker, kind, helm, kubectl"), ("run", "helm, kubectl"), ("down", "kind"), ("all", "docker, kind")],
)
def test_each_command_checks_its_tools_first(
    e2e: ModuleType, tmp_path: Path, monkeypatch, capsys, command: str, missing: str
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert e2e.main([command]) == 1
    assert f"kind_e2e: error: missing on PATH: {missing}" in capsys.readouterr().err


def test_sh_reports_the_failing_command(e2e: ModuleType) -> None:
    assert e2e.sh("sh", "-c", "echo out", capture=True) == "out\n"
    with pytest.raises(e2e.E2EError, match=r"sh -c 'echo boom >&2; exit 3' exited 3: boom"):
        e2e.sh("sh", "-c", "echo boom >&2; exit 3", capture=True)


def test_missing_cluster_context_is_a_clear_error(e2e: ModuleType, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    with pytest.raises(e2e.E2EError, match="run `python k8s/kind_e2e.py up` first"):
        e2e.load_kube_config()


# ---------------------------------------------------------------- Prometheus


def test_prometheus_query_goes_through_the_service_proxy(e2e: ModuleType) -> None:
    path = e2e.prometheus_query_path(e2e.METRICS_QUERY)
    parsed = urlparse(path)
    assert parsed.path == f"/api/v1/namespaces/{e2e.NAMESPACE}/services/prometheus:9090/proxy/api/v1/query"
    assert parse_qs(parsed.query)["query"] == [e2e.METRICS_QUERY]


def test_metric_jobs_reads_counts_and_errors(e2e: ModuleType) -> None:
    answer = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"job": "pushgateway"}, "value": [1.0, "12"]},
        {"metric": {"job": "mnist-train-pods"}, "value": [1.0, "30"]},
    ]}}  # fmt: skip
    assert e2e.metric_jobs(answer) == {"pushgateway": 12, "mnist-train-pods": 30}
    assert e2e.metric_jobs({"status": "success", "data": {"result": []}}) == {}
    with pytest.raises(e2e.E2EError, match="parse error"):
        e2e.metric_jobs({"status": "error", "error": "parse error"})


def test_script_runs_as_a_program(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, REPO / "k8s" / "kind_e2e.py", "down"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1 and "missing on PATH: kind" in done.stderr

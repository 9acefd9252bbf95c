"""The kind flow without a cluster: manifests, names, status interpretation, waiting, preconditions, and whole
`up`/`run`/`all` runs against fake docker/kind/helm/kubectl executables and a loopback stand-in for the API server."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import helm_python
import kind_e2e
import kubernetes_validate
import pytest
import yaml
from e2e import checks, commands, images, runs, services, settings

REPO = Path(__file__).resolve().parents[2]
KIND_VALUES = yaml.safe_load((REPO / "k8s" / "values-kind.yaml").read_text())


def by_name(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


# ---------------------------------------------------------------- manifests


def test_manifests_are_valid_kubernetes_objects() -> None:
    objects = services.render_manifests()
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == ["ConfigMap", "Deployment", "Job", "Namespace", "Role", "RoleBinding", "Secret", "Service",
                     "ServiceAccount"]  # fmt: skip
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30.0", strict=True)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == settings.NAMESPACE, obj["metadata"]["name"]


def test_manifests_follow_the_namespace_and_image_given() -> None:
    objects = services.render_manifests(namespace="other", image="registry.local/mnist-train:dev")
    assert {o["metadata"].get("namespace", o["metadata"]["name"]) for o in objects} == {"other"}
    job = by_name(objects, "Job", "s3-bucket")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/mnist-train:dev"


def test_store_secret_and_urls_match_the_kind_values() -> None:
    """The values name the store and the Pushgateway by bare Service name, so they hold in any --namespace."""
    objects = services.render_manifests(namespace="elsewhere")
    storage = KIND_VALUES["storage"]
    secret = by_name(objects, "Secret", storage["existingSecret"])
    assert storage["existingSecret"] == settings.S3_SECRET
    assert sorted(secret["data"]) == sorted(["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
    for url, service in ((storage["endpointUrl"], "s3"), (KIND_VALUES["metrics"]["pushgatewayUrl"], "pushgateway")):
        parsed = urlparse(url)
        assert parsed.hostname == service
        ports = [p["port"] for p in by_name(objects, "Service", service)["spec"]["ports"]]
        assert parsed.port in ports
    image = KIND_VALUES["image"]
    assert f"{image['repository']}:{image['tag']}" == settings.IMAGE
    assert KIND_VALUES["gpu"]["enabled"] is False


def test_prometheus_scrapes_the_pushgateway_and_the_chart_ports() -> None:
    config_map = by_name(services.render_manifests(), "ConfigMap", "prometheus")
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["pushgateway"]["static_configs"][0]["targets"] == ["pushgateway:9091"]
    assert jobs["pushgateway"]["honor_labels"] is True
    keeps = {tuple(r["source_labels"]): r["regex"] for r in jobs["mnist-train-pods"]["relabel_configs"]
             if r.get("action") == "keep"}  # fmt: skip
    assert keeps[("__meta_kubernetes_pod_container_port_name",)] == "metrics|train-metrics"
    assert keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)] == "mnist-train"


def values_of(argv: list[str]) -> dict:
    """The values a `helm install` command line gives: its --values files, then its --set a.b=c overrides."""
    values: dict = {}
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "--values":
            values.update(yaml.safe_load(Path(value).read_text()))
        elif flag == "--set":
            key, _, text = value.partition("=")
            *parents, leaf = key.split(".")
            node = values
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = text
    return values


def test_each_run_is_a_new_release_whose_rayjob_and_output_the_script_knows() -> None:
    release = runs.new_run_name()
    argv = runs.install_argv(release, "elsewhere")
    assert argv[:5] == ["helm", "--kube-context", "kind-mnist-train", "install", release]
    assert "upgrade" not in argv and argv[argv.index("--namespace") + 1] == "elsewhere"
    with helm_python.Chart.load(REPO / "charts" / "mnist-train") as chart:
        rendered = chart.render(values_of(argv), name=release, namespace="elsewhere")
    objects = {path.rsplit("/", 1)[-1]: yaml.safe_load(text) for path, text in rendered.items() if ".yaml" in path}
    rayjob, test_pod = objects["rayjob.yaml"], objects["test-results.yaml"]
    assert rayjob["metadata"]["name"] == release  # what the script waits for and streams the submitter Job of
    assert rayjob["metadata"]["labels"]["mnist-train/run-name"] == release
    entrypoint = rayjob["spec"]["entrypoint"].split()
    assert entrypoint[entrypoint.index("--run-name") + 1] == release
    assert entrypoint[entrypoint.index("--output") + 1] == f"s3://mnist-train/runs/{release}"
    (uri,) = [e["value"] for e in test_pod["spec"]["containers"][0]["env"] if e["name"] == "RESULTS_URI"]
    assert uri == f"s3://mnist-train/runs/{release}/results.json"  # `helm test` reads this run's results
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] in settings.CPU_BASE_IMAGE


def test_a_kind_run_has_a_finite_deadline() -> None:
    assert KIND_VALUES["rayJob"]["activeDeadlineSeconds"] == 1800
    with helm_python.Chart.load(REPO / "charts" / "mnist-train") as chart:
        rendered = chart.render(KIND_VALUES, name="mnist-train-x", namespace="mnist-e2e")
    (rayjob,) = [yaml.safe_load(text) for path, text in rendered.items() if path.endswith("/rayjob.yaml")]
    assert rayjob["spec"]["activeDeadlineSeconds"] == 1800


def test_run_names_are_fresh_dns_labels_the_chart_keeps_whole() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert runs.new_run_name(now, "ab12") == "mnist-train-20250102-030405-ab12"
    assert runs.new_run_name(now.astimezone(timezone(timedelta(hours=9))), "ab12") == "mnist-train-20250102-030405-ab12"
    names = {runs.new_run_name(now) for _ in range(5)}
    assert len(names) > 1, "two runs in the same second must still get two releases"
    for name in names | {runs.new_run_name()}:
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", name) and len(name) <= 40, name
        assert "mnist-train" in name  # so the chart's fullname, and the RayJob's name, is the release name


def test_kuberay_version_is_pinned_and_new_enough() -> None:
    minimum = yaml.safe_load((REPO / "charts" / "mnist-train" / "Chart.yaml").read_text())["annotations"]
    version = tuple(int(part) for part in settings.KUBERAY_VERSION.split("."))
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
def test_interpret(status: dict | None, phase: str) -> None:
    assert runs.interpret(status)[0].value == phase


def test_interpret_summary_names_the_reason() -> None:
    status = {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed", "message": "exit 1"}
    assert runs.interpret(status)[1] == "deployment=Failed job=FAILED (AppFailed: exit 1)"


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


def test_wait_returns_the_final_status_and_reports_changes() -> None:
    clock, said = FakeClock(), []
    running = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    done = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
    source = statuses(None, {"jobDeploymentStatus": "Initializing"}, running, running, done)
    result = runs.wait_for_rayjob(source, timeout=60, poll=5, clock=clock, sleep=clock.sleep, report=said.append)
    assert result == done
    assert said == [
        "RayJob: deployment=New job=-",
        "RayJob: deployment=Initializing job=-",
        "RayJob: deployment=Running job=RUNNING",
        "RayJob: deployment=Complete job=SUCCEEDED",
    ]
    assert clock.now == 20


def test_wait_raises_when_the_job_fails() -> None:
    clock = FakeClock()
    source = statuses({"jobDeploymentStatus": "Running"}, {"jobDeploymentStatus": "Failed", "reason": "AppFailed"})
    with pytest.raises(commands.E2EError, match=r"the RayJob failed: deployment=Failed job=- \(AppFailed"):
        runs.wait_for_rayjob(source, timeout=60, poll=1, clock=clock, sleep=clock.sleep, report=lambda _: None)
    assert clock.now == 1


def test_wait_gives_up_at_the_timeout() -> None:
    clock = FakeClock()
    source = statuses({"jobDeploymentStatus": "Running", "jobStatus": "PENDING"})
    with pytest.raises(commands.E2EError, match=r"did not finish in 30 s; last status: deployment=Running job=PENDING"):
        runs.wait_for_rayjob(source, timeout=30, poll=7, clock=clock, sleep=clock.sleep, report=lambda _: None)
    assert 30 <= clock.now < 37


# ---------------------------------------------------------------- preconditions and commands


def fake_tools(directory: Path, *names: str) -> str:
    for name in names:
        tool = directory / name
        tool.write_text("#!/bin/sh\nexit 0\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return str(directory)


def test_require_names_exactly_what_is_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", fake_tools(tmp_path, "kind", "kubectl"))
    commands.require("kind", "kubectl")
    with pytest.raises(commands.E2EError) as caught:
        commands.require("docker", "kind", "helm")
    message = str(caught.value)
    assert message.startswith("missing on PATH: docker, helm (docker: https://docs.docker.com")
    assert "kind," not in message


@pytest.mark.parametrize(
    ("command", "missing"),
    [("up", "docker, kind, helm, kubectl"), ("run", "helm, kubectl"), ("down", "kind"), ("all", "docker, kind")],
)
def test_each_command_checks_its_tools_first(tmp_path: Path, monkeypatch, capsys, command: str, missing: str) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert kind_e2e.main([command]) == 1
    assert f"kind_e2e: error: missing on PATH: {missing}" in capsys.readouterr().err


def test_sh_reports_the_failing_command() -> None:
    assert commands.sh("sh", "-c", "echo out", capture=True) == "out\n"
    with pytest.raises(commands.E2EError, match=r"sh -c 'echo boom >&2; exit 3' exited 3: boom"):
        commands.sh("sh", "-c", "echo boom >&2; exit 3", capture=True)


def test_missing_cluster_context_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    message = "no kubeconfig context kind-mnist-train: run `python k8s/kind_e2e.py up` first"
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    with pytest.raises(commands.E2EError) as caught:
        commands.connect()
    assert str(caught.value) == message
    monkeypatch.setenv("KUBECONFIG", write_kubeconfig(tmp_path, prod=1))  # only another, current, context
    with pytest.raises(commands.E2EError) as caught:
        commands.connect()
    assert str(caught.value) == message


def test_helm_and_kubectl_command_lines_carry_the_kind_context() -> None:
    helm = ["helm", "--kube-context", "kind-mnist-train", "test", "r", "/x"]
    assert commands.helm_argv("test", "r", Path("/x")) == helm
    assert commands.kubectl_argv("get", "pods") == ["kubectl", "--context", "kind-mnist-train", "get", "pods"]
    for unpinned in (["helm", "install", "r", "chart"], ["kubectl", "get", "pods"], ["kubectl", "--context", "prod"]):
        with pytest.raises(commands.E2EError, match=f"build the command with {unpinned[0]}_argv"):
            commands.sh(*unpinned)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl here")
def test_real_kubectl_talks_to_the_kind_context_not_the_current_one(tmp_path: Path, apis) -> None:
    kind_api, prod_api = apis
    env = {**os.environ, "KUBECONFIG": write_kubeconfig(tmp_path, prod=prod_api.port, kind=kind_api.port)}
    done = subprocess.run(commands.kubectl_argv("get", "--raw", "/version"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["gitVersion"] == "v1.30.0-fake"
    assert ("GET", "/version") in kind_api.requests and prod_api.requests == []


@pytest.mark.parametrize(
    ("machine", "base", "platform"),
    [
        ("x86_64", "rayproject/ray:2.60.0-py311", "linux/amd64"),
        ("amd64", "rayproject/ray:2.60.0-py311", "linux/amd64"),
        ("arm64", "rayproject/ray:2.60.0-py311-aarch64", "linux/arm64"),  # macOS on Apple silicon, Docker's name
        ("aarch64", "rayproject/ray:2.60.0-py311-aarch64", "linux/arm64"),  # Linux on arm64
    ],
)
def test_base_image_follows_the_architecture(machine: str, base: str, platform: str) -> None:
    assert (images.base_image(machine), images.docker_platform(machine)) == (base, platform)


def test_an_architecture_ray_does_not_build_for_is_refused() -> None:
    with pytest.raises(commands.E2EError, match=r"Ray publishes images for x86_64 and aarch64 only, not 'ppc64le'"):
        images.base_image("ppc64le")


@pytest.mark.parametrize(("api", "platform_flag"), [("1.47", False), ("1.48", True), ("1.51", True), ("", False)])
def test_image_goes_through_a_single_platform_archive(tmp_path: Path, api: str, platform_flag: bool) -> None:
    archive = tmp_path / "image.tar"
    build, save, load = images.image_commands("arm64", api, archive)
    assert build[:4] == ["docker", "build", "--platform", "linux/arm64"]
    assert "BASE_IMAGE=rayproject/ray:2.60.0-py311-aarch64" in build and "EXTRAS=" in build
    expected = ["docker", "save", "--output", str(archive)] + (["--platform", "linux/arm64"] if platform_flag else [])
    assert save == [*expected, settings.IMAGE]
    assert load == ["kind", "load", "image-archive", str(archive), "--name", "mnist-train"]


def test_podman_builds_and_saves_the_image_under_the_name_the_nodes_match(tmp_path: Path) -> None:
    """kind's podman provider (KIND_EXPERIMENTAL_PROVIDER=podman): podman builds; the image is tagged
    docker.io/library/<IMAGE> because podman would name it localhost/<IMAGE>, which the chart's IMAGE does not match."""
    archive = tmp_path / "image.tar"
    build, save, load = images.image_commands("x86_64", "", archive, "podman")
    name = f"docker.io/library/{settings.IMAGE}"
    assert build[:6] == ["podman", "build", "--platform", "linux/amd64", "--tag", name]
    assert save == ["podman", "save", "--format", "docker-archive", "--output", str(archive), name]
    assert load == ["kind", "load", "image-archive", str(archive), "--name", "mnist-train"]


@pytest.mark.parametrize(("provider", "tool"), [("podman", "podman"), ("PODMAN", "podman"), ("", "docker"),
                                                ("docker", "docker")])  # fmt: skip
def test_the_engine_follows_kinds_provider(monkeypatch, provider: str, tool: str) -> None:
    monkeypatch.setenv("KIND_EXPERIMENTAL_PROVIDER", provider)
    assert commands.engine() == tool


def test_namespace_must_be_a_namespace_name(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        kind_e2e.main(["run", "--namespace", "Not_A_Namespace"])
    assert caught.value.code == 2
    assert "'Not_A_Namespace' is not a namespace name" in capsys.readouterr().err


# ---------------------------------------------------------------- Prometheus


def test_prometheus_query_goes_through_the_service_proxy() -> None:
    query = checks.metrics_query("mnist-train-20250102-030405-ab12")
    assert 'run="mnist-train-20250102-030405-ab12"' in query  # this run's series, not an earlier run's
    parsed = urlparse(checks.prometheus_query_path(query, "elsewhere"))
    assert parsed.path == "/api/v1/namespaces/elsewhere/services/prometheus:9090/proxy/api/v1/query"
    assert parse_qs(parsed.query)["query"] == [query]


def test_metric_jobs_reads_counts_and_errors() -> None:
    answer = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"job": "pushgateway"}, "value": [1.0, "12"]},
        {"metric": {"job": "mnist-train-pods"}, "value": [1.0, "30"]},
    ]}}  # fmt: skip
    assert checks.metric_jobs(answer) == {"pushgateway": 12, "mnist-train-pods": 30}
    assert checks.metric_jobs({"status": "success", "data": {"result": []}}) == {}
    with pytest.raises(commands.E2EError, match="parse error"):
        checks.metric_jobs({"status": "error", "error": "parse error"})


def test_script_runs_as_a_program(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    script = [sys.executable, REPO / "k8s" / "kind_e2e.py"]
    done = subprocess.run([*script, "down"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "kind_e2e: error: missing on PATH: kind (kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
    ]
    done = subprocess.run([*script, "--help"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "--namespace" in done.stdout and "all: up, run, down" in done.stdout


# ---------------------------------------------------------------- whole runs against fake tools and a fake API server


class FakeKubeAPI:
    """A loopback HTTP server answering the few Kubernetes API calls the script makes, recording each.

    POSTed objects are kept and read back by path; RayJobs report `rayjob_status`; pod lists are empty.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.objects: dict[str, dict] = {}
        self.rayjob_status = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def answer(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = urlparse(self.path).path
                api.requests.append(("GET", path))
                if path == "/version":
                    return self.answer(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake"})
                if match := re.fullmatch(r"/apis/ray\.io/v1/namespaces/([^/]+)/rayjobs/([^/]+)", path):
                    rayjob = {"metadata": {"name": match[2], "namespace": match[1]}, "status": api.rayjob_status}
                    return self.answer(200, {"apiVersion": "ray.io/v1", "kind": "RayJob", **rayjob})
                if re.fullmatch(r"/api/v1/namespaces/[^/]+/pods", path):
                    return self.answer(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})
                if path in api.objects:
                    return self.answer(200, api.objects[path])
                self.answer(404, {"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound",
                                  "code": 404})  # fmt: skip

            def do_POST(self) -> None:
                path = urlparse(self.path).path
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.requests.append(("POST", path))
                api.objects[f"{path}/{body['metadata']['name']}"] = body
                self.answer(201, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def add_store_secret(self, namespace: str) -> None:
        self.objects[f"/api/v1/namespaces/{namespace}/secrets/mnist-s3"] = {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mnist-s3", "namespace": namespace}
        }  # fmt: skip


@pytest.fixture
def apis() -> Iterator[tuple[FakeKubeAPI, FakeKubeAPI]]:
    """The kind cluster's API server and another cluster's (the kubeconfig's current context)."""
    kind_api, prod_api = FakeKubeAPI(), FakeKubeAPI()
    yield kind_api, prod_api
    kind_api.close()
    prod_api.close()


def write_kubeconfig(directory: Path, prod: int, kind: int | None = None) -> str:
    """A kubeconfig whose current context is `prod`; with `kind`, it also has the context kind-mnist-train."""
    contexts = {"prod": prod} | ({"kind-mnist-train": kind} if kind is not None else {})
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "prod",
        "clusters": [{"name": n, "cluster": {"server": f"http://127.0.0.1:{port}"}} for n, port in contexts.items()],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": n, "context": {"cluster": n, "user": "tester"}} for n in contexts],
    }
    path = directory / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return str(path)


LOG_LINE = '{ printf "%s\\037" "$(basename "$0")" "$@"; printf "\\n"; } >> "$FAKE_LOG"'
FAKES = {
    # Docker's arch and API version; `save` writes the archive it is asked for.
    "docker": """case "$1" in
  version) echo "$FAKE_DOCKER_ARCH 1.51" ;;
  save) while [ $# -gt 0 ]; do [ "$1" = --output ] && echo archive > "$2"; shift; done ;;
esac""",
    "kind": """case "$1 $2" in
  "get clusters") echo mnist-train ;;
  "load image-archive") test -s "$3" || { echo "no archive at $3" >&2; exit 1; }
    if [ -n "$FAKE_KIND_FAIL" ]; then printf 'ERROR: failed to load image\\n%s\\n' "$FAKE_KIND_FAIL" >&2; exit 1; fi ;;
esac""",
    "helm": "",
    "kubectl": """for arg; do
  if [ "$arg" = --raw ]; then
    echo '{"status": "success", "data": {"result": [{"metric": {"job": "pushgateway"}, "value": [1, "3"]}]}}'
  fi
done""",
}


class Tools:
    """Fake docker, kind, helm and kubectl on PATH, each logging its argv."""

    def __init__(self, directory: Path, monkeypatch) -> None:
        self.log = directory / "calls.log"
        self.log.touch()
        bin_dir = directory / "bin"
        bin_dir.mkdir()
        for name, body in FAKES.items():
            tool = bin_dir / name
            tool.write_text(f"#!/bin/sh\n{LOG_LINE}\n{body}\n")
            tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
        monkeypatch.setenv("FAKE_LOG", str(self.log))
        monkeypatch.setenv("FAKE_DOCKER_ARCH", "arm64")
        self.tmp = directory / "tmp"  # where the image archive goes
        self.tmp.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(self.tmp))

    def calls(self, tool: str | None = None) -> list[list[str]]:
        argvs = [line.split("\x1f")[:-1] for line in self.log.read_text().splitlines()]
        return [argv for argv in argvs if tool is None or argv[0] == tool]

    def find(self, *prefix: str) -> list[str]:
        (found,) = [argv for argv in self.calls() if argv[: len(prefix)] == list(prefix)]
        return found


@pytest.fixture
def tools(tmp_path: Path, monkeypatch) -> Tools:
    return Tools(tmp_path, monkeypatch)


def test_all_pins_the_context_builds_for_the_host_and_installs_a_new_release(
    tmp_path: Path, monkeypatch, capsys, tools: Tools, apis
) -> None:
    kind_api, prod_api = apis
    monkeypatch.setenv("KUBECONFIG", write_kubeconfig(tmp_path, prod=prod_api.port, kind=kind_api.port))
    assert kind_e2e.main(["all", "--namespace", "elsewhere"]) == 0, capsys.readouterr().err

    # 1. every helm and kubectl call, and every API request, goes to the kind cluster
    cluster_calls = tools.calls("helm") + tools.calls("kubectl")
    assert len(cluster_calls) == 6  # helm: KubeRay, install, test; kubectl: two waits, the Prometheus query
    for argv in cluster_calls:
        assert argv[1:3] == ["--kube-context" if argv[0] == "helm" else "--context", "kind-mnist-train"], argv
    assert prod_api.requests == []
    # everything `up` creates is in the namespace `run` installs into
    created = [path for method, path in kind_api.requests if method == "POST"]
    assert created[0] == "/api/v1/namespaces" and len(created) == len(services.render_manifests())
    assert all(path.startswith("/api/v1/namespaces/elsewhere/") or "/namespaces/elsewhere/" in path
               for path in created[1:])  # fmt: skip
    for argv in tools.calls("kubectl")[:2]:
        assert argv[3:6] == ["--namespace", "elsewhere", "wait"]

    # 2, 3. built for the Docker host's arm64 from Ray's -aarch64 image; loaded as a one-platform archive, since removed
    build = tools.find("docker", "build")
    assert build[2:4] == ["--platform", "linux/arm64"]
    assert "BASE_IMAGE=rayproject/ray:2.60.0-py311-aarch64" in build
    save = tools.find("docker", "save")
    archive = save[save.index("--output") + 1]
    assert save[-3:] == ["--platform", "linux/arm64", "mnist-train:0.1.0-cpu"]
    assert tools.find("kind", "load") == ["kind", "load", "image-archive", archive, "--name", "mnist-train"]
    assert Path(archive).parent.parent == tools.tmp and list(tools.tmp.iterdir()) == []
    assert tools.calls("kind")[-1] == ["kind", "delete", "cluster", "--name", "mnist-train"]

    # 4. a new release, its run name set; the script waits for that release's RayJob, tests it and reads its metrics
    install = tools.find("helm", "--kube-context", "kind-mnist-train", "install")
    release = install[4]
    assert release.startswith("mnist-train-")
    assert install[install.index("--set") + 1] == f"train.runName={release}"
    assert install[install.index("--namespace") + 1] == "elsewhere"
    assert ("GET", f"/apis/ray.io/v1/namespaces/elsewhere/rayjobs/{release}") in kind_api.requests
    helm_test = tools.find("helm", "--kube-context", "kind-mnist-train", "test")
    assert helm_test[4:7] == [release, "--namespace", "elsewhere"]
    (raw,) = [argv[-1] for argv in tools.calls("kubectl") if "--raw" in argv]
    assert raw.startswith("/api/v1/namespaces/elsewhere/services/prometheus:9090/")
    assert parse_qs(urlparse(raw).query)["query"] == [checks.metrics_query(release)]
    out = capsys.readouterr().out
    uninstall = f"helm --kube-context kind-mnist-train uninstall {release} --namespace elsewhere"
    assert f"OK: run {release} succeeded" in out and f"uninstall it with: {uninstall}" in out


def test_every_run_is_a_new_release(tmp_path: Path, monkeypatch, tools: Tools, apis) -> None:
    kind_api, prod_api = apis
    kind_api.add_store_secret("mnist-e2e")
    monkeypatch.setenv("KUBECONFIG", write_kubeconfig(tmp_path, prod=prod_api.port, kind=kind_api.port))
    assert kind_e2e.main(["run"]) == 0
    assert kind_e2e.main(["run"]) == 0
    charts = [argv for argv in tools.calls("helm") if str(settings.CHART) in argv]
    assert [argv[3] for argv in charts] == ["install", "install"]
    first, second = (argv[4] for argv in charts)
    assert first != second
    waited = [path.rsplit("/", 1)[-1] for method, path in kind_api.requests if "/rayjobs/" in path]
    assert waited == [first, second]
    assert [argv[4] for argv in tools.calls("helm") if argv[3] == "test"] == [first, second]


@pytest.mark.parametrize(
    ("command", "hint", "calls"),
    [
        ("run", "run `python k8s/kind_e2e.py up` first", []),
        (
            "up",
            "the kind cluster exists; add its context with `kind export kubeconfig --name mnist-train`",
            [["kind", "get", "clusters"]],
        ),
    ],
)
def test_without_the_kind_context_nothing_touches_any_cluster(
    tmp_path: Path, monkeypatch, capsys, tools: Tools, apis, command: str, hint: str, calls: list
) -> None:
    _, prod_api = apis
    monkeypatch.setenv("KUBECONFIG", write_kubeconfig(tmp_path, prod=prod_api.port))
    assert kind_e2e.main([command]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("kind_e2e: error: no kubeconfig context kind-mnist-train: ") and line.endswith(hint)
    assert tools.calls() == calls and prod_api.requests == []


def test_run_refuses_a_namespace_up_has_not_prepared(tmp_path: Path, monkeypatch, capsys, tools: Tools, apis) -> None:
    kind_api, prod_api = apis
    kind_api.add_store_secret("mnist-e2e")
    monkeypatch.setenv("KUBECONFIG", write_kubeconfig(tmp_path, prod=prod_api.port, kind=kind_api.port))
    assert kind_e2e.main(["run", "--namespace", "elsewhere"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "kind_e2e: error: no Secret mnist-s3 in namespace elsewhere: run `python k8s/kind_e2e.py up --namespace "
        "elsewhere` first"
    ]
    assert tools.calls() == []


def test_a_failed_run_says_where_to_look(tmp_path: Path, monkeypatch, capsys, tools: Tools, apis) -> None:
    kind_api, prod_api = apis
    kind_api.add_store_secret("mnist-e2e")
    kind_api.rayjob_status = {"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "message": "a\nb"}
    monkeypatch.setenv("KUBECONFIG", write_kubeconfig(tmp_path, prod=prod_api.port, kind=kind_api.port))
    assert kind_e2e.main(["run"]) == 1
    captured = capsys.readouterr()
    (release,) = [argv[4] for argv in tools.calls("helm") if argv[3] == "install"]
    assert captured.err.splitlines() == [
        "kind_e2e: error: the RayJob failed: deployment=Failed job=- (DeadlineExceeded: a; b); see why with "
        f"`kubectl --context kind-mnist-train --namespace mnist-e2e describe rayjob/{release}`"
    ]
    assert f"uninstall it with: helm --kube-context kind-mnist-train uninstall {release}" in captured.out


def test_a_failed_image_load_is_one_line_and_leaves_no_archive(
    tmp_path: Path, monkeypatch, capsys, tools: Tools, apis
) -> None:
    kind_api, prod_api = apis
    monkeypatch.setenv("KUBECONFIG", write_kubeconfig(tmp_path, prod=prod_api.port, kind=kind_api.port))
    monkeypatch.setenv("FAKE_KIND_FAIL", "no space left on device")
    assert kind_e2e.main(["up"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(
        r"kind_e2e: error: kind load image-archive \S+/image\.tar --name mnist-train exited 1: ERROR: failed to load "
        r"image; no space left on device; is the kind cluster mnist-train up\? `kind get clusters`",
        line,
    ), line
    assert list(tools.tmp.iterdir()) == []

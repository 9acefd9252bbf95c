"""charts/mnist-serve: a RayService for job.serve:app, checked against the CRD, Ray Serve's own config schema and
application builder, the training chart's pods, and the helm-test pod's script run against a loopback server."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml
from chartlib import (
    CHART,
    NAMESPACE,
    RELEASE,
    REPO,
    Manifest,
    load_crd_schema,
    parse_manifests,
    render_chart,
    schema_errors,
)
from test_schema import expected_message, loose_objects

from job.config import ServeConfig

SERVE_CHART = REPO / "charts" / "mnist-serve"
BAD_VALUES = sorted((Path(__file__).parent / "bad-serve-values").glob("*.yaml"))
SCHEMA = json.loads((SERVE_CHART / "values.schema.json").read_text())
DIGEST = "sha256:" + "0123456789abcdef" * 4
MAX_RAYSERVICE_NAME = 47  # KubeRay's utils.MaxRayServiceNameLength: longer names are rejected by the operator
L4 = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
# Importing ray.serve.schema warns about Ray's own pydantic usage; nothing this test can act on.
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")

CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": {"gpu": {"enabled": True, "nodeSelector": L4}, "serve": {"replicas": 3, "gpusPerReplica": 0.5}},
    "every-arg": {
        "serve": {
            "modelUri": "gs://ml-bucket/runs/best/deep_bn_cnn-ensemble",
            "replicas": 4,
            "cpusPerReplica": 0.5,
            "maxBatchSize": 1,
            "batchWaitMs": 0.5,
            "maxDigits": 10000,
        }
    },
    "small-pods": {
        "serve": {"replicas": 3},
        "worker": {"resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1500m", "memory": "2Gi"}}},
    },
    "podmonitor": {"metrics": {"podMonitor": {"enabled": True}}},
    "existing-secret": {
        "storage": {"existingSecret": "s3-creds", "endpointUrl": "http://minio.storage:9000", "region": "eu-west-1"}
    },
    "production": {
        "image": {"repository": "registry.example.com/ml/mnist-train", "digest": DIGEST, "pullPolicy": "Always"},
        "imagePullSecrets": ["regcred"],
        "serviceAccountName": "mnist",
        "scheduling": {"priorityClassName": "serving-high"},
        "rayAuth": {"secretName": "ray-token"},
        "pods": {
            "labels": {"team": "ml"},
            "annotations": {"example.com/cost-center": "42"},
            "runtimeClassName": "nvidia",
            "extraVolumes": [{"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}}],
            "extraVolumeMounts": [{"name": "cache", "mountPath": "/cache"}],
        },
        "head": {"nodeSelector": {"pool": "system"}, "tolerations": [{"key": "system", "operator": "Exists"}]},
        "storage": {"gcsCredentialsSecret": "gcs-key"},
        "serve": {"modelUri": "gs://ml-bucket/runs/mnist/cnn"},
        "metrics": {"podMonitor": {"enabled": True}},
    },
}


def by_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [obj for obj in objects if obj["kind"] == kind]


def the(objects: list[Manifest], kind: str) -> Manifest:
    (found,) = by_kind(objects, kind)
    return found


def serve_config(rayservice: Manifest) -> dict[str, Any]:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def application(rayservice: Manifest) -> dict[str, Any]:
    (app,) = serve_config(rayservice)["applications"]
    return app


def groups(rayservice: Manifest) -> dict[str, dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    (worker,) = cluster["workerGroupSpecs"]
    return {"head": cluster["headGroupSpec"], "worker": worker}


def container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]


def expected_args(values: dict[str, Any]) -> dict[str, Any]:
    s = values["serve"]
    return {
        "model_uri": s["modelUri"],
        "replicas": s["replicas"],
        "cpus_per_replica": s["cpusPerReplica"],
        "gpus_per_replica": s["gpusPerReplica"] if values["gpu"]["enabled"] else 0,
        "max_batch_size": s["maxBatchSize"],
        "batch_wait_ms": s["batchWaitMs"],
        "max_digits": s["maxDigits"],
    }


@pytest.fixture(scope="module")
def serve_chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(SERVE_CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    schemas = {
        ("ray.io/v1", "RayService"): load_crd_schema("ray.io_rayservices.yaml"),
        ("monitoring.coreos.com/v1", "PodMonitor"): load_crd_schema("monitoring.coreos.com_podmonitors.yaml"),
    }
    return {key: jsonschema.Draft7Validator(schema) for key, schema in schemas.items()}


@pytest.fixture(scope="module")
def render_serve(serve_chart: helm_python.Chart) -> Callable[..., list[Manifest]]:
    def _render(values: dict[str, Any], **options: Any) -> list[Manifest]:
        return parse_manifests(render_chart(serve_chart, values, **options))

    return _render


@pytest.fixture(scope="module")
def rendered(render_serve) -> dict[str, list[Manifest]]:
    return {case: render_serve(values) for case, values in CASES.items()}


@pytest.fixture(scope="module")
def build_app() -> Callable[[str, dict[str, Any]], Any]:
    """What Ray Serve's controller does with an application's import_path and args (build_serve_application)."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app as build

    def _build(import_path: str, args: dict[str, Any]) -> Any:
        return build(call_user_app_builder_with_args_if_necessary(import_attr(import_path), args), name="mnist")

    return _build


@pytest.mark.parametrize("case", CASES)
def test_every_object_matches_its_schema(case: str, rendered, validators) -> None:
    objects = rendered[case]
    assert {obj["kind"] for obj in objects} >= {"RayService", "Pod"}
    errors = {f"{o['kind']}/{o['metadata']['name']}": schema_errors(o, validators) for o in objects}
    assert {name: errs for name, errs in errors.items() if errs} == {}


def test_crd_validation_catches_real_mistakes(rendered, validators) -> None:
    """Negative control: a misspelt field and a worker group without minReplicas must both be reported."""
    rayservice = copy.deepcopy(the(rendered["default"], "RayService"))
    rayservice["spec"]["serveConfigV3"] = rayservice["spec"].pop("serveConfigV2")
    del rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"]
    errors = schema_errors(rayservice, validators)
    assert any(e.startswith("$.spec:") and "'serveConfigV3'" in e for e in errors), errors
    assert any("'minReplicas' is a required property" in e for e in errors), errors


@pytest.mark.parametrize("case", CASES)
def test_serve_config_is_valid_for_ray_serve(case: str, rendered) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(serve_config(the(rendered[case], "RayService")))
    (app,) = config.applications
    assert (app.name, app.import_path, app.route_prefix) == ("mnist", "job.serve:app", "/")
    assert (config.http_options.host, config.http_options.port) == ("0.0.0.0", 8000)


@pytest.mark.parametrize("case", CASES)
def test_args_are_the_values(case: str, rendered, serve_chart) -> None:
    args = application(the(rendered[case], "RayService"))["args"]
    assert args == expected_args(serve_chart.merge_values(CASES[case]))
    assert {name: type(args[name]) for name in ("replicas", "max_batch_size", "max_digits")} == dict.fromkeys(
        ("replicas", "max_batch_size", "max_digits"), int
    )
    assert set(args) <= {field.name for field in dataclasses.fields(ServeConfig)}
    assert ServeConfig(**args) == ServeConfig(**expected_args(serve_chart.merge_values(CASES[case])))


@pytest.mark.parametrize("case", CASES)
def test_deployment_options_are_what_the_app_builds_from_its_args(case: str, rendered, build_app) -> None:
    """Serve applies the config's deployment options over the code's and fails on an unknown deployment name."""
    app = application(the(rendered[case], "RayService"))
    built = {d.name: d for d in build_app(app["import_path"], app["args"]).deployments}
    for options in app["deployments"]:
        assert options["name"] in built, f"Serve would fail: no deployment {options['name']!r} in {list(built)}"
        deployment = built[options["name"]]
        assert options["num_replicas"] == deployment.num_replicas == app["args"]["replicas"]
        actor = options["ray_actor_options"]
        assert actor == {key: deployment.ray_actor_options[key] for key in ("num_cpus", "num_gpus")}
        assert (actor["num_cpus"], actor["num_gpus"]) == (
            app["args"]["cpus_per_replica"],
            app["args"]["gpus_per_replica"],
        )


def ray_cpus(quantity: Any) -> int:
    """KubeRay's num-cpus for a CPU quantity: its value rounded up (resource.Quantity.Value)."""
    text = str(quantity)
    return math.ceil(int(text[:-1]) / 1000 if text.endswith("m") else float(text))


@pytest.mark.parametrize("case", CASES)
def test_the_worker_group_holds_every_replica_and_no_idle_pod(case: str, rendered) -> None:
    rayservice = the(rendered[case], "RayService")
    worker = groups(rayservice)["worker"]
    resources = container(worker)["resources"]
    cpus = int(worker["rayStartParams"]["num-cpus"])
    assert cpus == ray_cpus(resources.get("limits", {}).get("cpu") or resources["requests"]["cpu"])
    app = application(rayservice)
    (deployment,) = app["deployments"]
    per_replica = deployment["ray_actor_options"]
    per_pod = math.floor(cpus / per_replica["num_cpus"] + 1e-9)
    if per_replica["num_gpus"]:
        per_pod = min(per_pod, math.floor(resources["limits"]["nvidia.com/gpu"] / per_replica["num_gpus"] + 1e-9))
    pods, replicas = worker["replicas"], deployment["num_replicas"]
    assert worker["minReplicas"] == worker["maxReplicas"] == pods
    assert (pods - 1) * per_pod < replicas <= pods * per_pod, (pods, per_pod, replicas)


@pytest.mark.parametrize(("case", "pods"), [("default", 1), ("gpu", 2), ("every-arg", 1), ("small-pods", 2)])
def test_worker_pods_by_case(case: str, pods: int, rendered) -> None:
    assert groups(the(rendered[case], "RayService"))["worker"]["replicas"] == pods


def test_gpu_is_one_switch(rendered) -> None:
    gpu = the(rendered["gpu"], "RayService")
    worker = groups(gpu)["worker"]
    spec = worker["template"]["spec"]
    assert worker["groupName"] == "gpu-workers"
    assert container(worker)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container(worker)["image"] == "mnist-train:0.1.0-gpu"
    assert spec["nodeSelector"] == L4
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} not in container(worker)["env"]
    assert application(gpu)["deployments"][0]["ray_actor_options"]["num_gpus"] == 0.5
    assert "nvidia.com/gpu" not in json.dumps(groups(gpu)["head"]), "the head serves no replica: no GPU"

    cpu = the(rendered["default"], "RayService")
    assert "nvidia.com/gpu" not in yaml.safe_dump(cpu)
    worker = groups(cpu)["worker"]
    assert (worker["groupName"], container(worker)["image"]) == ("cpu-workers", "mnist-train:0.1.0-cpu")
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in container(worker)["env"]
    assert application(cpu)["args"]["gpus_per_replica"] == 0
    assert application(cpu)["deployments"][0]["ray_actor_options"]["num_gpus"] == 0


# Values both charts take, with the same meaning: their Ray pods must come out the same.
SHARED = {
    "image": {"repository": "registry.example.com/ml/mnist-train", "digest": DIGEST, "pullPolicy": "Always"},
    "imagePullSecrets": ["regcred"],
    "gpu": {"enabled": True, "nodeSelector": L4},
    "head": {
        "resources": {
            "requests": {"cpu": "1", "memory": "3Gi", "ephemeral-storage": "1Gi"},
            "limits": {"cpu": "2", "memory": "3Gi", "ephemeral-storage": "5Gi"},
        },
        "shmSize": "512Mi",
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "system", "operator": "Exists"}],
    },
    "worker": {
        "resources": {
            "requests": {"cpu": "4", "memory": "8Gi", "ephemeral-storage": "3Gi"},
            "limits": {"cpu": "4", "memory": "8Gi", "ephemeral-storage": "15Gi"},
        },
        "shmSize": "2Gi",
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    },
    "pods": CASES["production"]["pods"],
    "rayAuth": {"secretName": "ray-token"},
    "storage": {
        "existingSecret": "s3-creds",
        "accessKeyIdKey": "id",
        "secretAccessKeyKey": "secret",
        "endpointUrl": "http://minio.storage:9000",
        "region": "eu-west-1",
        "gcsCredentialsSecret": "gcs-key",
    },
    "serviceAccountName": "mnist",
    "scheduling": {"priorityClassName": "batch-high"},
}


HAPROXY_ENV = [
    {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"},
    {"name": "RAY_SERVE_THROUGHPUT_OPTIMIZED", "value": "1"},
    {"name": "RAY_SERVE_HAPROXY_RETRY_ON", "value": "conn-failure empty-response"},
]


def without(template: dict[str, Any], ports: bool = True) -> dict[str, Any]:
    """A Ray pod template less what differs by design: the ports, Serve's HAProxy switches and the name label."""
    template = copy.deepcopy(template)
    if ports:
        template["spec"]["containers"][0].pop("ports")
    env = template["spec"]["containers"][0]["env"]
    env[:] = [item for item in env if item not in HAPROXY_ENV]
    del template["metadata"]["labels"]["app.kubernetes.io/name"]
    return template


def test_ray_pods_are_the_training_charts(chart: helm_python.Chart, render_serve) -> None:
    """Image, credentials, volumes, security, placement, GPU: what the training chart does, the serve chart does."""
    train = the(parse_manifests(render_chart(chart, SHARED)), "RayJob")["spec"]["rayClusterSpec"]
    serve = the(render_serve(SHARED), "RayService")["spec"]["rayClusterConfig"]
    assert (serve["rayVersion"], serve["authOptions"]) == (train["rayVersion"], train["authOptions"])
    pairs = {"head": (train["headGroupSpec"], serve["headGroupSpec"])}
    pairs["worker"] = (train["workerGroupSpecs"][0], serve["workerGroupSpecs"][0])
    for role, (trained, served) in pairs.items():
        assert without(served["template"]) == without(trained["template"]), role
        assert served["rayStartParams"].items() >= trained["rayStartParams"].items(), role
    env = {item["name"]: item for item in container(serve["workerGroupSpecs"][0])["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "s3-creds", "key": "secret"}}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"]["value"] == "/var/run/secrets/mnist-train/gcs/key.json"


def test_the_charts_share_their_helpers_once() -> None:
    """The helpers both charts use are the library chart's; each chart holds it as a link, not a copy, and defines
    only its own helpers under its own name."""
    library = REPO / "charts" / "mnist-common"
    assert yaml.safe_load((library / "Chart.yaml").read_text())["type"] == "library"
    bodies: dict[str, list[str]] = {}  # a helper's text, its chart's name taken out -> where it is defined
    for chart in ("mnist-common", "mnist-train", "mnist-serve"):
        folder = REPO / "charts" / chart
        if chart != "mnist-common":
            held = folder / "charts" / "mnist-common"
            assert held.is_symlink() and held.resolve() == library, f"{chart} must link charts/mnist-common"
            dependency = yaml.safe_load((folder / "Chart.yaml").read_text())["dependencies"]
            assert dependency == [{"name": "mnist-common", "version": "0.1.0", "repository": "file://../mnist-common"}]
        text = (folder / "templates" / "_helpers.tpl").read_text()
        for name, body in re.findall(r'define "([^"]+)" -}}(.*?)\n{{- end }}\n', text, flags=re.S):
            assert name.startswith(chart + "."), f"{name} is defined in {chart}"
            bodies.setdefault(body.replace(chart + ".", ""), []).append(name)
    assert [names for names in bodies.values() if len(names) > 1] == []
    assert len(bodies) > 30


def test_credentials_come_only_from_the_existing_secret(rendered) -> None:
    for role, group in groups(the(rendered["existing-secret"], "RayService")).items():
        env = {item["name"]: item for item in container(group)["env"]}
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[var] == {"name": var, "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": var}}}, role
        assert (env["AWS_ENDPOINT_URL"]["value"], env["AWS_REGION"]["value"]) == (
            "http://minio.storage:9000",
            "eu-west-1",
        )
    default = yaml.safe_dump_all(rendered["default"])
    assert "AWS_SECRET_ACCESS_KEY" not in default and "secretKeyRef" not in default


@pytest.mark.parametrize("case", CASES)
def test_pods_run_locked_down(case: str, rendered) -> None:
    templates = [group["template"] for group in groups(the(rendered[case], "RayService")).values()]
    for template in [*templates, *by_kind(rendered[case], "Pod")]:
        spec = template["spec"]
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert (spec["securityContext"]["runAsNonRoot"], spec["automountServiceAccountToken"]) == (True, False)
        sc = spec["containers"][0]["securityContext"]
        assert (sc["allowPrivilegeEscalation"], sc["capabilities"]) == (False, {"drop": ["ALL"]})


@pytest.mark.parametrize("case", CASES)
def test_every_object_has_the_standard_labels(case: str, rendered) -> None:
    for obj in rendered[case]:
        labels = obj["metadata"]["labels"]
        assert (labels["app.kubernetes.io/name"], labels["app.kubernetes.io/instance"]) == ("mnist-serve", RELEASE)
        assert (labels["app.kubernetes.io/managed-by"], labels["app.kubernetes.io/version"]) == ("Helm", "0.1.0")


def test_production_values_reach_the_pods(rendered) -> None:
    objects = rendered["production"]
    rayservice = the(objects, "RayService")
    assert rayservice["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token", "secretName": "ray-token"}
    for name, template in {**groups(rayservice), "test": the(objects, "Pod")}.items():
        spec = template.get("template", template)["spec"]
        assert (spec["serviceAccountName"], spec["priorityClassName"]) == ("mnist", "serving-high"), name
        assert spec["imagePullSecrets"] == [{"name": "regcred"}], name
        image = spec["containers"][0]
        assert (image["image"], image["imagePullPolicy"]) == (f"registry.example.com/ml/mnist-train@{DIGEST}", "Always")
    head = groups(rayservice)["head"]["template"]
    assert head["metadata"]["annotations"] == {"example.com/cost-center": "42"}
    assert (head["spec"]["runtimeClassName"], head["spec"]["nodeSelector"]) == ("nvidia", {"pool": "system"})
    mounts = {m["name"]: m["mountPath"] for m in container(groups(rayservice)["worker"])["volumeMounts"]}
    assert mounts == {"dshm": "/dev/shm", "gcs-credentials": "/var/run/secrets/mnist-train/gcs", "cache": "/cache"}


def test_ray_pods_expose_serve_and_metrics(rendered) -> None:
    """KubeRay builds <name>-serve-svc from the head's port named `serve`, and the PodMonitor scrapes `metrics`."""
    rayservice = the(rendered["default"], "RayService")
    ports = {
        role: {p["name"]: p["containerPort"] for p in container(g)["ports"]} for role, g in groups(rayservice).items()
    }
    assert (ports["head"]["serve"], ports["head"]["metrics"]) == (8000, 8080)
    assert ports["worker"] == {"serve": 8000, "metrics": 8080}
    for group in groups(rayservice).values():
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
    head = groups(rayservice)["head"]
    assert (head["rayStartParams"]["num-cpus"], head["serviceType"]) == ("0", "ClusterIP"), "no replica on the head"


def test_haproxy_is_on_in_every_ray_pod_unless_turned_off(render_serve, rendered) -> None:
    """Ray Serve reads its switches as its processes start, on the head (controller) and every node (HAProxy)."""
    for role, group in groups(the(rendered["default"], "RayService")).items():
        env = container(group)["env"]
        assert [item for item in env if item in HAPROXY_ENV] == HAPROXY_ENV, role
    off = the(render_serve({"serve": {"haproxy": False}}), "RayService")
    for role, group in groups(off).items():
        assert not [item for item in container(group)["env"] if item["name"].startswith("RAY_SERVE_")], role


def test_podmonitor_scrapes_the_ray_pods_only(rendered) -> None:
    assert by_kind(rendered["default"], "PodMonitor") == []
    objects = rendered["podmonitor"]
    monitor = the(objects, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert [ep["port"] for ep in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    selector = monitor["spec"]["selector"]
    templates = {role: g["template"] for role, g in groups(the(objects, "RayService")).items()}
    for role, template in {**templates, "test": the(objects, "Pod")}.items():
        labels = template["metadata"]["labels"]
        selected = all(labels.get(k) == v for k, v in selector["matchLabels"].items()) and all(
            labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"]
        )
        assert selected == (role != "test"), role


def test_podmonitor_without_the_operator_crds_is_skipped_with_a_warning(serve_chart: helm_python.Chart) -> None:
    values = CASES["podmonitor"]
    bare = render_chart(serve_chart, values, api_versions=())
    assert not by_kind(parse_manifests(bare), "PodMonitor"), "the install must not fail on a missing CRD"
    assert "WARNING: no PodMonitor was made" in bare["mnist-serve/templates/NOTES.txt"]
    assert "WARNING" not in render_chart(serve_chart, values)["mnist-serve/templates/NOTES.txt"]


@pytest.mark.parametrize("release", [RELEASE, "mnist-serve", "a-very-long-release-name-for-the-mnist-model-server"])
def test_names_fit_kuberay_and_the_notes_name_the_serve_service(serve_chart: helm_python.Chart, release: str) -> None:
    rendered = render_chart(serve_chart, {}, name=release)
    name = the(parse_manifests(rendered), "RayService")["metadata"]["name"]
    assert len(name) <= MAX_RAYSERVICE_NAME and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    service = f"{name}-serve-svc"  # KubeRay's utils.GenerateServeServiceName(rayService.Name)
    notes = rendered["mnist-serve/templates/NOTES.txt"]
    assert f"kubectl port-forward --namespace {NAMESPACE} svc/{service} 8000" in notes
    assert f"kubectl get rayservice {name} --namespace {NAMESPACE} -w" in notes
    assert "http://127.0.0.1:8000/predict" in notes and f"helm test {release}" in notes
    env = {e["name"]: e.get("value") for e in the(parse_manifests(rendered), "Pod")["spec"]["containers"][0]["env"]}
    assert env["SERVE_URL"] == f"http://{service}.{NAMESPACE}.svc:8000"


class Answer(BaseHTTPRequestHandler):
    """Stands in for the serve Service: records each request and answers with the server's status and body."""

    status, body, seen = 200, b"", []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers["Content-Length"])
        type(self).seen.append((self.path, self.headers["Content-Type"], self.rfile.read(length)))
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[Answer]]]:
    handler = type("Handler", (Answer,), {"seen": []})
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
        httpd.shutdown()
        thread.join()


def prediction(probabilities: list[float]) -> bytes:
    return json.dumps({"model": "cnn", "predictions": [{"class": 3, "probabilities": probabilities}]}).encode()


@pytest.mark.parametrize(
    ("status", "body", "code", "said"),
    [
        (200, prediction([0.01] * 3 + [0.91] + [0.01] * 6), 0, "OK: "),
        (503, b"no replicas ready", 1, "answered 503: no replicas ready"),
        (200, prediction([0.1] * 9), 1, "9 probabilities"),
        (200, prediction([0.5] * 10), 1, "summing to 5"),
        (200, b"<html>", 1, "not with JSON"),
        (200, json.dumps({"predictions": []}).encode(), 1, "not one prediction"),
    ],
)
def test_helm_test_pod_posts_a_digit_and_checks_the_answer(rendered, server, status, body, code, said) -> None:
    """Run the test pod's own command here, against a loopback server in the serve Service's place."""
    from job.serve import parse

    url, handler = server
    handler.status, handler.body = status, body
    done = run_test_pod(rendered, url)
    assert (done.returncode, said in done.stdout + done.stderr) == (code, True), done.stdout + done.stderr
    ((path, content_type, sent),) = handler.seen
    assert (path, content_type) == ("/predict", "application/json")
    digits = parse(sent, content_type, max_digits=1)  # what the server makes of it: one blank 28x28 digit
    assert digits.shape == (1, 28, 28) and not digits.any()


def test_helm_test_pod_fails_when_nothing_serves(rendered) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening: refused
        done = run_test_pod(rendered, url)
    assert done.returncode == 1 and "is the RayService serving?" in done.stderr, done.stderr


def run_test_pod(rendered: dict[str, list[Manifest]], url: str) -> subprocess.CompletedProcess[str]:
    pod = the(rendered["default"], "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    main = pod["spec"]["containers"][0]
    assert main["command"] == ["python", "-c"]
    env = {**os.environ, "SERVE_URL": url}
    return subprocess.run([sys.executable, "-c", *main["args"]], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serve": {"cpusPerReplica": 3}}, "serve.cpusPerReplica 3 does not fit a worker pod, which has 2 CPUs"),
        (
            {"worker": {"resources": {"limits": {"cpu": None}, "requests": {"cpu": None}}}},
            "worker.resources needs a CPU",
        ),
        ({"worker": {"resources": {"limits": {"cpu": "2k"}}}}, 'in cores or millicores .* got "2k"'),
        ({"metrics": {"rayPort": 8000}}, "metrics.rayPort 8000 collides"),
        ({"worker": {"shmSize": "128Mi"}}, "worker.shmSize 128Mi leaves Ray's object store under its 128Mi minimum"),
    ],
)
def test_cross_field_mistakes_fail_the_render(render_serve, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=message):
        render_serve(values)


def test_schema_closes_every_object() -> None:
    assert loose_objects(SCHEMA) == []
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_there_are_at_least_ten_bad_values_files() -> None:
    assert len(BAD_VALUES) >= 10


@pytest.mark.parametrize("path", BAD_VALUES, ids=lambda p: p.stem)
def test_bad_values_are_rejected_naming_the_key(serve_chart: helm_python.Chart, path: Path) -> None:
    values = yaml.safe_load(path.read_text())
    message = expected_message(path)
    assert re.search(r"'[A-Za-z_/]+'", message), f"{path.name}: the expected message must name the key"
    with pytest.raises(helm_python.HelmValuesError) as caught:
        serve_chart.validate_schema(values)
    assert message in str(caught.value)
    with pytest.raises(helm_python.HelmError) as at_render:  # an install checks the same schema first
        serve_chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(at_render.value)


@pytest.mark.parametrize("case", ["default", "gpu", "production"])
def test_chart_lints_strictly(case: str) -> None:
    report = helm_python.lint(SERVE_CHART, CASES[case], strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > 1] == []  # 1 is info ("icon is recommended")


def test_versions_follow_the_package_and_the_training_chart() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    serve, train = (yaml.safe_load((path / "Chart.yaml").read_text()) for path in (SERVE_CHART, CHART))
    assert serve["appVersion"] == pyproject["project"]["version"] == train["appVersion"]
    assert serve["annotations"]["ray.io/version"] == train["annotations"]["ray.io/version"]
    assert serve["apiVersion"] == "v2"

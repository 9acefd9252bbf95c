"""Render the chart over a matrix of values and check every object against its real schema and the job's own CLI."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from chartlib import (
    DASHBOARD_CHART,
    NAMESPACE,
    RELEASE,
    REPO,
    Manifest,
    merged,
    parse_manifests,
    render_chart,
    schema_errors,
)

from job.cli import parse
from job.config import TrainConfig

ODD_OUTPUT = "s3://my-bucket/runs;$HOME/it's"
DIGEST = "sha256:" + "0123456789abcdef" * 4
CASES: dict[str, dict[str, Any]] = {
    "default-gpu": {},
    "gpu-example": yaml.safe_load((REPO / "k8s" / "values-gpu.yaml").read_text()),
    "cpu-kind": yaml.safe_load((REPO / "k8s" / "values-kind.yaml").read_text()),
    "best-model": yaml.safe_load((REPO / "k8s" / "values-best-model.yaml").read_text()),
    "pushgateway": {"metrics": {"pushgatewayUrl": "http://pushgateway.monitoring:9091"}},
    "podmonitor": {"metrics": {"podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}},
    "production": {
        "image": {"repository": "registry.example.com/ml/mnist-train", "digest": DIGEST},
        "rayJob": {"suspend": True},
        "scheduling": {
            "kueueQueue": "team-a",
            "batchScheduler": "volcano",
            "labels": {"volcano.sh/queue-name": "training"},
            "priorityClassName": "batch-high",
        },
        "pods": {
            "labels": {"team": "ml"},
            "annotations": {"example.com/cost-center": "42"},
            "runtimeClassName": "nvidia",
            "extraVolumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "mnist-data", "readOnly": True}}],
            "extraVolumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
        },
        "head": {"nodeSelector": {"pool": "system"}, "tolerations": [{"key": "system", "operator": "Exists"}]},
        "storage": {"gcsCredentialsSecret": "gcs-key"},
        "train": {"outputBase": "gs://ml-bucket/runs", "dataUri": "gs://ml-bucket/mnist.npz"},
        "networkPolicy": {"enabled": True},
        "metrics": {"podMonitor": {"enabled": True}},
    },
    "existing-secret": {
        "storage": {"existingSecret": "s3-creds", "endpointUrl": "http://minio.storage:9000", "region": "eu-west-1"}
    },
    "odd-characters": {
        "train": {"outputBase": ODD_OUTPUT, "runName": "run.v2_final", "dataUri": "gs://data-bucket/mnist.npz"},
        "metrics": {"pushgatewayUrl": "http://pg:9091/x?a=1&b='2'"},
    },
    "every-flag": {
        "gpu": {"enabled": False},
        "train": {
            "models": ["cnn"],
            "epochs": 3,
            "batchSize": 96,
            "workers": 3,
            "cpusPerWorker": 1.5,
            "dataset": "fashion_mnist",
            "seed": 11,
            "ensemble": 3,
            "overwrite": True,
            "metricsPort": 0,
            "maxFailures": -1,
            "stepsPerExecution": 20,
            "startTimeout": 90.5,
            "metricsLinger": 0,
        },
        "rayJob": {"shutdownAfterJobFinishes": False, "ttlSecondsAfterFinished": 0, "backoffLimit": 3},
    },
}


def by_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [obj for obj in objects if obj["kind"] == kind]


def the(objects: list[Manifest], kind: str) -> Manifest:
    (found,) = by_kind(objects, kind)
    return found


def ray_pods(rayjob: Manifest) -> dict[str, dict[str, Any]]:
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    return {
        "head": cluster["headGroupSpec"]["template"],
        "worker": cluster["workerGroupSpecs"][0]["template"],
        "submitter": spec["submitterPodTemplate"],
    }


def pod_specs(objects: list[Manifest]) -> dict[str, dict[str, Any]]:
    specs = {name: tpl["spec"] for name, tpl in ray_pods(the(objects, "RayJob")).items()}
    specs.update({pod["metadata"]["name"]: pod["spec"] for pod in by_kind(objects, "Pod")})
    return specs


def pod_cpus(resources: dict[str, Any]) -> float:
    """The CPUs Ray sees on a worker pod, by KubeRay's rule: the CPU limit, else the request, rounded up."""
    quantity = str(resources.get("limits", {}).get("cpu") or resources["requests"]["cpu"])
    return math.ceil(int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity))


def expected_config(values: dict[str, Any]) -> TrainConfig:
    t = values["train"]
    run_name = t["runName"] or RELEASE
    return TrainConfig(
        models=tuple(t["models"]),
        epochs=t["epochs"],
        batch_size=t["batchSize"],
        workers=t["workers"],
        gpu=values["gpu"]["enabled"],
        cpus_per_worker=float(t.get("cpusPerWorker") or pod_cpus(values["worker"]["resources"])),
        dataset=t["dataset"],
        data_uri=t["dataUri"] or None,
        output=f"{t['outputBase'].rstrip('/')}/{run_name}",
        run_name=run_name,
        seed=t["seed"],
        ensemble=t["ensemble"],
        address="auto",  # the driver joins the RayJob's cluster
        overwrite=t["overwrite"],
        metrics_port=t["metricsPort"],
        metrics_linger=float(t.get("metricsLinger", default_linger(values))),
        pushgateway=values["metrics"]["pushgatewayUrl"] or None,
        max_failures=t["maxFailures"],
        steps_per_execution=t["stepsPerExecution"],
        start_timeout=float(t["startTimeout"]),
        checkpoint_interval=float(t["checkpointInterval"]),
        storage_retries=t["storageRetries"],
        mixed_precision=t["mixedPrecision"],
        jit_compile=t["jitCompile"],
    )


def default_linger(values: dict[str, Any]) -> float:
    """Without a value: linger only where a PodMonitor scrapes and nothing pushes the outcome."""
    metrics = values["metrics"]
    return 60.0 if metrics["podMonitor"]["enabled"] and not metrics["pushgatewayUrl"] else 0.0


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads MNIST_TRAIN_* and RAY_ADDRESS; the entrypoint alone must carry every value."""
    for name in list(os.environ):
        if name.startswith("MNIST_TRAIN_") or name == "RAY_ADDRESS":
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def rendered(render) -> dict[str, list[Manifest]]:
    return {case: render(values) for case, values in CASES.items()}


@pytest.mark.parametrize("case", CASES)
def test_every_object_matches_its_schema(case: str, rendered, crd_validators) -> None:
    objects = rendered[case]
    assert objects, "nothing rendered"
    errors = {f"{o['kind']}/{o['metadata']['name']}": schema_errors(o, crd_validators) for o in objects}
    assert {name: errs for name, errs in errors.items() if errs} == {}


@pytest.mark.parametrize("case", CASES)
def test_entrypoint_parses_back_to_the_given_values(case: str, rendered, clean_env) -> None:
    argv = shlex.split(the(rendered[case], "RayJob")["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "job", "train"]
    assert parse(argv[3:]) == expected_config(merged(CASES[case]))


def test_entrypoint_quotes_shell_metacharacters(rendered) -> None:
    entrypoint = the(rendered["odd-characters"], "RayJob")["spec"]["entrypoint"]
    assert f"--output '{ODD_OUTPUT.replace(chr(39), chr(39) + chr(92) + chr(39) + chr(39))}/run.v2_final'" in entrypoint
    out = subprocess.run(["sh", "-c", f"printf '%s\\n' {entrypoint}"], capture_output=True, text=True, check=True)
    assert f"{ODD_OUTPUT}/run.v2_final" in out.stdout.splitlines()


@pytest.mark.parametrize("case", CASES)
def test_pods_run_locked_down(case: str, rendered) -> None:
    for name, spec in pod_specs(rendered[case]).items():
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert (sc["runAsNonRoot"], sc["allowPrivilegeEscalation"], sc["capabilities"]) == (
                True,
                False,
                {"drop": ["ALL"]},
            ), f"{name}/{container['name']}"


@pytest.mark.parametrize("case", CASES)
def test_every_object_has_the_standard_labels(case: str, rendered) -> None:
    for obj in rendered[case]:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "mnist-train"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"


def test_rayjob_lifecycle_and_cluster_shape(rendered) -> None:
    spec = the(rendered["default-gpu"], "RayJob")["spec"]
    assert (spec["shutdownAfterJobFinishes"], spec["ttlSecondsAfterFinished"], spec["backoffLimit"]) == (True, 600, 1)
    assert (spec["activeDeadlineSeconds"], spec["preRunningDeadlineSeconds"]) == (21600, 1800), "deadlines are finite"
    assert spec["suspend"] is False
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["serviceType"] == "ClusterIP"
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    assert "runtimeEnvYAML" not in spec, "the image and the pods' env carry everything; no runtime env by default"
    for name, pod in ray_pods(the(rendered["default-gpu"], "RayJob")).items():
        if name != "submitter":
            assert {"name": "TF_USE_LEGACY_KERAS", "value": "1"} in pod["spec"]["containers"][0]["env"], name
    kind_spec = the(rendered["cpu-kind"], "RayJob")["spec"]
    assert (kind_spec["activeDeadlineSeconds"], kind_spec["ttlSecondsAfterFinished"]) == (1800, 60)
    every = the(rendered["every-flag"], "RayJob")["spec"]
    assert every["shutdownAfterJobFinishes"] is False and "ttlSecondsAfterFinished" not in every
    assert every["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] == 3


def test_gpu_workers_get_gpus_tolerations_and_node_selector(rendered) -> None:
    rayjob = the(rendered["gpu-example"], "RayJob")
    worker = ray_pods(rayjob)["worker"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    assert worker["containers"][0]["image"] == "registry.example.com/ml/mnist-train:0.1.0-gpu"
    head = ray_pods(rayjob)["head"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(head), "the head runs no training: no GPU"


def test_gpu_affinity_comes_from_values(render) -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]}
                ]
            }
        }
    }
    rayjob = the(render({"gpu": {"affinity": affinity}}), "RayJob")
    assert ray_pods(rayjob)["worker"]["spec"]["affinity"] == affinity


def test_cpu_is_one_switch(rendered) -> None:
    objects = rendered["cpu-kind"]
    assert "nvidia" not in yaml.safe_dump_all(objects)
    rayjob = the(objects, "RayJob")
    assert "--no-gpu" in shlex.split(rayjob["spec"]["entrypoint"])
    worker = ray_pods(rayjob)["worker"]["spec"]
    assert "tolerations" not in worker
    assert worker["containers"][0]["image"] == "mnist-train:0.1.0-cpu"
    assert the(rendered["every-flag"], "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"] == (
        "cpu-workers"
    )


def test_credentials_come_only_from_the_existing_secret(rendered) -> None:
    for name, spec in pod_specs(rendered["existing-secret"]).items():
        if name == "submitter":
            continue  # the submitter only talks to Ray; it gets no storage credentials
        env = {item["name"]: item for item in spec["containers"][0]["env"]}
        for var, key in (
            ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
            ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
        ):
            assert env[var] == {"name": var, "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": key}}}, name
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage:9000"
        assert env["AWS_REGION"]["value"] == "eu-west-1"
    default_env = json.dumps(pod_specs(rendered["default-gpu"]))
    assert "AWS_SECRET_ACCESS_KEY" not in default_env and "secretKeyRef" not in default_env


def test_pushgateway_is_optional(rendered) -> None:
    with_url = shlex.split(the(rendered["pushgateway"], "RayJob")["spec"]["entrypoint"])
    assert with_url[with_url.index("--pushgateway") + 1] == "http://pushgateway.monitoring:9091"
    assert "--pushgateway" not in the(rendered["default-gpu"], "RayJob")["spec"]["entrypoint"]


def test_podmonitor_scrapes_both_ports_of_the_ray_pods(rendered) -> None:
    assert by_kind(rendered["default-gpu"], "PodMonitor") == []
    objects = rendered["podmonitor"]
    monitor = the(objects, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert [ep["port"] for ep in monitor["spec"]["podMetricsEndpoints"]] == ["metrics", "train-metrics"]
    selector = monitor["spec"]["selector"]
    for role, template in ray_pods(the(objects, "RayJob")).items():
        labels = template["metadata"]["labels"]
        selected = all(labels.get(k) == v for k, v in selector["matchLabels"].items()) and all(
            labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"]
        )
        assert selected == (role != "submitter"), role
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        if role == "worker":
            assert ports == {"metrics": 8080, "train-metrics": 9400}


def test_production_values_reach_the_objects(rendered) -> None:
    objects = rendered["production"]
    rayjob = the(objects, "RayJob")
    labels = rayjob["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
    assert (labels["ray.io/scheduler-name"], labels["volcano.sh/queue-name"]) == ("volcano", "training")
    assert rayjob["spec"]["suspend"] is True
    image = f"registry.example.com/ml/mnist-train@{DIGEST}"
    gcs_env = {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/run/secrets/mnist-train/gcs/key.json"}
    for name, template in {**ray_pods(rayjob), "test": the(objects, "Pod")}.items():
        spec = template["spec"]
        assert template["metadata"]["labels"]["team"] == "ml", name
        assert spec["priorityClassName"] == "batch-high", name
        assert spec["containers"][0]["image"] == image, name
        if name in ("head", "worker"):
            assert template["metadata"]["annotations"] == {"example.com/cost-center": "42"}
            assert spec["runtimeClassName"] == "nvidia"
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "mnist-data"
            assert volumes["gcs-credentials"]["secret"]["secretName"] == "gcs-key"
            mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
            assert mounts == {
                "dshm": "/dev/shm",
                "gcs-credentials": "/var/run/secrets/mnist-train/gcs",
                "data": "/data",
            }
        if name != "submitter":
            assert gcs_env in spec["containers"][0]["env"], name
    head = ray_pods(rayjob)["head"]["spec"]
    assert head["nodeSelector"] == {"pool": "system"} and head["tolerations"] == [
        {"key": "system", "operator": "Exists"}
    ]


@pytest.mark.parametrize(
    ("values", "linger"),
    [
        ({}, "0"),
        ({"metrics": {"podMonitor": {"enabled": True}}}, "60"),
        ({"metrics": {"podMonitor": {"enabled": True}, "pushgatewayUrl": "http://pg:9091"}}, "0"),
        ({"train": {"metricsLinger": 30}}, "30"),
    ],
)
def test_the_outcome_lingers_only_where_a_scrape_is_its_only_way_out(render, values, linger: str) -> None:
    argv = shlex.split(the(render(values), "RayJob")["spec"]["entrypoint"])
    assert argv[argv.index("--metrics-linger") + 1] == linger


def test_podmonitor_is_selected_by_kube_prometheus_stack_by_default(render) -> None:
    monitor = the(render({"metrics": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_podmonitor_without_the_operator_crds_is_skipped_with_a_warning(chart: helm_python.Chart) -> None:
    values = {"metrics": {"podMonitor": {"enabled": True}}}
    bare = render_chart(chart, values, api_versions=())
    assert not by_kind(parse_manifests(bare), "PodMonitor"), "the install must not fail on a missing CRD"
    assert (
        "WARNING: no PodMonitor was made: this cluster has no PodMonitor CRD" in bare["mnist-train/templates/NOTES.txt"]
    )
    served = render_chart(chart, values)
    assert by_kind(parse_manifests(served), "PodMonitor") and "WARNING" not in served["mnist-train/templates/NOTES.txt"]


@pytest.mark.parametrize("case", CASES)
def test_object_store_fits_its_shm_volume(case: str, rendered) -> None:
    cluster = the(rendered[case], "RayJob")["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        (shm,) = [v for v in group["template"]["spec"]["volumes"] if v["name"] == "dshm"]
        size = shm["emptyDir"]["sizeLimit"]
        shm_bytes = int(size[:-2]) * {"Mi": 2**20, "Gi": 2**30}[size[-2:]]
        store = int(group["rayStartParams"]["object-store-memory"])
        assert 0.5 * shm_bytes < store <= 0.7 * shm_bytes, (size, store)


@pytest.mark.parametrize("case", CASES)
def test_only_gpu_workers_see_the_nodes_gpus(case: str, rendered) -> None:
    gpu = merged(CASES[case])["gpu"]["enabled"]
    for name, spec in pod_specs(rendered[case]).items():
        env = spec["containers"][0].get("env", [])
        hidden = {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in env
        assert hidden == (not (gpu and name == "worker")), name


def test_network_policy_admits_the_release_prometheus_and_the_operator(rendered) -> None:
    assert by_kind(rendered["default-gpu"], "NetworkPolicy") == []
    policy = the(rendered["production"], "NetworkPolicy")["spec"]
    selector = {"app.kubernetes.io/name": "mnist-train", "app.kubernetes.io/instance": RELEASE}
    assert policy["podSelector"] == {"matchLabels": selector} and policy["policyTypes"] == ["Ingress"]
    own, prometheus, operator = policy["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": selector}}]}
    assert prometheus["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    assert [port["port"] for port in prometheus["ports"]] == [8080, 9400]
    assert operator["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}}
    ]
    assert operator["ports"] == [{"port": 8265, "protocol": "TCP"}]


def test_the_dashboard_is_its_own_chart_installed_once() -> None:
    with helm_python.Chart.load(DASHBOARD_CHART) as chart:
        objects = parse_manifests(chart.render({}, name="mnist-train-dashboard", namespace="monitoring"))
    (configmap,) = objects
    assert configmap["metadata"]["name"] == "mnist-train-dashboard"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    on_disk = json.loads((DASHBOARD_CHART / "dashboards" / "training.json").read_text())
    assert json.loads(configmap["data"]["mnist-train.json"]) == on_disk
    assert any(v["name"] == "run" for v in on_disk["templating"]["list"]), "one dashboard serves every run"


@pytest.mark.parametrize("case", CASES)
def test_a_run_release_ships_no_dashboard(case: str, rendered) -> None:
    assert by_kind(rendered[case], "ConfigMap") == [], "a per-release dashboard would be deleted with any run"


def test_helm_test_pod_checks_results_json(rendered) -> None:
    pod = the(rendered["existing-secret"], "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = {item["name"]: item for item in pod["spec"]["containers"][0]["env"]}
    assert env["RESULTS_URI"]["value"] == f"s3://mnist-train/runs/{RELEASE}/results.json"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    assert by_kind(rendered["default-gpu"], "Pod"), "helm test is on by default"


@pytest.mark.parametrize(
    ("content", "code", "said"),
    [
        ('{"mlp": {"test_error": 0.02}}', 0, "OK:"),
        ("[]", 1, "is not a JSON object"),
        (None, 1, "does not exist"),
    ],
)
def test_helm_test_script_runs(rendered, tmp_path: Path, content: str | None, code: int, said: str) -> None:
    """Run the test pod's own command here, against a file:// output instead of S3."""
    container = the(rendered["default-gpu"], "Pod")["spec"]["containers"][0]
    results = tmp_path / "results.json"
    if content is not None:
        results.write_text(content)
    env = {**os.environ, "RESULTS_URI": results.as_uri()}
    argv = [sys.executable, *container["command"][1:], *container["args"]]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, said in done.stdout + done.stderr) == (code, True), done.stderr


def test_notes_tell_how_to_watch_and_where_results_land(chart: helm_python.Chart) -> None:
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE)["mnist-train/templates/NOTES.txt"]
    assert f"kubectl get rayjob {RELEASE}-mnist-train --namespace {NAMESPACE} -w" in notes
    assert f"kubectl logs --namespace {NAMESPACE} -f job/{RELEASE}-mnist-train" in notes
    assert f"s3://mnist-train/runs/{RELEASE}/results.json" in notes
    assert f"helm test {RELEASE}" in notes


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train": {"batchSize": 100, "workers": 3}}, "train.batchSize 100 does not split evenly over train.workers 3"),
        ({"rayJob": {"shutdownAfterJobFinishes": False}}, "rayJob.ttlSecondsAfterFinished needs"),
        (
            {"train": {"metricsPort": 8080}, "metrics": {"podMonitor": {"enabled": True}}},
            "collides with Ray's own metrics port",
        ),
        ({"head": {"shmSize": "128Mi"}}, "head.shmSize 128Mi leaves Ray's object store under its 128Mi minimum"),
        (
            {"train": {"cpusPerWorker": 1}},
            r"train.cpusPerWorker 1 would let two workers share a worker pod of 2 CPUs .* leave it empty",
        ),
        (
            {"train": {"cpusPerWorker": 4.5}, "worker": {"resources": {"limits": {"cpu": "3500m"}}}},
            r"train.cpusPerWorker 4.5 is more than the 4 CPUs Ray sees on a worker pod",
        ),
    ],
)
def test_cross_field_mistakes_fail_the_render(render, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=message):
        render(values)


@pytest.mark.parametrize("case", CASES)
def test_the_tests_merge_values_the_way_helm_does(case: str, chart: helm_python.Chart) -> None:
    """expected_config reads merged(): it must equal Helm's own coalescing of the chart defaults and the case."""
    assert merged(CASES[case]) == chart.merge_values(CASES[case])


def test_crd_validation_catches_real_mistakes(rendered, crd_validators) -> None:
    """Negative control: a typo and a worker group without minReplicas must both be reported, with their paths."""
    rayjob = json.loads(json.dumps(the(rendered["default-gpu"], "RayJob")))
    group = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    del group["minReplicas"]
    group["replica"] = group.pop("replicas")
    errors = schema_errors(rayjob, crd_validators)
    assert any("$.spec.rayClusterSpec.workerGroupSpecs[0]" in e and "'replica'" in e for e in errors), errors
    assert any("'minReplicas' is a required property" in e for e in errors), errors
    pod = json.loads(json.dumps(the(rendered["default-gpu"], "Pod")))
    pod["spec"]["containers"][0]["imagePullPolicy"] = 3
    assert schema_errors(pod, crd_validators)

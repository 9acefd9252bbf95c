"""k8s/rehearse/pods.py and tools/image/pins.py: the pure parts of `make image-check` (no podman here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from rehearse import pods

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("pins", REPO / "tools" / "image" / "pins.py")
pins = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pins)


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    """The chart's default values, as `make image-check` renders them."""
    with helm_python.Chart.load(REPO / "charts" / "mnist-train") as chart:
        rendered = chart.render({}, name="check", namespace="ml", is_install=True)
    (job,) = [yaml.safe_load(text) for path, text in rendered.items() if path.endswith("/rayjob.yaml")]
    return job


def groups(rayjob: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    return cluster["headGroupSpec"], cluster["workerGroupSpecs"][0]


def test_kuberay_start_command_for_the_default_head(rayjob) -> None:
    head, _ = groups(rayjob)
    params = pods.ray_start_params(head, head=True)
    command = pods.ray_start_command(params, head=True)
    # num-cpus 0 is the chart's own (training stays off the head); memory from the 4Gi limit.
    assert command == (
        "ray start --head --block --dashboard-agent-listen-port=52365 --dashboard-host=0.0.0.0 "
        f"--memory={4 * 2**30} --metrics-export-port=8080 --num-cpus=0 --object-store-memory={int(0.7 * 2**30)}"
    )


def test_kuberay_start_command_for_the_default_workers(rayjob) -> None:
    _, worker = groups(rayjob)
    params = pods.ray_start_params(worker, head=False, head_service="check-raycluster-head-svc.ml.svc.cluster.local")
    command = pods.ray_start_command(params, head=False)
    assert "--address=check-raycluster-head-svc.ml.svc.cluster.local:6379" in command
    assert f"--memory={8 * 2**30}" in command and "--num-cpus=2" in command
    assert "--num-gpus=1" in command, "the default values give each worker one nvidia.com/gpu"
    assert command.startswith("ray start --address=") and " --block " in command
    full = pods.container_command(command)
    assert full[:3] == ["/bin/bash", "-c", "--"]
    assert full[3] == f"ulimit -n ${{RAY_START_ULIMIT_OPEN_FILES:-65536}}; {command}"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"block": "true", "include-dashboard": "false", "verbose": "false"}, "--block --include-dashboard=false"),
        ({"resources": "'{\"x\": 1}'"}, "--resources='{\"x\": 1}'"),
    ],
)
def test_convert_param_map_booleans(params: dict[str, str], expected: str) -> None:
    assert pods.ray_start_command(params, head=False) == f"ray start {expected}"


@pytest.mark.parametrize(
    ("value", "whole"), [("2", 2), ("500m", 1), ("1.5", 2), ("8Gi", 8 * 2**30), ("1G", 10**9), ("512Mi", 2**29)]
)
def test_quantities_round_up_like_kubernetes(value: str, whole: int) -> None:
    assert pods.whole(value) == whole


def test_worker_pod_as_podman_arguments(rayjob) -> None:
    _, worker = groups(rayjob)
    spec = worker["template"]["spec"]
    container = spec["containers"][0]
    env = pods.container_env(container, {})
    args = pods.run_args(spec, container, name="w1", network="net", env=env, image="img", command=["true"])
    assert args[:5] == ["run", "--detach", "--name=w1", "--hostname=w1", "--network=net"]
    expected = ["--user=1000:100", "--group-add=100", "--cap-drop=ALL", "--security-opt=no-new-privileges", "--cpus=2",
                f"--memory={8 * 2**30}", f"--shm-size={2 * 2**30}", "--env=TF_USE_LEGACY_KERAS=1"]  # fmt: skip
    for flag in expected:
        assert flag in args, flag
    assert "--read-only" not in args, "the chart leaves the root file system writable (Ray writes /tmp and $HOME)"
    assert args[-2:] == ["img", "true"]


def test_run_as_non_root_is_enforced() -> None:
    spec = {"securityContext": {"runAsNonRoot": True}}
    with pytest.raises(ValueError, match="runAsNonRoot"):
        pods.security_args(spec, {}, image_user="0:0")
    assert pods.security_args(spec, {}, image_user="1000:100") == []


def test_env_resolves_secrets_and_fields() -> None:
    container = {"env": [{"name": "A", "value": "1"},
                         {"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                         {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}  # fmt: skip
    env = pods.container_env(container, {"s": {"k": "v"}}, {"metadata.name": "pod"})
    assert env == {"A": "1", "K": "v", "N": "pod"}


def test_volumes_need_a_host_folder_unless_empty_dirs() -> None:
    spec = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "mnist"}},
                        {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}]}  # fmt: skip
    container = {"volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True},
                                  {"name": "scratch", "mountPath": "/scratch"}]}  # fmt: skip
    with pytest.raises(ValueError, match="no host folder"):
        pods.volume_args(spec, container, {})
    assert pods.volume_args(spec, container, {"data": "/srv/mnist"}) == [
        "--volume=/srv/mnist:/data:ro",
        f"--tmpfs=/scratch:rw,mode=1777,size={2**30}",
    ]


def test_kuberay_env_for_a_worker() -> None:
    env = pods.kuberay_env(head=False, cluster="c", namespace="ml", pod="w1", group="cpu-workers",
                           start="ray start", head_service="c-head-svc", token="t")  # fmt: skip
    assert env["RAY_ADDRESS"] == "c-head-svc:6379" and env["FQ_RAY_IP"] == "c-head-svc"
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == "t"
    assert "RAY_USAGE_STATS_EXTRA_TAGS" not in env


def test_pins_keep_the_base_images_versions() -> None:
    base = "numpy==2.1.0\nRay==2.60.0\nprotobuf==5.29.0\n"
    repo = "numpy==2.3.4\nray==2.60.0\ntensorflow==2.21.0\n# comment\nkeras==3.15.1 ; python_version>'3'\n"
    lines, diffs = pins.merged_constraints(base, repo)
    assert lines == ["numpy==2.1.0", "protobuf==5.29.0", "Ray==2.60.0", "keras==3.15.1", "tensorflow==2.21.0"]
    assert diffs == ["numpy: the base image has 2.1.0, constraints.txt pins 2.3.4"]


def test_pins_requirements_with_extras() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    plain, gpu = pins.requirements(pyproject, ""), pins.requirements(pyproject, "gpu")
    assert "tensorflow==2.21.0" in plain and not any(r.startswith("tensorflow[and-cuda]") for r in plain)
    assert gpu[-1].startswith("tensorflow[and-cuda]==") and gpu[: len(plain)] == plain
    with pytest.raises(SystemExit, match="no extra 'nope'"):
        pins.requirements(pyproject, "nope")

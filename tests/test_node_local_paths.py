"""A path the workers cannot see is refused before anything trains or serves. Two Ray nodes on this machine: a head
with no CPUs (as the chart's) and a worker node in a mount namespace of its own, with an empty tmpfs over one folder,
as a node of a real cluster sees the driver's local disk. Paths every node sees work as before."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_head import RayHead, ray_head, stop_node

from support import free_port, run_job

RUN = ("--dataset", "mnist-sample", "--models", "mlp", "--epochs", "1", "--workers", "1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RayHead, Path]]:
    """(the head, a folder the worker node cannot see)."""
    hidden = tmp_path_factory.mktemp("node-local")
    with ray_head(num_cpus=0) as head:
        start = (f"mount -t tmpfs tmpfs {hidden} && exec ray start --block --address {head.gcs_address} --num-cpus 2 "
                 f"--metrics-export-port {free_port()} --dashboard-agent-listen-port {free_port()} "
                 "--disable-usage-stats")  # fmt: skip
        namespace = ["unshare", "--mount", "--propagation", "private", "sh", "-c", start]
        node = subprocess.Popen(namespace, env=head.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        try:
            _wait_for_nodes(head, 2)
            yield head, hidden
        finally:
            stop_node(node)


def _wait_for_nodes(head: RayHead, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = subprocess.run(["ray", "list", "nodes", "--address", head.dashboard, "--format", "json",
                                 "--filter", "state=ALIVE"], env=head.env, capture_output=True, text=True)  # fmt: skip
        # Before the first node registers, `ray list` answers "No resource in the cluster", not JSON.
        if listed.returncode == 0 and listed.stdout.startswith("[") and len(json.loads(listed.stdout)) >= count:
            return
        time.sleep(1)
    raise TimeoutError(f"fewer than {count} Ray nodes alive after {timeout:.0f} s")


def test_an_output_on_the_drivers_disk_is_refused_before_training(cluster) -> None:
    head, hidden = cluster
    started = time.monotonic()
    out = run_job("train", *RUN, "--address", head.gcs_address, "--output", str(hidden / "out"), env=head.env)
    took = time.monotonic() - started
    assert out.returncode == 2, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if not line.startswith("INFO: joining the Ray cluster")]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"mnist-train: error: --output {hidden}/out is on this machine's disk, which the Ray")
    assert "cannot see; use s3://, gs://" in errors[0] and not re.search(r"epoch +1/1", out.stdout)
    assert sorted(p.name for p in (hidden / "out").iterdir()) == ["checkpoints", "run.log"]  # no probe left behind
    print(f"\nrefused in {took:.1f} s")


def test_a_path_every_node_sees_trains_and_a_model_on_the_drivers_disk_is_not_served(cluster, tmp_path) -> None:
    head, hidden = cluster
    out = run_job("train", *RUN, "--address", head.gcs_address, "--output", str(tmp_path / "out"), env=head.env)
    assert out.returncode == 0, out.stdout + out.stderr
    shutil.copytree(tmp_path / "out" / "mlp", hidden / "mlp")
    served = run_job("serve", "--address", head.gcs_address, "--model-uri", str(hidden / "mlp"), env=head.env)
    assert served.returncode == 2, served.stdout + served.stderr
    assert re.fullmatch(
        rf"mnist-train: error: --model-uri {hidden}/mlp is on this machine's disk, which the Ray node\(s\) at \S+ "
        r"cannot see; use s3://, gs:// or a file system that every node mounts\n",
        served.stderr,
    ), served.stderr

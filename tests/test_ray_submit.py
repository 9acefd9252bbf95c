"""`ray job submit` to a real Ray head (`ray start --head`) on loopback, with Ray's token auth on."""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_head import RayHead
from ray_head import ray_head as start_ray_head

from support import ROOT

RUNTIME_ENV = {"env_vars": {"TF_USE_LEGACY_KERAS": "1"}, "excludes": [".venv", ".venv-s3", "artifacts", ".git"]}


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    with start_ray_head() as started:
        yield started


@pytest.fixture(scope="module")
def ray_head(head: RayHead):
    return head.dashboard, head.env


def submit(address: str, env: dict, *job_args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ray", "job", "submit", "--address", address, "--working-dir", ".", "--runtime-env-json",
         json.dumps(RUNTIME_ENV), "--", "python", "-m", "job", *job_args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_submitted_job_trains_on_the_cluster_and_writes_artifacts(ray_head, tmp_path) -> None:
    address, env = ray_head
    output = tmp_path / "out"
    done = submit(address, env, "train", "--dataset", "mnist-sample", "--epochs", "1", "--models", "mlp",
                  "--output", str(output), "--run-name", "submitted")  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Job 'raysubmit_" in done.stderr + done.stdout and "succeeded" in done.stderr + done.stdout
    assert "joining the Ray cluster" in done.stdout  # the job used the cluster, not a private local Ray
    results = json.loads((output / "results.json").read_text())
    assert results["status"] == "succeeded" and results["workers"] == 2
    assert [r["epoch"] for r in results["models"]["mlp"]["history"]] == [1]
    assert (output / "mlp" / "model.keras").exists() and (output / "mlp" / "saved_model" / "saved_model.pb").exists()
    assert f"MLP error: {results['models']['mlp']['test_error_percent']:.2f}%" in done.stdout


def test_submission_without_the_token_is_refused(ray_head) -> None:
    address, env = ray_head
    no_token = {**env, "RAY_AUTH_TOKEN": "wrong-" + secrets.token_hex(8)}
    refused = subprocess.run(["ray", "job", "list", "--address", address], env=no_token, capture_output=True, text=True)
    accepted = subprocess.run(["ray", "job", "list", "--address", address], env=env, capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr[-2000:]  # the head is up: the refusal is the token's
    assert refused.returncode != 0
    assert re.search(r"unauthori[sz]ed|authentication|401|invalid token", refused.stdout + refused.stderr, re.I), (
        refused.stderr[-2000:]
    )


@pytest.mark.parametrize("source", ["env", "file"])
def test_joining_with_another_clusters_token_fails_at_once_naming_where_it_came_from(
    head: RayHead, tmp_path: Path, source: str
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    env = {k: v for k, v in head.env.items() if not k.startswith(("RAY_AUTH_TOKEN", "MNIST_TRAIN_"))}
    if source == "env":
        env["RAY_AUTH_TOKEN"], where = wrong, "the token in RAY_AUTH_TOKEN"
    else:
        (tmp_path / "token").write_text(wrong)
        env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "token")
        where = f"the token in {tmp_path / 'token'} (RAY_AUTH_TOKEN_PATH)"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "job", "train", "--address", head.gcs_address, "--dataset",
                           "mnist-sample", "--output", str(tmp_path / "out")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines() == [
        f"mnist-train: error: the Ray cluster at --address {head.gcs_address} rejected {where}; set RAY_AUTH_TOKEN "
        "to that cluster's token (`ray get-auth-token` on its head; on KubeRay: kubectl get secret <ray-cluster> "
        "-o jsonpath='{.data.auth_token}' | base64 -d)"
    ]
    assert wrong not in done.stderr + done.stdout, "the token itself is never printed"
    assert seconds < 15, f"took {seconds:.1f} s; ray.init alone retries for about 25 s"
    print(f"wrong token ({source}): exit 2 after {seconds:.1f} s")


def test_an_address_that_is_not_a_ray_gcs_fails_with_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:  # answers TCP, speaks no Ray: e.g. a wrong port
        address = f"127.0.0.1:{server.getsockname()[1]}"
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "job", "train", "--address", address, "--dataset", "mnist-sample",
                               "--output", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines() == [
        f"mnist-train: error: --address {address} answers, but not as a Ray cluster (no reply from a GCS); give the "
        "head's GCS address, port 6379 unless changed (the dashboard's 8265 is for `ray job submit`)"
    ]
    print(f"not a GCS: exit 2 after {seconds:.1f} s")

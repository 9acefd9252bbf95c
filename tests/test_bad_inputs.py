"""The catalogue of bad inputs (docs/errors.md), each run through the real CLI: message, exit code, nothing final.

Most rows call the CLI's entry point (`job.cli.main`) in this process, which is fast; the rows marked `process` run
`python -m job train` as a user would: one per way out (an argparse error, a bad value, bad data) and those that
reach for Ray. docs/errors.md is generated from CASES and FAULTS below (`python tests/test_bad_inputs.py` rewrites
it), and a test checks it matches, so the table and the tests cannot drift.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from live_run import MotoServer

from support import ROOT, free_port, write_idx_folder

DOC = ROOT / "docs" / "errors.md"
FOREIGN_ENV = ("MNIST_TRAIN_", "AWS_", "RAY_ADDRESS")  # what the tests' own environment must not add


def _npz(**changes: np.ndarray | None) -> Callable[[Path], str]:
    """A small valid data set (real digits) with some arrays replaced (None drops one), saved as data.npz."""

    def write(folder: Path) -> str:
        from job import data

        sample = data.mnist_sample()
        arrays = {"x_train": sample.x_train[:400], "y_train": sample.y_train[:400],
                  "x_test": sample.x_test[:100], "y_test": sample.y_test[:100]}  # fmt: skip
        arrays.update(changes)
        np.savez_compressed(folder / "data.npz", **{k: v for k, v in arrays.items() if v is not None})
        return str(folder / "data.npz")

    return write


def _truncated_npz(folder: Path) -> str:
    path = _npz()(folder)
    Path(path).write_bytes(Path(path).read_bytes()[:3000])
    return path


def _idx_folder(broken: bytes) -> Callable[[Path], str]:
    """A folder of the four IDX .gz files whose training images file holds `broken`."""

    def write(folder: Path) -> str:
        from job import data

        write_idx_folder(folder, data.mnist_sample())
        (folder / data.IDX_FILES["x_train"]).write_bytes(broken)
        return str(folder)

    return write


def _wrong(dtype: str, fill: float) -> np.ndarray:
    x = np.full((400, 28, 28), fill, dtype=dtype)
    x[0, 0, 0] = np.nan if fill == 0.5 else x[0, 0, 0]
    return x


@dataclass(frozen=True)
class Case:
    id: str
    did: str  # what the user did, as the catalogue says it
    args: tuple[str, ...]
    message: str  # what stderr says after "mnist-train: error: "; {dir} {port} {data} are filled in per run
    env: dict[str, str] = field(default_factory=dict)
    data: Callable[[Path], str] | None = None
    s3: bool = False  # runs against a moto server with IAM checks on
    code: int = 2
    process: bool = False  # run as `python -m job train` in a process of its own


TRAIN = ("--dataset", "mnist-sample", "--models", "mlp")
BASE_ENV = {"MNIST_TRAIN_EPOCHS": "1"}  # through the env twin, so a case's flag or env var still wins
CASES = [
    # flags
    Case("epochs-zero", "`--epochs 0`", ("--epochs", "0"), "--epochs must be between 1 and 1000, got 0", process=True),
    Case("epochs-negative", "`--epochs -3`", ("--epochs", "-3"), "--epochs must be between 1 and 1000, got -3"),
    Case("epochs-huge", "`--epochs 100000`", ("--epochs", "100000"), "--epochs must be between 1 and 1000, got 100000"),
    Case("epochs-text", "`--epochs ten`", ("--epochs", "ten"), "argument --epochs: invalid int value: 'ten'",
         process=True),
    Case("epochs-env", "`MNIST_TRAIN_EPOCHS=0` in the environment", (), "--epochs must be between 1 and 1000, got 0",
         env={"MNIST_TRAIN_EPOCHS": "0"}),
    Case("workers-env", "`MNIST_TRAIN_WORKERS=two` in the environment", (),
         "argument --workers: invalid int value: 'two'", env={"MNIST_TRAIN_WORKERS": "two"}),
    Case("jit-on-cpu", "`--jit-compile` without `--gpu`", ("--jit-compile",),
         "--jit-compile needs --gpu: XLA cannot compile the CPU all-reduce of MultiWorkerMirroredStrategy"),
    Case("gpu-env", "`MNIST_TRAIN_GPU=maybe` in the environment", (), "MNIST_TRAIN_GPU: 'maybe' is not a boolean",
         env={"MNIST_TRAIN_GPU": "maybe"}),
    Case("workers-negative", "`--workers -1`", ("--workers", "-1"), "--workers must be between 0 and 1024, got -1"),
    Case("in-process-on-cluster", "`--workers 0 --address 10.0.0.1:6379` (this process cannot join a cluster)",
         ("--workers", "0", "--address", "10.0.0.1:6379"),
         "--workers 0 trains in this process (Ray Train's local mode) and cannot join --address; "
         "give --workers 1 or more"),
    Case("batch-below-workers", "`--workers 4 --batch-size 2` (a batch smaller than the worker count)",
         ("--workers", "4", "--batch-size", "2"), "--batch-size 2 does not split evenly over 4 workers"),
    Case("batch-above-data", "`--batch-size 6000` on 4,000 training images",
         ("--batch-size", "6000"), "--batch-size 6000 is larger than the 4000 training examples of mnist-sample"),
    Case("unknown-model", "`--models mlp,resnet`", ("--models", "mlp,resnet"),
         "unknown model 'resnet' in --models; pick from mlp,cnn,large_cnn,deep_bn_cnn"),
    Case("recipe-batch-split", "`--models deep_bn_cnn --workers 7` (its default batch 120 does not split 7 ways)",
         ("--models", "deep_bn_cnn", "--workers", "7"),
         "deep_bn_cnn's default global batch 120 does not split evenly over 7 workers; pass --batch-size with a "
         "multiple of 7"),
    Case("ensemble-zero", "`--ensemble 0`", ("--ensemble", "0"),
         "--ensemble must be between 1 and 20, got 0 (1 = a single model)"),
    Case("ensemble-seeds", "`--ensemble 3 --seed 2147483646` (member seeds past the largest seed)",
         ("--ensemble", "3", "--seed", "2147483646"), "--seed 2147483646 leaves no room for 3 member seeds"),
    Case("unknown-dataset", "`--dataset cifar10`", ("--dataset", "cifar10"),
         "unknown --dataset 'cifar10'; pick from mnist, mnist-sample, fashion_mnist or give --data-uri"),
    Case("metrics-port-range", "`--metrics-port 70000`", ("--metrics-port", "70000"),
         "--metrics-port must be between 0 and 65535, got 70000"),
    Case("run-name", "`--run-name 'My Run'`", ("--run-name", "My Run"), "--run-name 'My Run' is not valid"),
    # data files
    Case("corrupt-gzip", "`--data-uri` an IDX folder whose train-images .gz is not gzip", ("--data-uri", "{data}"),
         "{data}/train-images-idx3-ubyte.gz: not a valid gzip file", data=_idx_folder(b"this is not gzip"),
         process=True),
    Case("truncated-idx", "`--data-uri` an IDX folder whose images file is cut short", ("--data-uri", "{data}"),
         "{data}/train-images-idx3-ubyte.gz: header says shape (60000, 28, 28) but holds 10 bytes (truncated?)",
         data=_idx_folder(gzip.compress(b"\0\0\x08\x03" + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                                        + b"0123456789"))),
    Case("truncated-npz", "`--data-uri` a truncated .npz", ("--data-uri", "{data}"),
         "{data}: not a readable .npz file", data=_truncated_npz),
    Case("npz-missing-array", "`--data-uri` an .npz without y_test", ("--data-uri", "{data}"),
         "{data}: missing arrays y_test; an .npz needs x_train, y_train, x_test, y_test", data=_npz(y_test=None)),
    Case("wrong-shape", "`--data-uri` an .npz of 32x32 images", ("--data-uri", "{data}"),
         "{data}: x_train has shape (400, 32, 32); expected (N, 28, 28) images",
         data=_npz(x_train=np.zeros((400, 32, 32), np.uint8))),
    Case("label-count", "`--data-uri` an .npz with fewer labels than images", ("--data-uri", "{data}"),
         "{data}: y_train has shape (399,); expected (400,), one label per image",
         data=_npz(y_train=np.zeros(399, np.uint8))),
    Case("labels-range", "`--data-uri` an .npz with labels 0-10", ("--data-uri", "{data}"),
         "{data}: y_train has labels in 0..10; labels must be digits 0-9",
         data=_npz(y_train=np.arange(400, dtype=np.int64) % 11)),
    Case("empty-test", "`--data-uri` an .npz with an empty test set", ("--data-uri", "{data}"),
         "{data}: x_test is empty; a data set needs training and test examples",
         data=_npz(x_test=np.zeros((0, 28, 28), np.uint8), y_test=np.zeros(0, np.uint8))),
    Case("nan-pixels", "`--data-uri` an .npz with a NaN pixel", ("--data-uri", "{data}"),
         "{data}: x_train holds NaN or infinite pixels; clean the data first",
         data=_npz(x_train=_wrong("float32", 0.5))),
    Case("float-0-255", "`--data-uri` an .npz of float pixels in 0-255", ("--data-uri", "{data}"),
         "{data}: x_train is float64 in 255..255; float pixels must be scaled to 0-1",
         data=_npz(x_train=_wrong("float64", 255.0))),
    # URIs
    Case("data-scheme", "`--data-uri hdfs://nn/mnist.npz`", ("--data-uri", "hdfs://nn/mnist.npz"),
         "--data-uri 'hdfs://nn/mnist.npz' has the unsupported scheme 'hdfs://'; use a local path, file://, s3:// or gs://"),
    Case("output-scheme", "`--output ftp://host/run`", ("--output", "ftp://host/run"),
         "--output 'ftp://host/run' has the unsupported scheme 'ftp://'"),
    Case("uri-credentials", "`--output s3://KEY:SECRET@bucket/run` (credentials inside the URI)",
         ("--output", "s3://AKIAEXAMPLE:hunter2@bucket/run"),
         "--output s3://<hidden>@... carries credentials in the URI; remove them and set AWS_ACCESS_KEY_ID"),
    Case("data-missing", "`--data-uri` a file that does not exist", ("--data-uri", "{dir}/nope.npz"),
         "--data-uri {dir}/nope.npz does not exist; give an .npz file or a folder of IDX .gz files"),
    Case("s3-missing-bucket", "`--output s3://missing/run`, a bucket that does not exist",
         ("--output", "s3://missing/run"), "--output s3://missing/run is not writable: ", s3=True),
    Case("s3-no-permission", "`--output s3://other/run`, a bucket the credentials may not write",
         ("--output", "s3://other/run"), "cannot read s3://other/run/results.json: When getting information for key "
         "'run/results.json' in bucket 'other': AWS Error ACCESS_DENIED", s3=True),
    Case("s3-wrong-key", "`--output s3://allowed/run` with a wrong AWS_SECRET_ACCESS_KEY",
         ("--output", "s3://allowed/run"), "cannot read s3://allowed/run/results.json: When getting information for "
         "key 'run/results.json' in bucket 'allowed': AWS Error ACCESS_DENIED", env={"AWS_SECRET_ACCESS_KEY": "wrong"},
         s3=True),
    Case("s3-data-no-permission", "`--data-uri s3://other/data.npz`, a bucket the credentials may not read",
         ("--data-uri", "s3://other/data.npz", "--output", "s3://allowed/run"), "cannot read s3://other/data.npz: ",
         s3=True),
    # output
    Case("output-not-writable", "`--output` below a regular file (not writable)", ("--output", "{dir}/file/out"),
         "--output {dir}/file/out is not writable: "),
    Case("output-finished", "`--output` that already holds a finished run (results.json)",
         ("--output", "{dir}/done"), "{dir}/done already holds a finished run (results.json); pass --overwrite"),
    Case("pushgateway-credentials", "`--pushgateway http://user:password@host:9091`",
         ("--pushgateway", "http://user:secret@gateway:9091"),
         "--pushgateway http://<hidden>@... carries credentials, which would show in logs and in the chart's "
         "entrypoint; use a Pushgateway that needs none (in the cluster, behind a NetworkPolicy)"),
    # cluster
    Case("address-unreachable", "`--address 127.0.0.1:PORT` where no Ray listens", ("--address", "127.0.0.1:{port}"),
         "cannot reach the Ray cluster at --address 127.0.0.1:{port} (Connection refused); check the address",
         process=True),
    Case("gpu-none", "`--gpu` on a machine without GPUs (in this process, the local default)", ("--gpu",),
         "--gpu was given but TensorFlow sees no GPU: no CUDA device or CUDA libraries found", process=True),
    Case("gpu-none-ray", "`--gpu --workers 1` on a machine without GPUs (a local Ray)", ("--gpu", "--workers", "1"),
         "--gpu asks for 1 GPU but the Ray cluster has 0; run on GPU nodes or drop --gpu", process=True),
]  # fmt: skip

# Faults and behaviours that need a whole run; each row names the test that shows it.
FAULTS = [
    ("`--address HOST:PORT` (or `RAY_ADDRESS`) of a token-auth cluster, with another cluster's token", "exit 2 in "
     "under a second: `the Ray cluster at --address HOST:PORT rejected the token in RAY_AUTH_TOKEN; set "
     "RAY_AUTH_TOKEN to that cluster's token (...)` (or names the token file it came from; never the token)",
     "tests/test_ray_submit.py::test_joining_with_another_clusters_token_fails_at_once_naming_where_it_came_from"),
    ("`--address HOST:PORT` where something answers that is not a Ray GCS (e.g. the dashboard's port)", "exit 2 "
     "after about 11 s: `--address HOST:PORT answers, but not as a Ray cluster (no reply from a GCS); give the "
     "head's GCS address, port 6379 unless changed ...`", "tests/test_ray_submit.py::test_an_address_that_is_not_a_"
     "ray_gcs_fails_with_one_line"),
    ("`--address` (a cluster run) with `--dataset mnist` and no way to download it", "exit before training: `full "
     "MNIST could not be loaded (...) and a cluster run never falls back to the 5,000-digit sample: pass --data-uri "
     "s3://BUCKET/mnist.npz ...`; local runs fall back to the sample with a banner",
     "tests/test_data.py::test_a_cluster_run_never_falls_back_to_the_sample"),
    ("`--gpu`, and Ray has GPUs that TensorFlow cannot use (no CUDA libraries, no driver)", "exit 1 within "
     "seconds: `run failed: Ray assigned GPU 0 to this worker but TensorFlow sees no GPU: ...; refusing to train on "
     "CPU`", "tests/test_gpu_paths.py::test_gpu_that_tensorflow_cannot_see_fails_fast_with_one_line"),
    ("`--address` (a cluster of several nodes) with `--output` (or serve's `--model-uri`) on the driver's disk",
     "exit 2 in seconds, before training: `--output PATH is on this machine's disk, which the Ray node(s) at IP "
     "cannot see; use s3://, gs:// or a file system that every node mounts`; a path every node mounts works",
     "tests/test_node_local_paths.py::test_an_output_on_the_drivers_disk_is_refused_before_training"),
    ("`--overwrite`, and the new run fails or is killed", "the finished run at `--output` stays whole (its "
     "results.json and models) until the new run is final; the same command resumes the new run; afterwards "
     "nothing of the old run is left that the new results.json does not describe",
     "tests/test_overwrite.py::test_an_overwrite_killed_mid_way_keeps_the_finished_run_until_its_rerun_is_final"),
    ("`--metrics-port P` while P is taken", "not an error: each worker takes the next free port and logs "
     "`rank N: port P is in use, took the next free one` and `rank N: serving /metrics on :Q`",
     "tests/test_resume.py::test_busy_metrics_port_falls_back_to_the_next_free_one"),
    ("a training worker is killed (OOM, preemption)", "not an error: Ray Train restarts the workers (up to "
     "`--max-failures`), they print `resuming from checkpoint: ... mlp at epoch N` and finish; each epoch is in "
     "results.json once", "tests/test_resume.py::test_run_survives_a_killed_worker_and_resumes_from_its_checkpoint"),
    ("the driver dies; the same command is run again", "`resuming from checkpoint: ...`; checkpointed epochs are "
     "not trained again", "tests/test_s3_runs.py::test_killed_driver_rerun_resumes_from_the_bucket"),
    ("the object store is down at the final upload", "exit 1 after the retries: `run failed: cannot write "
     "s3://.../curves.png after N attempts: ...`; no results.json; the same command later completes the run from "
     "its final checkpoint", "tests/test_s3_runs.py::test_overwrite_retrains_and_a_dark_store_at_the_final_upload_"
     "leaves_nothing_final"),
]  # fmt: skip


def render() -> str:
    head = ["# What a bad input gets you", "",
            "Every row is a test in `tests/test_bad_inputs.py` that runs `mnist-train train` with the input and checks "
            "the message (after `mnist-train: error: `), the exit code, and that no `results.json` was written. "
            "`<dir>`, `<port>` stand for the test's path and port. Generated by `python tests/test_bad_inputs.py`.",
            "", "| # | What you did | What you get | Exit |", "| --- | --- | --- | --- |"]  # fmt: skip
    rows = [f"| {i} | {c.did} | `{_placeholders(c.message)}` | {c.code} |" for i, c in enumerate(CASES, start=1)]
    faults = ["", "## Faults during a run", "", "| What happened | What you get | Test |", "| --- | --- | --- |"]
    faults += [f"| {what} | {result} | `{test}` |" for what, result, test in FAULTS]
    return "\n".join(head + rows + faults) + "\n"


def _placeholders(text: str) -> str:
    text = text.replace("{data}", "<dir>/data").replace("{dir}", "<dir>")
    return text.replace("{port}", "<port>").replace("|", "\\|")


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[MotoServer, dict[str, str]]]:
    """moto with IAM checks on: the key may use bucket 'allowed' (and 'missing', which does not exist), not 'other'."""
    server = MotoServer()
    try:
        fs = server.filesystem()
        for bucket in ("allowed", "other"):
            fs.create_dir(bucket)
        key, secret = server.enable_auth("allowed", "missing")
        yield server, server.env(key, secret)
    finally:
        server.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch, capsys) -> None:
    fill = {"dir": str(tmp_path), "port": str(free_port()), "data": ""}
    if case.data is not None:
        (tmp_path / "in").mkdir()
        fill["data"] = case.data(tmp_path / "in")
    (tmp_path / "file").write_text("a regular file")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text('{"status": "succeeded"}')
    env = dict(BASE_ENV)
    if case.s3:
        server, s3_env = request.getfixturevalue("moto")
        env.update(s3_env)
    env.update({k: v.format(**fill) for k, v in case.env.items()})
    args = [a.format(**fill) for a in case.args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out")]
    argv = ["train", *TRAIN, *args]
    code, stdout, stderr = (_in_process if not case.process else _in_a_process)(argv, env, monkeypatch, capsys)
    errors = [line for line in stderr.splitlines() if line.startswith("mnist-train: error: ")]
    assert len(errors) == 1, stderr[-2000:]
    assert errors[0].startswith("mnist-train: error: " + case.message.format(**fill)), errors[0]
    assert code == case.code
    if case.id != "gpu-none-ray":  # one line, nothing else: in this process TensorFlow's chatter went to the log
        assert stderr == errors[0] + "\n"
    if not case.id.startswith("gpu-none"):  # the others stop before the plan is printed
        assert stdout == ""
    assert not (tmp_path / "out" / "results.json").exists()
    assert (tmp_path / "done" / "results.json").read_text() == '{"status": "succeeded"}'
    if case.s3:
        keys = server.keys("allowed", s3_env["AWS_ACCESS_KEY_ID"], s3_env["AWS_SECRET_ACCESS_KEY"])
        assert not [k for k in keys if k.endswith("results.json")]  # nobody may write 'other'; 'missing' is missing


def _in_process(argv: list[str], env: dict[str, str], monkeypatch, capsys) -> tuple[int, str, str]:
    from job import cli

    for name in [n for n in os.environ if n.startswith(FOREIGN_ENV)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(ROOT)
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's way out
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _in_a_process(argv: list[str], env: dict[str, str], *_: object) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
    out = subprocess.run([sys.executable, "-m", "job", *argv], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**clean, **env})  # fmt: skip
    return out.returncode, out.stdout, out.stderr


def test_catalogue_matches_the_tests() -> None:
    assert len(CASES) >= 20
    assert DOC.read_text() == render(), "docs/errors.md is stale; run: python tests/test_bad_inputs.py"


if __name__ == "__main__":
    DOC.write_text(render())

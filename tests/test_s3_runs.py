"""Real runs against a real S3 API (moto server on loopback), data and output both in the bucket.

1. The driver is SIGKILLed (whole process group) in epoch 2; the same command run again resumes from the checkpoints
   Ray Train keeps in the bucket and finishes with every epoch once. Distinctive fake credentials are then looked for
   in every line printed, in results.json, in every object written and in the /metrics text.
2. The same command with --overwrite starts again from epoch 1; the store goes dark (a TCP proxy in front of moto stops
   answering) at the first artifact upload: the job exits 1 after its retries, naming the URI, and leaves no
   results.json. With the store back, the same command finishes from the final checkpoint without training again.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from live_run import SNAPSHOT, CuttableProxy, LiveRun, MotoServer, epochs_printed, wait_registered
from promlib import free_port_range

from job import data

KEY_ID, SECRET = "AKIARELIABLE0TEST4711", "Zebra-Quokka-s3cr3t-fake-0815"
BUCKET, RUN = "runs", "s3-run"
OUTPUT, DATA = f"s3://{BUCKET}/{RUN}", f"s3://{BUCKET}/data/mnist-sample.npz"
# Enough that the kill after epoch 2 lands mid-run: with 4, at 0.6 s an epoch, all 4 were done before the kill
# (the resumed run then had nothing to train and served no epoch metrics).
EPOCHS = 12


RUN_LOG: list[Path] = []  # the runs' log file (their --output is remote), set by the moto fixture


def command(*extra: str) -> list[str]:
    return ["--data-uri", DATA, "--models", "mlp", "--workers", "2", "--output", OUTPUT, "--run-name", RUN,
            "--checkpoint-interval", "0", "--log-file", str(RUN_LOG[0]), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    RUN_LOG[:] = [tmp_path_factory.mktemp("s3-run-log") / "run.log"]
    server = MotoServer()
    try:
        fs = server.filesystem()
        fs.create_dir(BUCKET)
        buffer = io.BytesIO()
        sample = data.mnist_sample()
        np.savez_compressed(buffer, **{k: getattr(sample, k) for k in data.SPLITS})
        with fs.open_output_stream(DATA.removeprefix("s3://")) as stream:
            stream.write(buffer.getvalue())
        yield server
    finally:
        server.stop()


def scrape_until_exit(run: LiveRun, ports: list[int]) -> str:
    """The last /metrics page the chief served that holds an epoch's values (its server stops when training ends).

    Polled from the start on every port a worker may take: a resumed run can finish its last epochs before the
    worker's "serving /metrics" line has travelled through Ray's log forwarding.
    """
    last = ""
    while run.process.poll() is None:
        for port in ports:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
            except (OSError, http.client.HTTPException):  # not up yet, or a Ray process that took the port first
                page = ""
            last = page if "mnist_train_epoch_loss{" in page and 'rank="0"' in page else last
        time.sleep(0.1)
    assert last, "never scraped an epoch's metrics from the chief"
    return last


@pytest.fixture(scope="module")
def resumed(moto: MotoServer) -> dict:
    """Run, kill the driver once epoch 2's checkpoint is in the bucket, run the same command again."""
    port = free_port_range(2)  # the two workers take the port and the next one
    env = {**moto.env(KEY_ID, SECRET), "MNIST_TRAIN_METRICS_PORT": str(port)}
    with LiveRun(*command("--epochs", str(EPOCHS)), env=env) as first:
        first.wait_for(rf"mlp\s+epoch\s+2/{EPOCHS}")
        snapshot = f"{BUCKET}/{RUN}/checkpoints/{RUN}/{SNAPSHOT}"
        wait_registered(lambda: moto.filesystem().open_input_stream(snapshot).read(), 2)
        first.kill()
    left = moto.keys(f"{BUCKET}/{RUN}")
    with LiveRun(*command("--epochs", str(EPOCHS)), env=env) as second:
        scraped = scrape_until_exit(second, [port, port + 1])  # the two workers take the port and the next one
        code = second.finish()
    return {"first": first, "second": second, "code": code, "left": left, "metrics": scraped}


def test_killed_driver_rerun_resumes_from_the_bucket(moto: MotoServer, resumed: dict) -> None:
    first, second = resumed["first"], resumed["second"]
    assert f"{BUCKET}/{RUN}/results.json" not in resumed["left"]  # the killed run left nothing final
    assert resumed["code"] == 0, second.tail()
    at = int(second.wait_for(r"resuming from checkpoint: finished none, mlp at epoch (\d)", timeout=1)[1])
    before, after = epochs_printed(first.output, EPOCHS), epochs_printed(second.output, EPOCHS)
    # The first run trained 1..at (its checkpoint says so); its progress lines may lag the checkpoint by an epoch, as
    # Ray forwards worker logs asynchronously, so they are only checked to be in order from 1.
    assert at >= 2 and len(before) >= 2 and before == list(range(1, len(before) + 1))
    assert after == list(range(at + 1, EPOCHS + 1))  # nothing the first run checkpointed is trained again
    results = json.loads(moto.filesystem().open_input_stream(f"{BUCKET}/{RUN}/results.json").read())
    mlp = results["models"]["mlp"]
    assert [r["epoch"] for r in mlp["history"]] == list(range(1, EPOCHS + 1)) and 0 < mlp["test_error"] < 0.15
    assert results["dataset"]["source"] == DATA and results["dataset"]["train_samples"] == 4000
    assert {f"{BUCKET}/{RUN}/{p}" for p in ("results.json", "curves.png", "mlp/model.keras", "mlp/history.csv")} <= set(
        moto.keys(f"{BUCKET}/{RUN}")
    )
    print(f"\ndriver kill: first run printed {before} ({first.seconds:.0f}s); rerun resumed at epoch {at}, "
          f"trained {after} ({second.seconds:.0f}s)")  # fmt: skip


def test_credentials_appear_nowhere(moto: MotoServer, resumed: dict) -> None:
    assert "mnist_train_epochs_completed" in resumed["metrics"]
    texts = {"first run output": resumed["first"].output, "rerun output": resumed["second"].output,
             "/metrics": resumed["metrics"], "the runs' log file": RUN_LOG[0].read_text()}  # fmt: skip
    fs = moto.filesystem()
    for key in moto.keys(f"{BUCKET}/{RUN}"):
        texts[key] = fs.open_input_stream(key).read().decode("latin-1")
    assert len(texts) > 10
    for name, text in texts.items():
        assert KEY_ID not in text and SECRET not in text, f"a credential leaked into {name}"


def test_overwrite_retrains_and_a_dark_store_at_the_final_upload_leaves_nothing_final(
    moto: MotoServer, resumed: dict
) -> None:
    proxy = CuttableProxy(moto.port, cut_on=rf"PUT /{BUCKET}/{RUN}/(?!checkpoints/|\.write-probe)\w[^ ]*")
    env = {**moto.env(KEY_ID, SECRET), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
    again = command("--epochs", "2", "--overwrite", "--storage-retries", "2")
    with proxy, LiveRun(*again, env=env) as run:
        code = run.finish()
    assert proxy.cut_request is not None, run.tail()
    assert "resuming from checkpoint" not in run.output and epochs_printed(run.output, 2) == [1, 2]
    assert code == 1, run.tail()
    errors = [line for line in run.lines if line.startswith("mnist-train: error:")]
    assert len(errors) == 1 and re.match(
        rf"mnist-train: error: run failed: cannot write {OUTPUT}/\S+ after 2 attempts: ", errors[0]
    ), run.tail()
    assert f"{BUCKET}/{RUN}/results.json" not in moto.keys(f"{BUCKET}/{RUN}")  # the old one went with --overwrite

    # The store is back: the same command completes the run.
    with CuttableProxy(moto.port, port=proxy.port), LiveRun(*again, env=env) as rerun:
        rerun_code = rerun.finish()
    assert rerun_code == 0, rerun.tail()
    assert "resuming from checkpoint: finished {'mlp': 2}" in rerun.output and epochs_printed(rerun.output, 2) == []
    results = json.loads(moto.filesystem().open_input_stream(f"{BUCKET}/{RUN}/results.json").read())
    assert [r["epoch"] for r in results["models"]["mlp"]["history"]] == [1, 2] and results["epochs"] == 2
    print(f"\nupload fault: cut at {proxy.cut_request!r}, failed run {run.seconds:.0f}s, "
          f"completing rerun {rerun.seconds:.0f}s")  # fmt: skip

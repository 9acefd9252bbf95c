"""`mnist-train serve` against a real local Ray Serve: the answers are the saved model's, bad input gets a 400 with one
line and leaves the replicas serving, the metrics reach Ray's /metrics, a killed replica comes back, and a missing
model fails at start.

One server (2 replicas) serves the cnn of the shared sample run for the whole module; the replica-kill test runs last.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from live_run import alive
from ray_head import ray_head

from support import ROOT, free_port, remove_ray_tmp, run_job

MAX_DIGITS = 200
REPLICA = "ServeReplica:mnist:digits"


class Server:
    """`python -m job serve ARGS` in its own process group, its console read as it comes."""

    def __init__(self, *args: str, ray_tmp: str, tmpdir: str, open_files: int | None = None) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.lines: list[str] = []
        limit = open_files and (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files)))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "job", "serve", "--port", str(self.port), "--metrics-port", str(self.metrics_port),
             *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True,
            env={**os.environ, "RAY_TMPDIR": ray_tmp, "TMPDIR": tmpdir}, preexec_fn=limit or None,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with self.process.stdout:  # closed at the server's exit, when the pipe ends
            self.lines.extend(line.rstrip("\n") for line in self.process.stdout)

    def wait_serving(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.startswith("serving ") for line in self.lines):
            assert self.process.poll() is None, "\n".join(self.lines)
            assert time.monotonic() < deadline, "no 'serving' line:\n" + "\n".join(self.lines)
            time.sleep(0.5)

    def post(self, body: bytes, content_type: str = "application/json", timeout: float = 60) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/predict", data=body, method="POST",
                                         headers={"Content-Type": content_type})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, _json_or_text(err.read())

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def replicas(self) -> list[psutil.Process]:
        found = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if REPLICA in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                pass
        return found

    def stop(self) -> int | None:
        """Ctrl-C, as a user stops it; the process group is killed if it does not go within 60 s."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            return None


def _json_or_text(body: bytes) -> dict:
    """Our errors are JSON; Ray Serve's proxy answers a lost replica's request in plain text."""
    try:
        return json.loads(body)
    except ValueError:
        return {"text": body.decode(errors="replace")}


def digits_json(x: np.ndarray) -> bytes:
    return json.dumps(x.astype(int).tolist()).encode()


@pytest.fixture(scope="module")
def sample():
    from job.data import load

    return load("mnist-sample", None)


@pytest.fixture(scope="module")
def server(sample_run, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths must stay short
    tmpdir = tmp_path_factory.mktemp("serve-tmp")
    server = Server("--model-uri", str(sample_run.output / "cnn"), "--replicas", "2", "--max-digits", str(MAX_DIGITS),
                    ray_tmp=ray_tmp, tmpdir=str(tmpdir))  # fmt: skip
    try:
        server.wait_serving()
        yield server
    finally:
        code = server.stop()
        left = sorted(p.name for p in Path(ray_tmp).iterdir())  # Ray's sessions, and HAProxy's folder until the end
        remove_ray_tmp(ray_tmp)
        assert code == 0, "\n".join(server.lines)
        assert sorted(p.name for p in tmpdir.iterdir()) == [], "the server left files in its TMPDIR"
        assert left == ["ray"], f"the server left {left} beside Ray's sessions"


def test_haproxy_takes_the_requests_by_default(server) -> None:
    banner = next(line for line in server.lines if line.startswith("serving "))
    assert "2 replicas, batches of up to 32 requests (5 ms wait), HAProxy in front" in banner, banner
    haproxy = [p for p in psutil.Process(server.process.pid).children(recursive=True) if p.name() == "haproxy"]
    assert haproxy and any(c.laddr.port == server.port for c in haproxy[0].net_connections("tcp")), haproxy


def test_serves_pythons_proxy_the_same_answers_and_does_not_hold_a_lone_request(
    server, sample_run, sample, tmp_path
) -> None:
    """--no-haproxy: Serve's own proxy. A batch waits to fill only while other requests are in the replica, so
    one client's requests are answered at once even with a 1 s --batch-wait-ms."""
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    plain = Server("--model-uri", str(sample_run.output / "cnn"), "--no-haproxy", "--batch-wait-ms", "1000",
                   ray_tmp=ray_tmp, tmpdir=str(tmp_path))  # fmt: skip
    try:
        plain.wait_serving()
        body = digits_json(sample.x_test[:20])
        (code, answer), (_, expected) = plain.post(body), server.post(body)
        seconds = []
        for digit in sample.x_test[:5]:
            started = time.monotonic()
            assert plain.post(digits_json(digit))[0] == 200
            seconds.append(time.monotonic() - started)
    finally:
        stopped = plain.stop()
        remove_ray_tmp(ray_tmp)
    banner = next(line for line in plain.lines if line.startswith("serving "))
    assert "1 replica, batches of up to 32 requests (1000 ms wait), Serve's Python proxy in front" in banner, banner
    assert code == 200 and stopped == 0, plain.lines
    assert [p["class"] for p in answer["predictions"]] == [p["class"] for p in expected["predictions"]]
    np.testing.assert_allclose([p["probabilities"] for p in answer["predictions"]],
                               [p["probabilities"] for p in expected["predictions"]], atol=1e-6)  # fmt: skip
    assert max(seconds) < 0.5, f"a lone request waited for a batch: {seconds}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_served_answers_are_the_saved_models_on_every_test_digit(server, sample_run, sample) -> None:
    from job.evaluate import load_model, read_model
    from job.models import features

    classes, probabilities = [], []
    for start in range(0, len(sample.y_test), 100):
        code, answer = server.post(digits_json(sample.x_test[start : start + 100]))
        assert code == 200, answer
        assert answer["model"] == "cnn"
        classes += [p["class"] for p in answer["predictions"]]
        probabilities += [p["probabilities"] for p in answer["predictions"]]
    model = load_model(read_model(str(sample_run.output / "cnn")))
    expected = model.predict(features(sample.x_test, model), verbose=0)
    np.testing.assert_allclose(np.array(probabilities), expected, atol=1e-5)
    assert classes == expected.argmax(axis=1).tolist()
    error = float((np.array(classes) != sample.y_test).mean())
    results = json.loads((sample_run.output / "results.json").read_text())
    assert error == pytest.approx(results["models"]["cnn"]["test_error"], abs=1e-9)  # what `evaluate` prints
    out = run_job("evaluate", "--model-uri", str(sample_run.output / "cnn"), "--dataset", "mnist-sample")
    assert f"error {error * 100:.2f}%" in out.stdout, out.stdout + out.stderr


def test_one_digit_as_json_rows_flat_pixels_or_png_gets_the_same_answer(server, sample) -> None:
    from PIL import Image

    digit = sample.x_test[0]
    png = io.BytesIO()
    Image.fromarray(digit).save(png, format="PNG")
    answers = [
        server.post(digits_json(digit)),
        server.post(digits_json(digit.reshape(784))),
        server.post(json.dumps({"instances": [digit.tolist()]}).encode()),
        server.post(png.getvalue(), "image/png"),
    ]
    assert [code for code, _ in answers] == [200] * 4, answers
    first = answers[0][1]["predictions"]
    assert len(first) == 1 and len(first[0]["probabilities"]) == 10
    assert sum(first[0]["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    for _, answer in answers[1:]:
        assert answer["predictions"][0]["class"] == first[0]["class"]
        np.testing.assert_allclose(answer["predictions"][0]["probabilities"], first[0]["probabilities"], atol=1e-6)


def _png(size: tuple[int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", size).save(out, format="PNG")
    return out.getvalue()


BAD = {
    "empty body": (b"", "application/json", r"^empty body"),
    "wrong shape": (b"[[1, 2], [3, 4]]", "application/json", r"shape \[2, 2\] is not digits"),
    "ragged rows": (b"[[1, 2], [3]]", "application/json", r"not a rectangular array"),
    "text": (b'[["a"]]', "application/json", r"not a rectangular array"),
    "not JSON": (b"hello", "application/json", r"neither JSON nor a PNG"),
    "above 255": (json.dumps([[256] * 28] * 28).encode(), "application/json", r"between 0 and 255, got 256 to 256"),
    "negative": (json.dumps([[-1] * 28] * 28).encode(), "application/json", r"between 0 and 255, got -1 to -1"),
    "NaN": (b"[" + b",".join([b"NaN"] * 784) + b"]", "application/json", r"found NaN"),
    "empty batch": (b"[]", "application/json", r"batch is empty"),
    "batch too large": (json.dumps([[[0] * 28] * 28] * (MAX_DIGITS + 1)).encode(), "application/json",
                        rf"{MAX_DIGITS + 1} digits in one request, over --max-digits {MAX_DIGITS}"),
    "not an image": (b"GIF89a not a png", "image/png", r"not a readable PNG"),
    "image 20x28": (_png((20, 28)), "image/png", r"20x28 pixels; send a 28x28 digit"),
    "object without instances": (b'{"digits": []}', "application/json", r'under "instances"'),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_gets_400_with_one_line_and_the_server_keeps_serving(server, case) -> None:
    body, content_type, message = BAD[case]
    code, answer = server.post(body, content_type)
    assert code == 400, answer
    assert re.search(message, answer["error"]), answer["error"]
    assert "\n" not in answer["error"]
    assert server.get("/healthz") == (200, {"status": "ok", "model": "cnn"})


def test_a_body_over_the_size_limit_is_refused_before_parsing(server) -> None:
    code, answer = server.post(b"[" + b" " * (MAX_DIGITS * 784 * 24) + b"]")
    assert code == 400 and "bytes is over the" in answer["error"], answer


def test_unknown_routes_and_methods_say_where_to_go(server) -> None:
    assert server.get("/nowhere") == (404, {"error": "no route /nowhere; POST digits to /predict, GET /healthz"})
    assert server.get("/predict") == (405, {"error": "POST the digits to /predict"})


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return response.read().decode()


def _value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_requests_latency_and_batch_sizes_reach_rays_metrics(server, sample) -> None:
    before = _scrape(server.metrics_port)
    ok_before = _value(before, "ray_mnist_serve_requests_total", code="200", model="cnn")
    bad_before = _value(before, "ray_mnist_serve_requests_total", code="400", model="cnn")
    for _ in range(5):
        assert server.post(digits_json(sample.x_test[:3]))[0] == 200
    assert server.post(b"")[0] == 400

    def expected(text: str) -> list[bool]:
        ok = _value(text, "ray_mnist_serve_requests_total", code="200", model="cnn")
        return [
            ok >= ok_before + 5,
            _value(text, "ray_mnist_serve_requests_total", code="400", model="cnn") >= bad_before + 1,
            _value(text, "ray_mnist_serve_request_duration_seconds_count", code="200", model="cnn") >= ok_before + 5,
            _value(text, "ray_mnist_serve_batch_size_bucket", model="cnn", le="+Inf") >= 1,
            "ray_serve_num_http_requests_total" in text,  # Ray Serve's own, beside ours
        ]

    deadline = time.monotonic() + 60  # each process exports every 2 s here, each on its own clock
    while not all(expected(text := _scrape(server.metrics_port))) and time.monotonic() < deadline:
        time.sleep(1)
    assert all(expected(text)), (expected(text), text[-2000:])


def test_a_second_server_takes_ports_of_its_own_and_sigterm_stops_it_leaving_nothing(
    server, sample_run, sample, tmp_path
) -> None:
    """Serve's HAProxy listens on 9101 (metrics) and 8404 (stats) by default, so a second `mnist-train serve` on the
    machine failed while the first ran; each now takes free ones. SIGTERM to the second one's process group (as
    Kubernetes, systemd and CI stop it) is a stop, as Ctrl-C: before, ray.init's handler aborted it with a native
    stack trace (exit -6) and HAProxy stayed, holding its ports.

    Its batches wait 400 ms: a batch closes that long after its first request, however many keep arriving (each
    arrival sets the wait of the next batch, never of the one gathering). It may open 4,096 files, as in many
    containers: HAProxy, which asks for 10,276 with Serve's defaults, stopped there; it now gets what fits."""
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    second = Server("--model-uri", str(sample_run.output / "cnn"), "--batch-wait-ms", "400", ray_tmp=ray_tmp,
                    tmpdir=str(tmp_path), open_files=4096)  # fmt: skip
    try:
        second.wait_serving()
        code, answer = second.post(digits_json(sample.x_test[:2]))
        answered = _answer_times(second, digits_json(sample.x_test[:1]), [0, 0, *(0.1 * i for i in range(1, 13))])
        group = {pid: " ".join(_cmdline(pid))[:120] for pid in _group(second.process.pid)}
        assert any("haproxy" in line for line in group.values()), second.lines
        os.killpg(second.process.pid, signal.SIGTERM)
        stopped = second.process.wait(60)
        deadline = time.monotonic() + 40
        while (left := [pid for pid in group if alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if second.process.poll() is None:
            os.killpg(second.process.pid, signal.SIGKILL)
        remove_ray_tmp(ray_tmp)
    assert code == 200 and len(answer["predictions"]) == 2, second.lines
    assert stopped == 0 and second.lines[-1] == "stopping", second.lines
    assert not [line for line in second.lines if re.search(r"Traceback|SIGTERM received|\*\*\* ", line)], second.lines
    assert not left, f"processes left after SIGTERM: {[(group[pid], _status(pid)) for pid in left]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert server.post(digits_json(sample.x_test[:1]))[0] == 200  # the first one serves on
    # The first two arrive together, so the replica waits for more: closed at 0.4 s, not 0.4 s after the last (1.6 s).
    assert answered[0] < 1.0 and answered[1] < 1.0, answered


def _answer_times(server: Server, body: bytes, delays: list[float]) -> list[float]:
    """Seconds from the first send to each answer, for requests sent `delays` seconds after the start."""
    started = time.perf_counter()

    def send(delay: float) -> float:
        time.sleep(max(0.0, started + delay - time.perf_counter()))
        assert server.post(body)[0] == 200
        return time.perf_counter() - started

    with concurrent.futures.ThreadPoolExecutor(len(delays)) as pool:
        return list(pool.map(send, delays))


def _group(pid: int) -> list[int]:
    return [child.pid for child in psutil.Process(pid).children(recursive=True)] + [pid]


def _status(pid: int) -> str:
    try:
        return psutil.Process(pid).status()
    except psutil.Error as error:
        return type(error).__name__


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def test_a_port_in_use_fails_at_start_in_one_line(server, sample_run, tmp_path) -> None:
    out = run_job("serve", "--model-uri", str(sample_run.output / "cnn"), "--port", str(server.port),
                  env={"TMPDIR": str(tmp_path)})  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr == (
        f"mnist-train: error: --port {server.port} on 127.0.0.1 is taken (Address already in use): another server "
        "runs there; stop it or pick another --port\n"
    )


def test_a_replica_killed_under_load_comes_back_and_only_requests_in_flight_fail(server, sample) -> None:
    """Runs last in the module: 8 clients post without pause, 4 one digit and 4 ten digits; one replica is SIGKILLed;
    Serve starts another. A request fails only if it was in flight at the kill or sent in the next second, before
    HAProxy saw the replica gone; HAProxy replays the ones whole in its 16 KB buffer (one digit: 2.7 KB) elsewhere."""
    bodies, clients = {1: digits_json(sample.x_test[:1]), 10: digits_json(sample.x_test[:10])}, 4
    outcomes: list[tuple[int, float, int]] = []  # digits, sent at, HTTP code (-1: connection closed)
    stop = threading.Event()

    def client(digits: int) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                code, _ = server.post(bodies[digits], timeout=30)
            except OSError:
                code = -1
            outcomes.append((digits, sent, code))

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in bodies for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(5)
    victims = server.replicas()
    assert len(victims) == 2, [p.cmdline() for p in victims]
    killed_at = time.monotonic()
    victims[0].kill()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len([p for p in server.replicas() if p.pid != victims[0].pid]) < 2:
        time.sleep(1)
    time.sleep(5)
    stop.set()
    for thread in threads:
        thread.join(60)
    replaced = [p for p in server.replicas() if p.pid != victims[0].pid]
    failed = {n: [(sent - killed_at, code) for digits, sent, code in outcomes if digits == n and code != 200]
              for n in bodies}  # fmt: skip
    print(f"replica kill: {len(outcomes)} requests; failed {len(failed[1])} of one digit, {len(failed[10])} of ten "
          f"digits; sent at {sorted(round(at, 3) for n in bodies for at, _ in failed[n])} s from the kill")  # fmt: skip
    assert len(replaced) == 2, "Serve did not replace the killed replica"
    assert all(at < 1 for n in bodies for at, _ in failed[n]), f"requests sent after the kill failed: {failed}"
    assert server.get("/healthz")[0] == 200


def test_a_missing_model_fails_at_start_in_one_line_before_ray_starts(tmp_path: Path) -> None:
    started = time.monotonic()
    out = run_job("serve", "--model-uri", str(tmp_path / "nothing-here"), env={"TMPDIR": str(tmp_path)})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"mnist-train: error: no model.keras at {tmp_path / 'nothing-here' / 'model.keras'}; point --model-uri at a "
        "run's <model>/ folder or a model.keras file"
    ]
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--replicas", "0"], "--replicas must be between 1 and 1000, got 0"),
        (["--max-batch-size", "0"], "--max-batch-size must be between 1 and 1000, got 0 (1 turns batching off)"),
        (["--port", "70000"], "--port must be between 1 and 65535, got 70000"),
        (["--model-uri", "http://example.com/m"], "has the unsupported scheme 'http://'"),
    ],
)
def test_bad_flags_fail_in_one_line(flags: list[str], message: str) -> None:
    out = run_job("serve", "--model-uri", "m/", *flags)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr


def test_more_gpus_than_the_local_machine_has_fail_in_one_line_before_deploying(sample_run, tmp_path) -> None:
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    try:
        out = run_job("serve", "--model-uri", str(sample_run.output / "cnn"), "--gpus-per-replica", "1",
                      env={"TMPDIR": str(tmp_path), "RAY_TMPDIR": ray_tmp})  # fmt: skip
        left = sorted(p.name for p in Path(ray_tmp).iterdir())
    finally:
        remove_ray_tmp(ray_tmp)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "mnist-train: error: 1 replicas x 1 GPU need 1 GPUs, the Ray cluster has 0; lower --replicas or "
        "--gpus-per-replica"
    ), out.stderr
    assert left == ["ray"] and sorted(tmp_path.iterdir()) == [], left  # HAProxy's folder went too


def test_a_ray_tmpdir_too_long_for_haproxys_sockets_fails_in_one_line(sample_run, tmp_path) -> None:
    long = tmp_path / ("x" * 40)
    long.mkdir()
    out = run_job("serve", "--model-uri", str(sample_run.output / "cnn"), env={"RAY_TMPDIR": str(long)})
    assert out.returncode == 2
    assert re.fullmatch(
        rf"mnist-train: error: HAProxy's socket paths under {re.escape(str(long))}/hap-\w+ would be over 107 bytes; "
        r"set RAY_TMPDIR to a shorter folder \(Ray's own default is /tmp\), or use --no-haproxy",
        out.stderr.strip(),
    ), out.stderr
    assert sorted(long.iterdir()) == []


def test_a_gpu_that_tensorflow_cannot_see_fails_the_deploy_in_one_line(sample_run) -> None:
    """A Ray node started with --num-gpus 1 on this CPU machine: Ray places the replica, TensorFlow finds no GPU."""
    with ray_head("--num-gpus", "1") as head:
        started = time.monotonic()
        out = run_job("serve", "--address", head.gcs_address, "--model-uri", str(sample_run.output / "cnn"),
                      "--gpus-per-replica", "1", "--port", str(free_port()), env=head.env)  # fmt: skip
        seconds = time.monotonic() - started
    errors = [line for line in out.stderr.splitlines() if line.startswith("mnist-train: error:")]
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(errors) == 1 and "the model server did not start" in errors[0], out.stderr[-3000:]
    assert "--gpus-per-replica was given but TensorFlow sees no GPU" in errors[0]
    assert seconds < 180, f"took {seconds:.0f}s"

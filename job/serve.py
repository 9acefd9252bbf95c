"""`mnist-train serve`: a model the job saved, behind Ray Serve. HTTP in (JSON pixels or a PNG), classes and the ten
probabilities out, with dynamic request batching.

`app` is the Ray Serve application (import path `job.serve:app`, what a KubeRay RayService's serveConfigV2 names);
`run` is the command: it starts a local Ray (or joins --address), deploys `app` and serves until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import resource
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
from ray import serve

from job import cluster
from job.config import ConfigError, ServeConfig
from job.errors import first_line

APP_NAME = "mnist"
SIDE = 28
PIXELS = SIDE * SIDE
BYTES_PER_DIGIT = PIXELS * 24  # a generous JSON pixel ("254.99999, "): the body limit follows --max-digits
LATENCY_BOUNDARIES = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A model call's digits, at most: a batch of 32 requests of --max-digits 1000 each would be 32,000 digits, and the
# CNN's first activation alone 2.4 GB. Bigger batches are cut into calls of this size (74 MB there).
DIGITS_PER_CALL = 1000
# Bodies larger than this (about 20 JSON digits) are parsed on a thread, not on the event loop that gathers batches.
PARSE_INLINE_BYTES = 64 * 1024
# Ray Serve's high-throughput mode (Ray >= 2.55): HAProxy, not Serve's Python proxy, takes the HTTP requests and passes
# them to each replica's own HTTP server. Ray Serve reads these as its processes start: a local Ray gets them from
# `run`; a cluster from where it starts (the chart sets them). A prediction has no side effects, so HAProxy may replay
# on another replica a request that a dying replica dropped ("empty-response"), not only one it could not send
# (Serve's default); it can replay only a request whole in its 16 KB buffer (up to about 5 JSON digits, or a PNG).
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
               "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"}  # fmt: skip
HAPROXY_MAXCONN, HAPROXY_SPARE_FILES, HAPROXY_MIN_CONN = 4096, 2200, 256  # Serve's default; see _haproxy_maxconn
# Short names: HAProxy binds a Unix socket at "<path>.<pid>.tmp" first, and a socket's path has 107 bytes at most.
HAPROXY_FILES = {"CONFIG_FILE_LOC": "haproxy.cfg", "SOCKET_PATH": "a.sock", "SERVER_STATE_FILE": "server-state",
                 "METRICS_SOCKET_PATH": "m.sock"}  # fmt: skip


class BadRequest(ValueError):
    """A request the server cannot answer; the message is one line for the client (HTTP 400)."""


def parse(body: bytes, content_type: str, max_digits: int) -> np.ndarray:
    """The digits a request carries, as float32 pixels 0-255 shaped (N, 28, 28). JSON: one 28x28 (or 784) array,
    N of them, or {"instances": ...}; or a PNG of one 28x28 digit."""
    if not body:
        raise BadRequest("empty body; POST a JSON array of 28x28 pixels (0-255), a batch of them, or a 28x28 PNG")
    if len(body) > max_digits * BYTES_PER_DIGIT:
        raise BadRequest(
            f"body of {len(body):,} bytes is over the {max_digits * BYTES_PER_DIGIT:,} that --max-digits "
            f"{max_digits} allows; send fewer digits per request"
        )
    if "image/png" in content_type or body.startswith(PNG_SIGNATURE):
        return _png(body)
    return _json(body, max_digits)


def _png(body: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(body))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise BadRequest(f"not a readable PNG image ({first_line(err)}); send a 28x28 grayscale PNG") from None
    if image.size != (SIDE, SIDE):
        raise BadRequest(f"the image is {image.size[0]}x{image.size[1]} pixels; send a 28x28 digit, as MNIST's")
    return np.asarray(image.convert("L"), dtype=np.float32)[None]


def _json(body: bytes, max_digits: int) -> np.ndarray:
    try:
        value = orjson.loads(body)  # a fifth of json.loads' time, on every request
    except orjson.JSONDecodeError:
        value = _lenient_json(body)
    if isinstance(value, dict):
        if "instances" not in value:
            raise BadRequest('a JSON object must hold the digits under "instances"; or POST the array itself')
        value = value["instances"]
    try:
        pixels = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise BadRequest("the JSON is not a rectangular array of numbers (rows of unequal length, or text)") from None
    digits = _shape(pixels)
    if len(digits) == 0:
        raise BadRequest("the batch is empty; send at least one digit")
    if len(digits) > max_digits:
        raise BadRequest(f"{len(digits)} digits in one request, over --max-digits {max_digits}; split the batch")
    if not np.isfinite(digits).all() or digits.min() < 0 or digits.max() > 255:
        raise BadRequest(
            f"pixel values must be between 0 and 255, got {np.nanmin(digits):g} to {np.nanmax(digits):g}"
            if np.isfinite(digits).all()
            else "pixel values must be finite numbers between 0 and 255 (found NaN or infinity)"
        )
    return digits.astype(np.float32)


def _lenient_json(body: bytes) -> Any:
    """The standard parser, for what orjson refuses: it takes NaN (caught later as a pixel value) and says where the
    text stops being JSON."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"the body is neither JSON nor a PNG ({first_line(err)})") from None


def _shape(pixels: np.ndarray) -> np.ndarray:
    if pixels.shape in ((SIDE, SIDE), (PIXELS,)):
        return pixels.reshape(1, SIDE, SIDE)
    if pixels.ndim == 3 and pixels.shape[1:] == (SIDE, SIDE) or pixels.ndim == 2 and pixels.shape[1] == PIXELS:
        return pixels.reshape(-1, SIDE, SIDE)
    if pixels.ndim == 1 and len(pixels) == 0:
        return pixels.reshape(0, SIDE, SIDE)
    raise BadRequest(
        f"an array of shape {list(pixels.shape)} is not digits; send [28][28] (one digit), [N][28][28] or [N][784]"
    )


class Digits:
    """One replica: the model, loaded once, and the HTTP routes. Requests are batched (@serve.batch) into one model
    call; the call runs in a thread, so the event loop keeps gathering the next batch."""

    def __init__(self, config: ServeConfig) -> None:
        from ray.serve.metrics import Counter, Histogram

        from job.evaluate import load_model, read_model

        self.config = config
        self.model = load_model(read_model(config.model_uri))
        self._predict = _compiled(self.model, config.gpus_per_replica > 0)
        self._predict(np.zeros((1, SIDE, SIDE), np.float32))  # trace now, not on the first request
        self.infer.set_max_batch_size(config.max_batch_size)
        self.infer.set_batch_wait_timeout_s(config.batch_wait_ms / 1000)
        self.in_flight = 0  # requests in this replica, queued for a batch or in one
        tags = ("model", "code")
        self.requests = Counter("mnist_serve_requests", "HTTP requests answered, by status code.", tag_keys=tags)
        self.latency = Histogram(
            "mnist_serve_request_duration_seconds",
            "Time from a request's arrival at the replica to its answer.",
            LATENCY_BOUNDARIES,
            tag_keys=tags,
        )
        self.batch_size = Histogram(
            "mnist_serve_batch_size",
            "Digits in one model call (all the requests batched).",
            BATCH_BOUNDARIES,
            ("model",),
        )
        for metric in (self.requests, self.latency, self.batch_size):
            metric.set_default_tags({"model": self.model.name})

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import Response

        started, code = time.perf_counter(), 200
        self.in_flight += 1
        try:
            answer = await self._route(request)
        except BadRequest as err:
            code, answer = 400, {"error": str(err)}
        except Exception as err:  # a bug or a model failure: one line to the client, the replica lives on
            logging.getLogger(__name__).exception("request failed")
            code, answer = 500, {"error": f"prediction failed: {first_line(err)}"}
        finally:
            self.in_flight -= 1
        if isinstance(answer, tuple):
            code, answer = answer
        self.requests.inc(tags={"code": str(code)})
        self.latency.observe(time.perf_counter() - started, tags={"code": str(code)})
        body = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(body, status_code=code, media_type="application/json")

    async def _route(self, request: Any) -> Any:
        path = request.url.path.rstrip("/") or "/"
        if path == "/healthz":
            return {"status": "ok", "model": self.model.name}
        if path != "/predict":
            return 404, {"error": f"no route {path}; POST digits to /predict, GET /healthz"}
        if request.method != "POST":
            return 405, {"error": "POST the digits to /predict"}
        body, kind = await request.body(), request.headers.get("content-type", "")
        if len(body) > PARSE_INLINE_BYTES:
            digits = await asyncio.to_thread(parse, body, kind, self.config.max_digits)
        else:
            digits = parse(body, kind, self.config.max_digits)
        # A batch waits to fill only while other requests are in the replica: a lone client is not held back.
        self.infer.set_batch_wait_timeout_s(self.config.batch_wait_ms / 1000 if self.in_flight > 1 else 0)
        probabilities = await self.infer(digits)
        return {
            "model": self.model.name,
            "predictions": [{"class": int(p.argmax()), "probabilities": p} for p in probabilities],
        }

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)  # set from the config in __init__
    async def infer(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Every waiting request's digits in one model call; each request gets its own rows back."""
        stacked = np.concatenate(batches)
        self.batch_size.observe(len(stacked))
        probabilities = await asyncio.to_thread(self._predict, stacked)
        return np.split(probabilities, np.cumsum([len(b) for b in batches[:-1]]))


def _compiled(model: Any, gpu: bool) -> Any:
    """model(x) as one traced function for any batch size, called on at most DIGITS_PER_CALL digits at a time; pixels
    scaled as in training (job.models.features)."""
    import tensorflow as tf

    if gpu and not tf.config.list_physical_devices("GPU"):
        raise RuntimeError(
            "--gpus-per-replica was given but TensorFlow sees no GPU on this replica's node: check the NVIDIA driver "
            "and that the GPU image is used, or set --gpus-per-replica 0"
        )
    shape = (None, *model.input_shape[1:])
    # No autograph: nothing here to convert, and it would leave a generated .py file per replica in TMPDIR.
    call = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec(shape, tf.float32)], autograph=False
    )

    def predict(digits: np.ndarray) -> np.ndarray:
        chunks = [digits[i : i + DIGITS_PER_CALL] for i in range(0, len(digits), DIGITS_PER_CALL)]
        return np.concatenate([call((c / np.float32(255.0)).reshape((-1, *shape[1:]))).numpy() for c in chunks])

    return predict


def app(args: dict[str, Any]) -> Any:
    """The Ray Serve application: `serve run job.serve:app model_uri=s3://...` or a RayService's serveConfigV2 with
    `import_path: job.serve:app` and the same args as the CLI's flags."""
    config = args if isinstance(args, ServeConfig) else ServeConfig(**args)
    return _deployment(config).bind(config)


def _deployment(config: ServeConfig) -> Any:
    return serve.deployment(Digits, name="digits").options(
        num_replicas=config.replicas,
        ray_actor_options={"num_cpus": config.cpus_per_replica, "num_gpus": config.gpus_per_replica},
        max_ongoing_requests=max(100, 2 * config.max_batch_size),
        health_check_period_s=10,
    )


def run(config: ServeConfig) -> int:
    """Check the model, start (or join) Ray, deploy, print where it serves, and serve until SIGINT or SIGTERM."""
    from job.evaluate import read_model

    read_model(config.model_uri)  # a missing or unreadable model fails here, in one line, before Ray starts
    if not config.address:
        _check_port_free(config.host, config.port)
    stop = threading.Event()
    with _ray(config):
        for signum in (signal.SIGINT, signal.SIGTERM):  # after ray.init, whose native SIGTERM handler aborts
            signal.signal(signum, lambda *_: stop.set())
        _check_resources(config)
        if config.address:
            cluster.check_every_node_sees(config.model_uri, f"--model-uri {config.model_uri}")
        serve.start(http_options={"host": config.host, "port": config.port}, logging_config=_serve_logging(config))
        try:
            try:
                serve.run(app(config), name=APP_NAME, route_prefix="/", logging_config=_serve_logging(config))
            except RuntimeError as err:
                raise ConfigError(f"the model server did not start: {_deploy_failure(err)}") from None
            print(_banner(config), flush=True)
            stop.wait()
            print("stopping", flush=True)
        finally:
            if config.address:  # a local Ray takes its replicas with it when it shuts down
                serve.delete(APP_NAME)
    return 0


@contextlib.contextmanager
def _ray(config: ServeConfig) -> Iterator[None]:
    """A private local Ray (quiet: Ray's logs stay in its session folder), or the cluster at --address."""
    import ray

    quiet = not config.verbose
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.INFO)  # e.g. Ray's token-auth notice
    with contextlib.ExitStack() as stack:
        if config.address:
            cluster.check(config.address)
            ray.init(address=config.address, log_to_driver=not quiet, configure_logging=False)
        else:
            stack.enter_context(_haproxy(config.haproxy))
            ray.init(
                address="local",
                num_cpus=max(os.cpu_count() or 1, int(config.replicas * config.cpus_per_replica + 0.999)),
                include_dashboard=False,
                log_to_driver=not quiet,
                configure_logging=False,
                _metrics_export_port=config.metrics_port or None,
                _system_config={"metrics_report_interval_ms": 2000},
            )
        stack.callback(ray.shutdown)  # first, then the HAProxy folder
        yield


@contextlib.contextmanager
def _haproxy(on: bool) -> Iterator[None]:
    """HAPROXY_ENV for the local Ray's processes, HAProxy's files in a folder of ours beside Ray's own (RAY_TMPDIR),
    removed after Ray stops (Serve's default, /tmp/haproxy-serve, would stay behind)."""
    if not on:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="hap-", dir=os.environ.get("RAY_TMPDIR", "/tmp")) as folder:
        # Serve adds a folder named for the node id (56 characters); HAProxy adds ".<pid>.tmp" (up to 12).
        if len(folder) + 58 + len("a.sock") + 12 > 107:
            raise ConfigError(f"HAProxy's socket paths under {folder} would be over 107 bytes; set RAY_TMPDIR to a "
                              "shorter folder (Ray's own default is /tmp), or use --no-haproxy")  # fmt: skip
        os.environ.update(HAPROXY_ENV, RAY_SERVE_HAPROXY_SERVER_STATE_BASE=folder)
        # Serve's fixed 9101 (metrics) and 8404 (stats): a second server on the machine would fail on them.
        os.environ.update(
            RAY_SERVE_HAPROXY_METRICS_PORT=str(_free_port()), RAY_SERVE_HAPROXY_STATS_PORT=str(_free_port())
        )
        os.environ.update({f"RAY_SERVE_HAPROXY_{key}": os.path.join(folder, f) for key, f in HAPROXY_FILES.items()})
        if "RAY_SERVE_HAPROXY_MAXCONN" not in os.environ:
            os.environ.update(_haproxy_maxconn(resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        yield


def _haproxy_maxconn(files: int) -> dict[str, str]:
    """HAProxy asks for 2 file descriptors a connection and about 2,100 more (Serve's 4,096 connections: 10,276) and
    stops if the process may not open that many. Under a lower hard limit (4,096 in many containers) it gets as many
    connections as fit."""
    if files == resource.RLIM_INFINITY or files >= 2 * HAPROXY_MAXCONN + HAPROXY_SPARE_FILES:
        return {}
    fits = max(HAPROXY_MIN_CONN, (files - HAPROXY_SPARE_FILES) // 2)
    logging.getLogger(__name__).info("HAProxy: %d connections, what a limit of %d open files allows", fits, files)
    return {"RAY_SERVE_HAPROXY_MAXCONN": str(fits)}


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(
                f"--port {port} on {host} is taken ({err.strerror}): another server runs there; stop it or pick "
                "another --port"
            ) from None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _check_resources(config: ServeConfig) -> None:
    import ray

    have = ray.cluster_resources()
    for what, per in (("CPU", config.cpus_per_replica), ("GPU", config.gpus_per_replica)):
        need = per * config.replicas
        if need > have.get(what, 0) + 1e-9:
            raise ConfigError(
                f"{config.replicas} replicas x {per:g} {what} need {need:g} {what}s, the Ray cluster has "
                f"{have.get(what, 0):g}; lower --replicas or --{what.lower()}s-per-replica"
            )


def _serve_logging(config: ServeConfig) -> dict[str, str]:
    return {"log_level": "INFO" if config.verbose else "WARNING"}


def _deploy_failure(err: BaseException) -> str:
    """The replica's own error, out of the deployment's status message (a traceback), else Serve's message."""
    from ray import serve

    try:
        deployments = serve.status().applications[APP_NAME].deployments.values()
        text = "\n".join(d.message for d in deployments)
    except Exception:  # the status itself is unavailable: Serve's own message is all there is
        text = ""
    lines = [line.strip() for line in (text or str(err)).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[\w.]*(Error|Exception): ", line)]
    return (causes[-1] if causes else lines[0] if lines else type(err).__name__)[:500]


def _banner(config: ServeConfig) -> str:
    import ray

    where = f"http://{config.host}:{config.port}"
    batching = (
        "no batching"
        if config.max_batch_size == 1
        else f"batches of up to {config.max_batch_size} requests ({config.batch_wait_ms:g} ms wait)"
    )
    metrics = ""
    if not config.address:
        port = ray.nodes()[0]["MetricsExportPort"]  # the local Ray's one node
        metrics = f"; metrics at http://127.0.0.1:{port}/metrics"
    replicas = f"{config.replicas} replica{'s' * (config.replicas > 1)}"
    ingress = "" if config.address else ", HAProxy in front" if config.haproxy else ", Serve's Python proxy in front"
    return f"serving {config.model_uri} at {where}/predict: {replicas}, {batching}{ingress}{metrics}; Ctrl-C stops"

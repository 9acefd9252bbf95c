#!/usr/bin/env python3
"""Run the built image as the chart runs it, with podman, on a network of its own (no cluster needed).

    .venv/bin/python k8s/image_check.py job   [--data-uri DIR] [--host-results results.json]
    .venv/bin/python k8s/image_check.py serve
    .venv/bin/python k8s/image_check.py all   (job, then serve on the model the job wrote)

`job`: `mnist-train train` with the default models in one container made from the chart's worker pod (CPU values:
its user, securityContext, env, limits and /dev/shm), the data mounted read-only, results written to an S3 endpoint
(moto on the host, bound to the network's gateway address: reached over the container network). `serve`:
`mnist-train serve` from the same image answers digits and sends 400 for a bad body. Every container and network
made here is removed at the end; the images are kept. `make image-check` builds the images first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from rehearse import pods

REPO = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = REPO / "tools" / "image" / "containers.conf"
MOTO = REPO / ".venv-s3" / "bin" / "moto_server"
BUCKET = "mnist-check"
S3_SECRET = {"s3-credentials": {"AWS_ACCESS_KEY_ID": "admin", "AWS_SECRET_ACCESS_KEY": "admin"}}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {message}", file=sys.stderr, flush=True)


def podman(*args: str, check: bool = True, timeout: float | None = 120, **kw: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF))}
    done = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode:
        raise SystemExit(f"podman {args[0]} failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
    return done


def chart_values(image: str, endpoint: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chart's defaults with only the image, the storage endpoint and the data changed (CPU: gpu.enabled off)."""
    repository, tag = image.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag},
        "gpu": {"enabled": False},
        "storage": {"existingSecret": "s3-credentials", "endpointUrl": endpoint, "region": "us-east-1"},
        "train": {"outputBase": f"s3://{BUCKET}/runs"},
    }
    return {**values, **(extra or {})}


def render(values: dict[str, Any]) -> dict[str, Any]:
    import helm_python

    with helm_python.Chart.load(REPO / "charts" / "mnist-train") as chart:
        rendered = chart.render(values, name="check", namespace="ml", is_install=True)
    (rayjob,) = [yaml.safe_load(text) for path, text in rendered.items() if path.endswith("/rayjob.yaml")]
    return rayjob


class Session:
    """A podman network, the containers started on it, and an S3 endpoint on its gateway; all removed on close."""

    def __init__(self) -> None:
        self.prefix = f"mnist-check-{secrets.token_hex(3)}"
        self.network = self.prefix
        self.containers: list[str] = []
        self.moto: subprocess.Popen | None = None
        self.servers: list[Any] = []  # anything else with a stop(), e.g. Prometheus
        podman("network", "create", self.network)
        try:
            # The bridge (and the gateway address on the host) appears with the first container on the network.
            self.run_detached("anchor", ["--network", self.network, "--entrypoint", "sleep"], "86400")
            self.gateway = json.loads(podman("network", "inspect", self.network).stdout)[0]["subnets"][0]["gateway"]
        except BaseException:
            self.close()
            raise

    def run_detached(self, name: str, args: list[str], *command: str, image: str | None = None) -> str:
        full = f"{self.prefix}-{name}"
        self.containers.append(full)
        podman("run", "--detach", f"--name={full}", *args, image or self.image, *command)
        return full

    image = "localhost/mnist-train:0.1.0-cpu"

    def start_s3(self) -> str:
        assert MOTO.exists(), f"{MOTO} is missing: run tools/install-test-deps.sh (make test-deps)"
        with socket.socket() as sock:
            sock.bind((self.gateway, 0))
            port = sock.getsockname()[1]
        self.moto = subprocess.Popen([str(MOTO), "-H", self.gateway, "-p", str(port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection((self.gateway, port), timeout=0.5).close()
                break
            if time.monotonic() > deadline or self.moto.poll() is not None:
                raise SystemExit(f"moto_server did not listen on {self.gateway}:{port}")
            time.sleep(0.2)
        self.s3_port = port
        self.filesystem().create_dir(BUCKET)
        return f"http://{self.gateway}:{port}"

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=f"{self.gateway}:{self.s3_port}", scheme="http", access_key="admin",
                                 secret_key="admin", region="us-east-1", allow_bucket_creation=True)  # fmt: skip

    def address(self, container: str) -> str:
        info = json.loads(podman("inspect", container).stdout)[0]
        return info["NetworkSettings"]["Networks"][self.network]["IPAddress"]

    def close(self) -> None:
        for name in reversed(self.containers):
            podman("rm", "--force", "--time=5", name, check=False, timeout=60)
        podman("network", "rm", "--force", self.network, check=False)
        for server in self.servers:
            server.stop()
        if self.moto is not None:
            self.moto.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.moto.wait(timeout=10)
            if self.moto.poll() is None:
                self.moto.kill()
        log(f"removed {len(self.containers)} containers and the network {self.network}")


@contextlib.contextmanager
def session(image: str) -> Iterator[Session]:
    Session.image = image
    made = Session()
    try:
        yield made
    finally:
        made.close()


def pod_args(rayjob: dict[str, Any], group: str, host_paths: dict[str, str]) -> tuple[dict, dict, dict[str, str]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    spec = cluster["headGroupSpec"] if group == "head" else cluster["workerGroupSpecs"][0]
    pod_spec = spec["template"]["spec"]
    container = pod_spec["containers"][0]
    return pod_spec, container, pods.container_env(container, S3_SECRET)


def check_job(s: Session, args: argparse.Namespace) -> dict[str, Any]:
    """`mnist-train train` with the defaults in the chart's worker container; returns the results and the wall."""
    endpoint = s.start_s3()
    extra: dict[str, Any] = {}
    host_paths: dict[str, str] = {}
    data_flags = ["--dataset", "mnist-sample"]
    if args.data_uri:
        volume = {"name": "mnist", "persistentVolumeClaim": {"claimName": "mnist"}}
        mount = {"name": "mnist", "mountPath": "/data/mnist", "readOnly": True}
        extra["pods"] = {"extraVolumes": [volume], "extraVolumeMounts": [mount]}
        host_paths["mnist"] = str(Path(args.data_uri).resolve())
        data_flags = ["--data-uri", "/data/mnist"]
    rayjob = render(chart_values(s.image, endpoint, extra))
    pod_spec, container, env = pod_args(rayjob, "worker", host_paths)
    run = f"image-{secrets.token_hex(3)}"
    command = ["mnist-train", "train", *data_flags, "--output", f"s3://{BUCKET}/runs/{run}", "--run-name", run,
               *args.train_args]  # fmt: skip
    argv = pods.run_args(pod_spec, container, name=f"{s.prefix}-train", network=s.network, env=env,
                         host_paths=host_paths, image=s.image, command=command)  # fmt: skip
    argv = [a for a in argv if a != "--detach"]
    s.containers.append(f"{s.prefix}-train")
    log(f"job: podman {' '.join(argv[: -len(command)])} ...")
    log(f"job: {' '.join(command)}")
    start = time.monotonic()
    done = podman(*argv, check=False, timeout=args.timeout)
    wall = time.monotonic() - start
    Path(args.report_dir, "job.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise SystemExit(f"job: the container exited {done.returncode}: {(done.stdout + done.stderr)[-3000:]}")
    results = json.loads(s.filesystem().open_input_stream(f"{BUCKET}/runs/{run}/results.json").read())
    keys = sorted(i.path for i in s.filesystem().get_file_info(_selector(f"{BUCKET}/runs/{run}")) if i.size)
    errors = {name: m["test_error_percent"] for name, m in results["models"].items()}
    report = {"wall_s": round(wall, 1), "errors": errors, "results_wall_s": results["wall_seconds"],
              "objects": len(keys), "output": f"s3://{BUCKET}/runs/{run}", "git_sha": results.get("git_sha"),
              "dataset": results["dataset"], "versions": results.get("versions")}  # fmt: skip
    if args.host_results:
        host = json.loads(Path(args.host_results).read_text())
        report["host"] = {"errors": {n: m["test_error_percent"] for n, m in host["models"].items()},
                          "wall_seconds": host["wall_seconds"], "dataset": host["dataset"]}  # fmt: skip
        report["same_errors"] = report["host"]["errors"] == errors
    log(f"job: {json.dumps(report)}")
    s.model_uri = f"s3://{BUCKET}/runs/{run}/cnn"
    s.model_env = env
    return report


def _selector(prefix: str):
    import pyarrow.fs as pafs

    return pafs.FileSelector(prefix, recursive=True, allow_not_found=True)


def check_serve(s: Session, args: argparse.Namespace) -> dict[str, Any]:
    """`mnist-train serve` of the job's cnn from the same image: digits in, classes out; a bad body is a 400."""
    extra: dict[str, Any] = {}
    host_paths: dict[str, str] = {}
    model_uri = getattr(s, "model_uri", None)
    if args.model_dir:  # a saved model on the host (a run's <model>/ folder), mounted read-only
        volume = {"name": "model", "persistentVolumeClaim": {"claimName": "model"}}
        mount = {"name": "model", "mountPath": "/model", "readOnly": True}
        extra["pods"] = {"extraVolumes": [volume], "extraVolumeMounts": [mount]}
        host_paths["model"], model_uri = str(Path(args.model_dir).resolve()), "/model"
    if not model_uri:
        raise SystemExit("serve: needs --model-dir, or the model the job step wrote (run `all`)")
    endpoint = f"http://{s.gateway}:{s.s3_port}" if getattr(s, "s3_port", None) else "http://127.0.0.1:1"
    rayjob = render(chart_values(s.image, endpoint, extra))
    pod_spec, container, env = pod_args(rayjob, "worker", host_paths)
    command = ["mnist-train", "serve", "--model-uri", model_uri, "--host", "0.0.0.0", "--port", "8000",
               "--haproxy" if args.haproxy else "--no-haproxy"]  # fmt: skip
    argv = pods.run_args(pod_spec, container, name=f"{s.prefix}-serve", network=s.network, env=env, image=s.image,
                         host_paths=host_paths, command=command)  # fmt: skip
    s.containers.append(f"{s.prefix}-serve")
    podman(*argv)
    url = f"http://{s.address(f'{s.prefix}-serve')}:8000"
    deadline = time.monotonic() + 180
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError):
            if urllib.request.urlopen(f"{url}/healthz", timeout=5).status == 200:
                break
        if time.monotonic() > deadline:
            logs = podman("logs", f"{s.prefix}-serve", check=False)
            raise SystemExit(f"serve: no /healthz within 180 s: {(logs.stdout + logs.stderr)[-3000:]}")
        time.sleep(2)
    digit = [[0] * 28 for _ in range(28)]
    for row in range(4, 24):  # a vertical stroke: a "1"
        digit[row][13] = digit[row][14] = 255
    good = _post(f"{url}/predict", json.dumps(digit).encode(), "application/json")
    bad = _post(f"{url}/predict", b"{not json", "application/json")
    report = {"url": url, "predict_status": good[0], "predicted_class": json.loads(good[1])["predictions"][0]["class"],
              "bad_body_status": bad[0], "haproxy": args.haproxy}  # fmt: skip
    log(f"serve: {json.dumps(report)}")
    if good[0] != 200 or bad[0] != 400:
        raise SystemExit(f"serve: expected 200 and 400, got {good[0]} and {bad[0]}: {bad[1][:300]!r}")
    return report


def check_cluster(s: Session, args: argparse.Namespace) -> dict[str, Any]:
    """The RayJob's pods as containers, as KubeRay 1.7 makes them: a head (reached by its Service's name), two
    workers and the submitter; a worker SIGKILLed after the first checkpoint and replaced; Prometheus scrapes them."""
    endpoint = f"http://{s.gateway}:{s.s3_port}" if getattr(s, "s3_port", None) else s.start_s3()
    host_paths: dict[str, str] = {}
    # The chart's defaults but for the image, the storage and the data. gpu.enabled is off too, unless
    # --chart-defaults: the defaults ask for a GPU per worker, and on a machine without one the job must refuse.
    extra: dict[str, Any] = {"train": {"outputBase": f"s3://{BUCKET}/runs", "dataset": "mnist-sample"}}
    if args.chart_defaults:
        extra["gpu"] = {}  # the chart's own gpu values
    if args.data_uri:  # the chart takes data from object storage only (s3://, gs://): copy it into the bucket
        fs = s.filesystem()
        for path in sorted(Path(args.data_uri).iterdir()):
            if path.is_file():
                with fs.open_output_stream(f"{BUCKET}/data/mnist/{path.name}", compression=None) as out:
                    out.write(path.read_bytes())
        extra["train"] = {"outputBase": f"s3://{BUCKET}/runs", "dataUri": f"s3://{BUCKET}/data/mnist"}
    overrides = {key: yaml.safe_load(value) for key, value in (a.split("=", 1) for a in args.cluster_set)}
    extra["train"] |= {"runName": f"cluster-{secrets.token_hex(3)}", **overrides}
    rayjob = render(chart_values(s.image, endpoint, extra))
    spec = rayjob["spec"]
    name, namespace = rayjob["metadata"]["name"], "ml"
    cluster = f"{name}-{secrets.token_hex(3)[:5]}"
    service = f"{cluster}-head-svc"
    fqdn = f"{service}.{namespace}.svc.cluster.local"
    token = secrets.token_hex(16)  # KubeRay's token Secret for the cluster
    head_group, (worker_group,) = spec["rayClusterSpec"]["headGroupSpec"], spec["rayClusterSpec"]["workerGroupSpecs"]
    report: dict[str, Any] = {"rayjob": name, "cluster": cluster, "service": fqdn}

    def start_pod(group: dict[str, Any], head: bool) -> tuple[str, dict[str, str]]:
        pod = f"{cluster}-{'head' if head else worker_group['groupName'] + '-worker'}-{secrets.token_hex(3)[:5]}"
        params = pods.ray_start_params(group, head=head, head_service=fqdn)
        start = pods.ray_start_command(params, head=head)
        pod_spec = group["template"]["spec"]
        container = pod_spec["containers"][0]
        fields = {"metadata.name": pod, "metadata.namespace": namespace}
        env = pods.container_env(container, S3_SECRET, fields) | pods.kuberay_env(
            head=head, cluster=cluster, namespace=namespace, pod=pod, start=start, head_service=fqdn, token=token,
            group="headgroup" if head else worker_group["groupName"])  # fmt: skip
        argv = pods.run_args(pod_spec, container, name=pod, network=s.network, env=env, host_paths=host_paths,
                             image=s.image, aliases=(service, fqdn) if head else (),
                             command=pods.container_command(start))  # fmt: skip
        s.containers.append(pod)
        podman(*argv)
        log(f"cluster: started {pod}: {start}")
        return pod, params

    head, head_params = start_pod(head_group, True)
    workers = [start_pod(worker_group, False) for _ in range(worker_group["replicas"])]
    _wait_nodes(head, 1 + len(workers))
    report["probes"] = _probes(s, [(head, head_params, True)] + [(w, p, False) for w, p in workers])

    prometheus = _start_prometheus(s, [head] + [w for w, _ in workers], spec)
    job_id = f"{name}-{secrets.token_hex(4)}"
    sub_spec = spec["submitterPodTemplate"]["spec"]
    sub_container = sub_spec["containers"][0]
    address = f"http://{fqdn}:8265"
    sub_env = pods.container_env(sub_container, S3_SECRET) | {
        "RAY_DASHBOARD_ADDRESS": f"{fqdn}:8265", "RAY_JOB_SUBMISSION_ID": job_id,
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}  # fmt: skip
    submitter = f"{name}-{secrets.token_hex(3)[:5]}"
    argv = pods.run_args(sub_spec, sub_container, name=submitter, network=s.network, env=sub_env, image=s.image,
                         command=pods.submitter_command(address, job_id, spec["entrypoint"]))  # fmt: skip
    start = time.monotonic()
    s.containers.append(submitter)
    podman(*argv)
    if args.chart_defaults:
        return _expect_gpu_refusal(s, submitter, job_id, start, args, report)
    output = spec["entrypoint"].split("--output ", 1)[1].split()[0].removeprefix("s3://")
    snapshot = f"{output}/checkpoints/{extra['train']['runName']}/checkpoint_manager_snapshot.json"
    while not s.filesystem().get_file_info(snapshot).size:
        if time.monotonic() - start > args.timeout:
            raise SystemExit("cluster: no checkpoint within the timeout")
        if _exited(submitter) is not None:
            logs = podman("logs", submitter, check=False)
            raise SystemExit(f"cluster: the submitter ended before a checkpoint: {(logs.stdout + logs.stderr)[-3000:]}")
        time.sleep(2)
    placement = _train_worker_pods(s, head, [w for w, _ in workers])
    report["train_workers_on"] = placement
    killed = placement[0] if placement else workers[0][0]
    podman("kill", "--signal", "KILL", killed)
    prometheus.remove(killed)
    report["killed"] = {"pod": killed, "after_s": round(time.monotonic() - start, 1)}
    log(f"cluster: SIGKILLed {killed} after the first checkpoint; KubeRay would create a new worker pod")
    replacement, replacement_params = start_pod(worker_group, False)
    prometheus.add(replacement)
    while (code := _exited(submitter)) is None:
        if time.monotonic() - start > args.timeout:
            raise SystemExit("cluster: the submitter still runs after the timeout")
        time.sleep(5)
    report["wall_s"] = round(time.monotonic() - start, 1)
    logs = podman("logs", submitter, check=False)
    Path(args.report_dir, "submitter.log").write_text(logs.stdout + logs.stderr)
    report["submitter_exit"] = code
    report["probes_after"] = _probes(s, [(head, head_params, True), (replacement, replacement_params, False)])
    results = json.loads(s.filesystem().open_input_stream(f"{output}/results.json").read())
    keys = sorted(i.path for i in s.filesystem().get_file_info(_selector(output)) if i.size)
    report["results"] = {"status": results["status"], "workers": results["workers"],
                         "errors": {n: m["test_error_percent"] for n, m in results["models"].items()},
                         "epochs": {n: [h.get("epoch") for h in m.get("history", [])]
                                    for n, m in results["models"].items()}}  # fmt: skip
    report["ledger"] = {n: [{k: h[k] for k in h if k.startswith(("examples", "distinct", "max_uses", "ledger"))}
                            for h in m.get("history", [])] for n, m in results["models"].items()}  # fmt: skip
    report["s3_objects"] = {"count": len(keys), "models": [k for k in keys if k.endswith("model.keras")],
                            "results": f"{output}/results.json" in keys,
                            "checkpoints": sum("/checkpoints/" in k for k in keys)}  # fmt: skip
    report["prometheus"] = prometheus.query_epochs(extra["train"]["runName"])
    log(f"cluster: {json.dumps(report)}")
    if code != 0 or results["status"] != "succeeded" or results["workers"] != 2:
        raise SystemExit(f"cluster: the run did not end complete with 2 workers (submitter exit {code})")
    return report


def _expect_gpu_refusal(
    s: Session, submitter: str, job_id: str, start: float, args: argparse.Namespace, report: dict[str, Any]
) -> dict[str, Any]:
    """With the chart's defaults each worker pod asks for a GPU, so KubeRay's `ray start` declares one; here there is
    none for TensorFlow, and the job must say so in one line and fail, before anything trains. The submitter's
    `ray job logs --follow` exits 0 either way: KubeRay reads the job's status from the dashboard, which Ray's CLI
    prints ("Job '<id>' failed", with the entrypoint's exit code)."""
    while (code := _exited(submitter)) is None:
        if time.monotonic() - start > args.timeout:
            raise SystemExit("cluster --chart-defaults: the submitter still runs after the timeout")
        time.sleep(2)
    logs = podman("logs", submitter, check=False)
    text = logs.stdout + logs.stderr
    Path(args.report_dir, "submitter-chart-defaults.log").write_text(text)
    errors = [line[line.index("mnist-train: error:") :] for line in text.splitlines() if "mnist-train: error:" in line]
    trained = [line for line in text.splitlines() if " epoch " in line and "/" in line]
    status = re.search(rf"Job '{job_id}' (failed|succeeded|stopped)", text)
    message = re.search(r"Status message: (.*?)(, last available logs|$)", text, re.MULTILINE)
    report |= {"submitter_exit": code, "wall_s": round(time.monotonic() - start, 1), "errors": sorted(set(errors)),
               "job_status": status and status[1], "status_message": message and message[1],
               "epoch_lines": len(trained)}  # fmt: skip
    log(f"cluster --chart-defaults: {json.dumps(report)}")
    if not status or status[1] != "failed" or len(set(errors)) != 1 or "TensorFlow sees no GPU" not in errors[0]:
        raise SystemExit(f"cluster --chart-defaults: expected a failed job and the one GPU refusal: {report}")
    if trained:
        raise SystemExit(f"cluster --chart-defaults: {len(trained)} epochs trained before the refusal")
    return report


def _train_worker_pods(s: Session, head: str, workers: list[str]) -> list[str]:
    """The worker containers that host a live Ray Train worker (one entry per train worker)."""
    actors = podman("exec", head, "ray", "list", "actors", "--format", "json", "--filter", "class_name=RayTrainWorker",
                    "--filter", "state=ALIVE", check=False, timeout=60)  # fmt: skip
    nodes = podman("exec", head, "ray", "list", "nodes", "--format", "json", check=False, timeout=60)
    with contextlib.suppress(ValueError):
        ip_of = {n["node_id"]: n["node_ip"] for n in json.loads(nodes.stdout)}
        by_ip = {s.address(w): w for w in workers}
        return [by_ip.get(ip_of.get(a["node_id"]), a["node_id"]) for a in json.loads(actors.stdout)]
    return []


def _exited(container: str) -> int | None:
    state = json.loads(podman("inspect", container).stdout)[0]["State"]
    return None if state["Running"] else int(state["ExitCode"])


def _wait_nodes(head: str, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = podman("exec", head, "ray", "list", "nodes", "--format", "json", "--filter", "state=ALIVE",
                      check=False, timeout=60)  # fmt: skip
        with contextlib.suppress(ValueError):
            if done.returncode == 0 and len(json.loads(done.stdout)) >= count:
                return
        if time.monotonic() > deadline:
            logs = podman("logs", head, check=False)
            raise SystemExit(f"cluster: fewer than {count} Ray nodes after {timeout:.0f} s: {done.stderr[-1500:]}"
                             f"{(logs.stdout + logs.stderr)[-2000:]}")  # fmt: skip
        time.sleep(3)


def _probes(s: Session, containers: list[tuple[str, dict[str, str], bool]]) -> dict[str, Any]:
    """KubeRay's probes for Ray 2.60: the kubelet's HTTP GET on the pod address (sent from the host, as a kubelet
    does), and the older exec probe (wget in the container), which shows the image has the tools for it."""
    out = {}
    for container, params, head in containers:
        url = pods.probe_url(s.address(container), params)
        try:
            status = urllib.request.urlopen(url, timeout=2).status
        except (OSError, urllib.error.URLError) as err:
            status = str(err)
        legacy = podman("exec", container, "bash", "-c", pods.legacy_probe(head, params), check=False, timeout=30)
        out[container] = {"http": status, "exec": legacy.returncode}
    log(f"probes: {out}")
    if any(v["http"] != 200 or v["exec"] != 0 for v in out.values()):
        raise SystemExit(f"cluster: a probe failed: {out}")
    return out


class Prometheus:
    def __init__(self, s: Session, ports: list[int], containers: list[str]) -> None:
        self.s, self.ports, self.dir = s, ports, Path(tempfile.mkdtemp(prefix="mnist-check-prom-"))
        self.targets = self.dir / "targets.json"
        self.addresses = {container: s.address(container) for container in containers}
        self._write()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        discovery = {"files": [str(self.targets)], "refresh_interval": "1s"}
        config = {"global": {"scrape_interval": "1s"},
                  "scrape_configs": [{"job_name": "pods", "file_sd_configs": [discovery]}]}  # fmt: skip
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen(["prometheus", f"--config.file={self.dir / 'prometheus.yml'}",
                                         f"--web.listen-address=127.0.0.1:{self.port}",
                                         f"--storage.tsdb.path={self.dir / 'data'}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def _write(self) -> None:
        targets = [f"{address}:{port}" for address in self.addresses.values() for port in self.ports]
        self.targets.write_text(json.dumps([{"targets": targets}]))

    def add(self, container: str) -> None:
        self.addresses[container] = self.s.address(container)
        self._write()

    def remove(self, container: str) -> None:
        """A deleted pod leaves the PodMonitor's targets."""
        self.addresses.pop(container, None)
        self._write()

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        return json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]["result"]

    def query_epochs(self, run: str) -> dict[str, Any]:
        """What the scrapes kept: the mnist_train_* series, the epochs completed and the per-epoch durations seen per
        model (range queries: the workers' endpoints are gone once the run ends)."""
        names = self.query('count by (__name__) (last_over_time({__name__=~"mnist_train_.+"}[1h]))')
        done = self.query("max by (model) (max_over_time(mnist_train_epochs_completed[1h]))")
        durations = self.query("count by (model) (last_over_time(mnist_train_epoch_duration_seconds[1h]))")
        up = self.query("count by (instance) (max_over_time(up[1h]) == 1)")
        return {"series": sorted(r["metric"]["__name__"] for r in names),
                "epochs_completed": {r["metric"].get("model"): r["value"][1] for r in done},
                "epoch_durations_seen": {r["metric"].get("model"): r["value"][1] for r in durations},
                "targets_ever_up": sorted(r["metric"]["instance"] for r in up)}  # fmt: skip

    def stop(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        if self.process.poll() is None:
            self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _start_prometheus(s: Session, containers: list[str], spec: dict[str, Any]) -> Prometheus:
    worker = spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    ports = [int(p["containerPort"]) for p in worker.get("ports", [])]
    prometheus = Prometheus(s, ports, containers)
    s.servers.append(prometheus)
    return prometheus


def _post(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["job", "serve", "cluster", "all"])
    parser.add_argument("--image", default="localhost/mnist-train:0.1.0-cpu")
    parser.add_argument("--data-uri", help="a host folder of full MNIST (mounted read-only); default: the sample")
    parser.add_argument("--host-results", help="results.json of the same command run on the host, to compare")
    parser.add_argument("--report-dir", default="/var/tmp/mnist-image-report")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--model-dir", help="serve: a saved model on the host (a run's <model>/ folder)")
    # HAProxy in front, as serve's default: under a container's 4,096 open files it gets the connections that fit.
    parser.add_argument("--haproxy", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cluster-set", action="append", default=[], metavar="KEY=VALUE",
                        help="train.KEY=VALUE for the cluster step's chart values (e.g. epochs=2)")  # fmt: skip
    parser.add_argument("--chart-defaults", action="store_true",
                        help="cluster: keep the chart's GPU values (a GPU per worker); without a GPU, the run must "
                        "end with the job's one-line refusal")  # fmt: skip
    parser.add_argument("train_args", nargs="*", help="extra `mnist-train train` flags (after --)")
    args = parser.parse_args(argv)
    if shutil.which("podman") is None:
        print("image_check: podman is not installed (apt-get install -y podman runc)", file=sys.stderr)
        return 1
    if podman("image", "exists", args.image, check=False).returncode:
        print(f"image_check: no image {args.image}: build it first (tools/image/build.sh cpu)", file=sys.stderr)
        return 1
    Path(args.report_dir).mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"image": args.image}
    with session(args.image) as s:
        if args.step in ("job", "all") or (args.step == "serve" and not args.model_dir):
            report["job"] = check_job(s, args)
        if args.step in ("serve", "all"):
            report["serve"] = check_serve(s, args)
        if args.step in ("cluster", "all"):
            report["cluster"] = check_cluster(s, args)
    Path(args.report_dir, "check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

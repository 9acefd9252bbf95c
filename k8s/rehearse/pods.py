"""Rendered pod specs -> `podman run` arguments, and the `ray start` command KubeRay 1.7 builds for a group.

Traced in KubeRay v1.7.0, ray-operator/controllers/ray/common/pod.go: setMissingRayStartParams,
generateRayStartCommand, convertParamMap, BuildPod (the `ulimit -n ...; ray start ...` command run by
`/bin/bash -c --`), setContainerEnvVars and SetContainerTokenAuthEnvVars (the variables it adds).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

DEFAULT_GCS_PORT = "6379"
DEFAULT_METRICS_PORT = "8080"
DEFAULT_DASHBOARD_AGENT_LISTEN_PORT = "52365"
# convertParamMap: "true" is a bare switch and "false" is dropped, except for these flags.
EXPLICIT_BOOLEANS = ("log-color", "include-dashboard", "include-log-monitor")
GPU_RESOURCE = re.compile(r"^(nvidia\.com|amd\.com)/gpu$")
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": 1e-3}


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("2", "500m", "8Gi", "1e3") as a number."""
    text = str(value).strip()
    match = re.fullmatch(r"([0-9.eE+-]+?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?", text)
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(match[1]) * UNITS.get(match[2] or "", 1)


def whole(value: str | int | float) -> int:
    """resource.Quantity.Value(): rounded up to a whole number ("500m" -> 1)."""
    return math.ceil(quantity(value) - 1e-9)


def ray_start_params(
    group: Mapping[str, Any], head: bool, head_service: str = "", head_port: str = DEFAULT_GCS_PORT
) -> dict[str, str]:
    """The group's rayStartParams completed as KubeRay does: a worker's --address (the head Service's name), the
    head's dashboard-host, metrics and dashboard-agent ports, --block, and --num-cpus / --memory / --num-gpus from
    the Ray container's limits (the CPU request when there is no CPU limit)."""
    params = {key: str(value) for key, value in group.get("rayStartParams", {}).items()}
    if not head:
        params.setdefault("address", f"{head_service}:{head_port}")
    else:
        params.setdefault("dashboard-host", "0.0.0.0")
    params.setdefault("metrics-export-port", DEFAULT_METRICS_PORT)
    params["block"] = "true"
    params.setdefault("dashboard-agent-listen-port", DEFAULT_DASHBOARD_AGENT_LISTEN_PORT)
    resources = group["template"]["spec"]["containers"][0].get("resources", {})
    limits, requests = resources.get("limits", {}), resources.get("requests", {})
    if "num-cpus" not in params:
        cpu = limits.get("cpu") or requests.get("cpu")
        if cpu and quantity(cpu):
            params["num-cpus"] = str(whole(cpu))
    if "memory" not in params and limits.get("memory"):
        params["memory"] = str(whole(limits["memory"]))
    if "num-gpus" not in params:
        for name in sorted(limits):
            if GPU_RESOURCE.match(name) and quantity(limits[name]):
                params["num-gpus"] = str(whole(limits[name]))
                break
    return params


def ray_start_flags(params: Mapping[str, str]) -> list[str]:
    """convertParamMap: flags in key order, `--key=value`, booleans as bare switches."""
    flags = []
    for key in sorted(params):
        value = params[key]
        if value.lower() in ("true", "false") and key not in EXPLICIT_BOOLEANS:
            if value.lower() == "true":
                flags.append(f"--{key}")
        else:
            flags.append(f"--{key}={value}")
    return flags


def ray_start_command(params: Mapping[str, str], head: bool) -> str:
    """The `ray start` command line KubeRay runs in a Ray container."""
    return " ".join(["ray", "start", *(["--head"] if head else []), *ray_start_flags(params)])


def container_command(start: str) -> list[str]:
    """The Ray container's command and argument as BuildPod sets them."""
    return ["/bin/bash", "-c", "--", f"ulimit -n ${{RAY_START_ULIMIT_OPEN_FILES:-65536}}; {start}"]


def kuberay_env(
    *, head: bool, cluster: str, namespace: str, pod: str, group: str, start: str, head_service: str,
    head_port: str = DEFAULT_GCS_PORT, token: str | None = None, crd: str = "RayJob",
) -> dict[str, str]:  # fmt: skip
    """The variables KubeRay adds to a Ray container (fieldRefs resolved), the auth token's included."""
    ip = "127.0.0.1" if head else head_service
    env = {}
    if not head:
        env |= {"FQ_RAY_IP": head_service, "RAY_IP": head_service.split(".")[0]}
    env |= {
        "RAY_CLUSTER_NAME": cluster,
        "RAY_CLUSTER_NAMESPACE": namespace,
        "RAY_CLOUD_INSTANCE_ID": pod,
        "RAY_NODE_TYPE_NAME": group,
        "KUBERAY_GEN_RAY_START_CMD": start,
        "RAY_PORT": head_port,
        "RAY_ADDRESS": f"{ip}:{head_port}",
        "RAY_USAGE_STATS_KUBERAY_IN_USE": "1",
    }
    if head:
        env["RAY_USAGE_STATS_EXTRA_TAGS"] = f"kuberay_version=v1.7.0;kuberay_crd={crd}"
    env["RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE"] = "1"
    if token is not None:
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    return env


def container_env(
    container: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]], fields: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A container's env as the kubelet resolves it: plain values, secretKeyRefs and fieldRefs."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
        elif "fieldRef" in source:
            env[item["name"]] = (fields or {})[source["fieldRef"]["fieldPath"]]
        else:
            raise ValueError(f"env {item['name']}: only value, secretKeyRef and fieldRef are rehearsed")
    return env


def security_args(pod_spec: Mapping[str, Any], container: Mapping[str, Any], image_user: str) -> list[str]:
    """The pod's and container's securityContext as podman flags. runAsNonRoot is checked as the kubelet does."""
    pod_ctx, ctx = pod_spec.get("securityContext", {}), container.get("securityContext", {})
    merged = {**pod_ctx, **ctx}
    args = []
    user = merged.get("runAsUser")
    group = merged.get("runAsGroup")
    if user is not None:
        args.append(f"--user={user}" + (f":{group}" if group is not None else ""))
    uid = str(user) if user is not None else image_user.split(":")[0]
    if merged.get("runAsNonRoot") and uid in ("0", "root", ""):
        raise ValueError("runAsNonRoot: the container would run as root (CreateContainerConfigError on a kubelet)")
    for gid in [pod_ctx.get("fsGroup"), *pod_ctx.get("supplementalGroups", [])]:
        if gid is not None:
            args.append(f"--group-add={gid}")
    caps = ctx.get("capabilities", {})
    args += [f"--cap-drop={cap}" for cap in caps.get("drop", [])]
    args += [f"--cap-add={cap}" for cap in caps.get("add", [])]
    if ctx.get("allowPrivilegeEscalation") is False:
        args.append("--security-opt=no-new-privileges")
    if ctx.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if ctx.get("privileged"):
        args.append("--privileged")
    seccomp = merged.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        args.append("--security-opt=seccomp=unconfined")
    return args


def resource_args(container: Mapping[str, Any]) -> list[str]:
    """Limits podman can apply: CPU and memory (GPUs and ephemeral storage are left out)."""
    limits = container.get("resources", {}).get("limits", {})
    args = []
    if "cpu" in limits:
        args.append(f"--cpus={quantity(limits['cpu']):g}")
    if "memory" in limits:
        args.append(f"--memory={whole(limits['memory'])}")
    return args


def volume_args(pod_spec: Mapping[str, Any], container: Mapping[str, Any], host_paths: Mapping[str, str]) -> list[str]:
    """The container's volumeMounts: a memory emptyDir on /dev/shm becomes --shm-size (its sizeLimit), other
    emptyDirs tmpfs mounts, and every other volume the host folder `host_paths` names for it."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    args = []
    for mount in container.get("volumeMounts", []):
        volume, path = volumes[mount["name"]], mount["mountPath"]
        empty = volume.get("emptyDir")
        if empty is not None and path == "/dev/shm":
            args.append(f"--shm-size={whole(empty.get('sizeLimit', '64Mi'))}")
        elif empty is not None:
            size = f",size={whole(empty['sizeLimit'])}" if "sizeLimit" in empty else ""
            args.append(f"--tmpfs={path}:rw,mode=1777{size}")
        elif mount["name"] in host_paths:
            mode = "ro" if mount.get("readOnly") else "rw"
            args.append(f"--volume={host_paths[mount['name']]}:{path}:{mode}")
        else:
            raise ValueError(f"volume {mount['name']}: no host folder given for it")
    return args


def run_args(
    pod_spec: Mapping[str, Any], container: Mapping[str, Any], *, name: str, network: str, env: Mapping[str, str],
    image_user: str = "1000:100", aliases: tuple[str, ...] = (), host_paths: Mapping[str, str] | None = None,
    image: str | None = None, command: list[str] | None = None,
) -> list[str]:  # fmt: skip
    """`podman run` arguments for one pod of one container: its own network namespace and address on `network`
    (with `aliases` as extra DNS names: a Service's name), hostname the pod name, and everything above."""
    args = ["run", "--detach", f"--name={name}", f"--hostname={name}", f"--network={network}"]
    args += [f"--network-alias={alias}" for alias in aliases]
    args += security_args(pod_spec, container, image_user)
    args += resource_args(container)
    args += volume_args(pod_spec, container, host_paths or {})
    for key, value in env.items():
        args.append(f"--env={key}={value}")
    args.append(image or container["image"])
    args += command if command is not None else [*container.get("command", []), *container.get("args", [])]
    return args


def submitter_command(address: str, job_id: str, entrypoint: str) -> list[str]:
    """The K8sJobMode submitter (KubeRay's job.go GetK8sJobCommand and rayjob_controller.go): wait for the GCS through
    the dashboard, submit once (`ray job status` guards a retried submitter), then follow the logs; `bash -ce`."""
    health = f"{address}/api/gcs_healthz"
    probe = (
        'python -c "import urllib.request; '
        f"r=urllib.request.urlopen('{health}', timeout=10); exit(0 if b'success' in r.read() else 1)\""
    )
    script = (
        f'until {probe} >/dev/null 2>&1 ; do echo "Waiting for Ray Dashboard GCS to become healthy at {address} ..." ; '
        f"sleep 2 ; done ; if ! ray job status --address {address} {job_id} >/dev/null 2>&1 ; then "
        f"ray job submit --address {address} --no-wait --submission-id {job_id} -- {entrypoint.strip()} ; fi ; "
        f"ray job logs --address {address} --follow {job_id}"
    )
    return ["/bin/bash", "-ce", "--", script]


def probe_url(ip: str, params: Mapping[str, str]) -> str:
    """The liveness and readiness probe KubeRay 1.7 injects for Ray >= 2.53: an HTTP GET the kubelet sends to the
    pod's address, on the dashboard agent's port."""
    return f"http://{ip}:{params.get('dashboard-agent-listen-port', DEFAULT_DASHBOARD_AGENT_LISTEN_PORT)}/api/healthz"


def legacy_probe(head: bool, params: Mapping[str, str]) -> str:
    """The exec probe KubeRay 1.7 injects for Ray < 2.53 (bash, wget and grep inside the container)."""
    agent = params.get("dashboard-agent-listen-port", DEFAULT_DASHBOARD_AGENT_LISTEN_PORT)
    checks = [f"wget --tries 1 -T 2 -q -O- http://localhost:{agent}/api/local_raylet_healthz | grep success"]
    if head:
        dashboard = params.get("dashboard-port", "8265")
        checks.append(f"wget --tries 1 -T 10 -q -O- http://localhost:{dashboard}/api/gcs_healthz | grep success")
    return " && ".join(checks)

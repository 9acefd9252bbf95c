"""Joining a Ray cluster (--address): checked before anything starts, so a wrong address or token fails in one line.

ray.init alone retries an unreachable address for minutes, and a rejected token for about 20 s before it blames the
network.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

from job.config import ConfigError


def check(address: str | None, timeout: float = 5.0) -> None:
    """Fail at once when --address names a host:port nothing answers on, or a cluster that rejects this machine's
    token."""
    match = re.fullmatch(r"(ray://)?\[?([^\[\]/@]+?)\]?:(\d+)", address or "")
    if not match:
        return  # "auto" or another form Ray resolves itself
    try:
        socket.create_connection((match[2], int(match[3])), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(
            f"cannot reach the Ray cluster at --address {address} ({err.strerror or type(err).__name__}); "
            "check the address, or leave --address out to start a local Ray"
        ) from None
    if not match[1]:  # the GCS itself; a Ray Client server (ray://) checks tokens its own way
        _check_token(address)


def _check_token(address: str) -> None:
    """Ask the cluster's GCS once, with the token ray.init would send: a rejected token fails in a fraction of a
    second, with where the token came from; an endpoint that is not a GCS fails in about 11 s instead of 40."""
    from ray._private.authentication import authentication_token_setup as token_setup
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError, RpcError

    quiet = logging.getLogger(token_setup.__name__)
    level, quiet.level = quiet.level, logging.ERROR  # its "token auth is enabled" notice is not for this user
    try:
        token_setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # as ray.init does
    finally:
        quiet.setLevel(level)
    try:
        # The GCS client logs a refusal to stderr from C++; the ConfigError below says it once.
        with _no_stderr(), _ray_config(py_gcs_connect_timeout_s="1"):
            GcsClient(address=address)
    except AuthenticationError:
        raise ConfigError(
            f"the Ray cluster at --address {address} rejected {_token_source()}; set RAY_AUTH_TOKEN to that "
            "cluster's token (`ray get-auth-token` on its head; on KubeRay: kubectl get secret <ray-cluster> "
            "-o jsonpath='{.data.auth_token}' | base64 -d)"
        ) from None
    except RpcError:
        raise ConfigError(
            f"--address {address} answers, but not as a Ray cluster (no reply from a GCS); give the head's GCS "
            "address, port 6379 unless changed (the dashboard's 8265 is for `ray job submit`)"
        ) from None


def check_every_node_sees(path: str, what: str) -> None:
    """On a cluster of several nodes, fail before any work when a node cannot see `path`, a local path (file:// too)
    that exists here: a node's own disk, unless every node mounts the same file system (NFS, one machine). `what`
    names it for the user ("--output /runs/a"; `path` may be a probe file inside it). Needs ray.init. Object storage
    (s3://, gs://) is seen from everywhere and not checked."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if "://" in path and not path.startswith("file://"):
        return
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return
    local = path.removeprefix("file://")
    look = ray.remote(num_cpus=0, max_retries=0)(os.path.exists)
    seen = ray.get(
        [
            look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(local)
            for n in nodes
        ]
    )
    blind = sorted({node["NodeManagerAddress"] for node, ok in zip(nodes, seen, strict=True) if not ok})
    if blind:
        raise ConfigError(
            f"{what} is on this machine's disk, which the Ray node(s) at {', '.join(blind)} cannot see; use "
            "s3://, gs:// or a file system that every node mounts"
        )


@contextlib.contextmanager
def _ray_config(**settings: str) -> Iterator[None]:
    """Ray's C++ settings for this process, for the duration only (RAY_<name> variables, read by Config)."""
    from ray._raylet import Config

    saved = {name: os.environ.get(f"RAY_{name}") for name in settings}
    os.environ.update({f"RAY_{name}": value for name, value in settings.items()})
    Config.initialize("")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(f"RAY_{name}")
            else:
                os.environ[f"RAY_{name}"] = value
        Config.initialize("")


@contextlib.contextmanager
def _no_stderr() -> Iterator[None]:
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _token_source() -> str:
    """Where Ray takes the token from, in its order, never the token itself."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the token in RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"the token in {os.environ['RAY_AUTH_TOKEN_PATH']} (RAY_AUTH_TOKEN_PATH)"
    default = Path.home() / ".ray" / "auth_token"
    if default.exists():
        return f"the token in {default}"
    return "this machine's request: it has no token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"

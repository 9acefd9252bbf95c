"""The run's configuration: one frozen object per command, validated once, passed unchanged to every worker."""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

TUTORIAL_MODELS = ("mlp", "cnn", "large_cnn")
MODEL_NAMES = (*TUTORIAL_MODELS, "deep_bn_cnn")
DISPLAY_NAMES = {"mlp": "MLP", "cnn": "Simple CNN", "large_cnn": "Large CNN", "deep_bn_cnn": "Deep BN CNN"}
DATASETS = ("mnist", "mnist-sample", "fashion_mnist")
URI_SCHEMES = ("file", "s3", "gs")
MAX_EPOCHS = 1000
MAX_WORKERS = 1024
MAX_ENSEMBLE = 20
ENSEMBLE_SUFFIX = "-ensemble"
MEMBERS_SUFFIX = "-members"  # checkpoints/<run>-members/: the member groups' own Ray Train runs (parallel members)
_RUN_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


class ConfigError(ValueError):
    """A bad user input. The message is one line that says what is wrong and how to fix it."""


def default_run_name() -> str:
    return "mnist-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def check_uri(uri: str, what: str) -> str:
    """Accept a local path or a file://, s3:// or gs:// URI; reject other schemes."""
    if not uri:
        raise ConfigError(f"{what} is empty; give a local path or a file://, s3:// or gs:// URI")
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    if match and match.group(1).lower() not in URI_SCHEMES:
        raise ConfigError(
            f"{what} {uri!r} has the unsupported scheme '{match.group(1)}://'; "
            "use a local path, file://, s3:// or gs://"
        )
    if match and re.match(r"[^/@]*@", uri[match.end() :]):
        raise ConfigError(
            f"{what} {match.group(0)}<hidden>@... carries credentials in the URI; remove them and set "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or GOOGLE_APPLICATION_CREDENTIALS) instead"
        )
    if match and not uri[match.end() :].strip("/"):
        raise ConfigError(f"{what} {uri!r} names no bucket or path; write it as s3://bucket/prefix")
    return uri


def location(uri: str) -> str:
    """The one meaning of a place: a URI (file://, s3://, gs://) as given; a local path absolute, with ~ expanded. The
    output's artifacts, Ray's checkpoints under it and the run log all start from this."""
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def _check_range(name: str, value: float, low: float, high: float, hint: str = "") -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value:g}{hint}")


@dataclass(frozen=True)
class Recipe:
    """How a model trains unless --epochs / --batch-size say otherwise. Adam at `learning_rate`, either constant (the
    tutorial's) or "one-cycle": a linear warm-up from a tenth of it over the first `warmup` share of the steps, then a
    cosine decay to zero at the last step, whatever --epochs is."""

    epochs: int = 10
    batch_size: int = 200
    learning_rate: float = 1e-3
    schedule: str = "constant"  # or "one-cycle"
    warmup: float = 0.0
    augment: bool = False  # random rotations, zooms and shifts (job/augment.py)


# The tutorial models keep the tutorial's settings. deep_bn_cnn (job/models.py) trains with Deotte's augmentation,
# in one cycle of 40 epochs instead of his 45 with exponential decay: 0.28% mean of 3 seeds against 0.37% for 20
# (bench/README.md, "Full MNIST").
RECIPES = {
    "mlp": Recipe(),
    "cnn": Recipe(),
    "large_cnn": Recipe(),
    "deep_bn_cnn": Recipe(
        epochs=40, batch_size=120, learning_rate=3e-3, schedule="one-cycle", warmup=0.15, augment=True
    ),
}


@dataclass(frozen=True)
class TrainConfig:
    models: tuple[str, ...] = TUTORIAL_MODELS
    epochs: int | None = None  # None: each model's recipe (RECIPES)
    batch_size: int | None = None  # global; None: each model's recipe
    workers: int | None = None  # None: 0 locally (Ray Train's local mode: this process; docs/design.md), 2 on a cluster
    gpu: bool = False
    cpus_per_worker: float | None = None  # None: this machine's cores shared out in local mode, 1 on a cluster
    dataset: str = "mnist"
    data_uri: str | None = None
    output: str | None = None  # None: ./artifacts/<run_name>
    run_name: str = field(default_factory=default_run_name)
    seed: int = 7
    ensemble: int = 1  # K > 1: each model trains K members (seeds seed .. seed+K-1) and saves their ensemble
    parallel_members: bool = True  # with Ray workers: the members train at once in worker groups (member_groups)
    address: str | None = None
    overwrite: bool = False
    metrics_port: int = 0
    metrics_linger: float = 0.0
    pushgateway: str | None = None
    max_failures: int = 2
    steps_per_execution: int = 10  # measured: MLP epoch 1.6-1.8 s at 1, 1.25-1.36 s at 10 (2-core CPU)
    start_timeout: float = 120.0
    checkpoint_interval: float = 30.0
    storage_retries: int = 4
    mixed_precision: bool = False
    jit_compile: bool = False
    verbose: bool = False
    log_file: str | None = None  # None: <output>/run.log for a local --output, else ./<run-name>.log

    def __post_init__(self) -> None:
        self._resolve_defaults()
        if not self.models:
            raise ConfigError(f"--models is empty; pick from {','.join(MODEL_NAMES)}")
        for name in self.models:
            if name not in MODEL_NAMES:
                raise ConfigError(f"unknown model {name!r} in --models; pick from {','.join(MODEL_NAMES)}")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"--models lists a model twice: {','.join(self.models)}")
        if self.epochs is not None:
            _check_range("--epochs", self.epochs, 1, MAX_EPOCHS)
        _check_range("--workers", self.workers, 0, MAX_WORKERS, " (0 trains in this process)")
        if self.in_process and self.address:
            raise ConfigError(
                "--workers 0 trains in this process (Ray Train's local mode) and cannot join --address; "
                "give --workers 1 or more"
            )
        if self.batch_size is not None:
            _check_range("--batch-size", self.batch_size, 1, 1_000_000)
            if self.batch_size % max(self.workers, 1):
                raise ConfigError(
                    f"--batch-size {self.batch_size} does not split evenly over {self.workers} workers; "
                    f"use a multiple of {self.workers} (the batch size is global, shared by all workers)"
                )
        for name in self.models:
            if self.recipe(name).batch_size % max(self.workers, 1):
                raise ConfigError(
                    f"{name}'s default global batch {RECIPES[name].batch_size} does not split evenly over "
                    f"{self.workers} workers; pass --batch-size with a multiple of {self.workers}"
                )
            if self.member_groups > 1 and self.recipe(name).batch_size % self.group_workers:
                what = "--batch-size" if self.batch_size else f"{name}'s default global batch"
                raise ConfigError(
                    f"{what} {self.recipe(name).batch_size} does not split evenly over the {self.group_workers} "
                    f"workers of each of {self.member_groups} member groups; pass --batch-size with a multiple of "
                    f"{self.group_workers}, or --no-parallel-members"
                )
        _check_range("--cpus-per-worker", self.cpus_per_worker, 0.1, 512)
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown --dataset {self.dataset!r}; pick from {', '.join(DATASETS)} or give --data-uri")
        if self.data_uri is not None:
            check_uri(self.data_uri, "--data-uri")
        check_uri(self.output, "--output")
        _locate(self, "output", "data_uri", "log_file")
        if not _RUN_NAME.match(self.run_name):
            raise ConfigError(
                f"--run-name {self.run_name!r} is not valid; use 1-63 lowercase letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit"
            )
        _check_range("--seed", self.seed, 0, 2**31 - 1)
        _check_range("--ensemble", self.ensemble, 1, MAX_ENSEMBLE, " (1 = a single model)")
        if self.seed + self.ensemble - 1 > 2**31 - 1:
            raise ConfigError(f"--seed {self.seed} leaves no room for {self.ensemble} member seeds; lower --seed")
        _check_range("--metrics-port", self.metrics_port, 0, 65535, " (0 turns the /metrics server off)")
        _check_range("--metrics-linger", self.metrics_linger, 0, 3600, " (0 = off)")
        if self.pushgateway is not None and not re.match(r"^https?://[^/\s]+", self.pushgateway):
            raise ConfigError(f"--pushgateway {self.pushgateway!r} is not an http(s) URL; write it as http://host:9091")
        if self.pushgateway is not None and (userinfo := re.match(r"^(https?://)[^/@]*@", self.pushgateway)):
            raise ConfigError(
                f"--pushgateway {userinfo[1]}<hidden>@... carries credentials, which would show in logs and in the "
                "chart's entrypoint; use a Pushgateway that needs none (in the cluster, behind a NetworkPolicy)"
            )
        _check_range("--max-failures", self.max_failures, -1, 1000, " (-1 retries forever)")
        _check_range("--steps-per-execution", self.steps_per_execution, 1, 10_000)
        _check_range("--start-timeout", self.start_timeout, 1, 86_400)
        if self.jit_compile and not self.gpu:
            raise ConfigError(
                "--jit-compile needs --gpu: XLA cannot compile the CPU all-reduce of MultiWorkerMirroredStrategy "
                "(CollectiveReduceV2); drop --jit-compile on CPUs"
            )
        _check_range("--storage-retries", self.storage_retries, 1, 20)
        _check_range("--checkpoint-interval", self.checkpoint_interval, 0, 86_400, " (0 checkpoints every epoch)")

    def _resolve_defaults(self) -> None:
        """The defaults that depend on other settings or on the machine: the one place they are computed."""
        local = not self.address
        if self.workers is None:
            object.__setattr__(self, "workers", 0 if local else 2)
        if self.cpus_per_worker is None:
            shared = float(max(1, (os.cpu_count() or 1) // max(self.workers, 1)))
            object.__setattr__(self, "cpus_per_worker", shared if local else 1.0)
        if self.output is None:
            object.__setattr__(self, "output", os.path.join("artifacts", self.run_name))

    @property
    def in_process(self) -> bool:
        """--workers 0: Ray Train's local mode, the training function in this process, no Ray instance."""
        return self.workers == 0

    @property
    def member_groups(self) -> int:
        """How many worker groups train an ensemble's members at once: one per member, up to one per worker. 1: the
        members train one after the other on every worker (in this process, or --no-parallel-members)."""
        return min(self.ensemble, self.workers) if self.parallel_members and self.workers > 1 else 1

    @property
    def group_workers(self) -> int:
        """The Ray Train workers of each member group."""
        return max(self.workers, 1) // self.member_groups

    def group_members(self, group: int) -> tuple[str, ...]:
        """What member group `group` (0-based) trains, one after the other: members group+1, group+1+G, ... of every
        model."""
        return tuple(m for model in self.models for m in self.members(model)[group :: self.member_groups])

    def members(self, model: str) -> tuple[str, ...]:
        """What the workers train for `model`: the model itself, or with --ensemble K its members `<model>-1` .. K."""
        return (model,) if self.ensemble == 1 else tuple(f"{model}-{i}" for i in range(1, self.ensemble + 1))

    @property
    def outputs(self) -> tuple[str, ...]:
        """Every model the run writes, in training order: each model's members, then its `<model>-ensemble`."""
        names: list[str] = []
        for model in self.models:
            names += self.members(model)
            if self.ensemble > 1:
                names.append(model + ENSEMBLE_SUFFIX)
        return tuple(names)

    def recipe(self, name: str) -> Recipe:
        """The recipe of `name` (a model, member or ensemble), with --epochs and --batch-size put in when given."""
        default = RECIPES[model_of(name)]
        return replace(default, epochs=self.epochs or default.epochs, batch_size=self.batch_size or default.batch_size)

    def for_model(self, name: str) -> TrainConfig:
        """This config as a worker trains model or member `name`: its epochs and batch size, and its seed (member i of
        an ensemble: seed + i - 1, so member 1 is the model a run without --ensemble trains)."""
        recipe = self.recipe(name)
        part = _name_parts(name)[1]
        member = int(part) if part.isdigit() else 1
        return replace(self, epochs=recipe.epochs, batch_size=recipe.batch_size, seed=self.seed + member - 1)

    @property
    def log_path(self) -> str:
        if self.log_file:
            return self.log_file
        local = "://" not in self.output or self.output.startswith("file://")
        return f"{self.output.removeprefix('file://').rstrip('/')}/run.log" if local else f"{self.run_name}.log"


def _locate(config: Any, *names: str) -> None:
    for name in names:
        if getattr(config, name):
            object.__setattr__(config, name, location(getattr(config, name)))


def _name_parts(name: str) -> tuple[str, str]:
    """('deep_bn_cnn', '2') for a member, ('deep_bn_cnn', 'ensemble') for an ensemble, ('deep_bn_cnn', '') for a model.
    Model names have no '-', so the first one splits."""
    model, _, part = name.partition("-")
    return model, part


def model_of(name: str) -> str:
    """The model a member (`deep_bn_cnn-2`) or an ensemble (`deep_bn_cnn-ensemble`) is made of."""
    return _name_parts(name)[0]


def is_ensemble(name: str) -> bool:
    return name.endswith(ENSEMBLE_SUFFIX)


def display_name(name: str) -> str:
    """'Deep BN CNN', 'Deep BN CNN #2', 'Deep BN CNN ensemble'."""
    model, part = _name_parts(name)
    return DISPLAY_NAMES[model] + ("" if not part else " ensemble" if is_ensemble(name) else f" #{part}")


def placement(workers: int, gpu: bool) -> str:
    """'on 2 CPU workers', or 'in this process on CPU' for --workers 0: for the plan and the summary."""
    device = "GPU" if gpu else "CPU"
    return f"in this process on {device}" if workers == 0 else f"on {workers} {device} worker{'s' * (workers > 1)}"


def defaults(config_class: type) -> dict[str, Any]:
    """Each field's default (None where it is computed), for the CLI's help and env twins."""
    return {f.name: None if f.default is MISSING else f.default for f in fields(config_class)}


@dataclass(frozen=True)
class EvaluateConfig:
    model_uri: str
    dataset: str = "mnist"
    data_uri: str | None = None
    batch_size: int = 1000

    def __post_init__(self) -> None:
        check_uri(self.model_uri, "--model-uri")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown --dataset {self.dataset!r}; pick from {', '.join(DATASETS)} or give --data-uri")
        if self.data_uri is not None:
            check_uri(self.data_uri, "--data-uri")
        _locate(self, "model_uri", "data_uri")
        _check_range("--batch-size", self.batch_size, 1, 1_000_000)


@dataclass(frozen=True)
class ServeConfig:
    """`mnist-train serve`. The same fields are the `args` of the Ray Serve application `job.serve:app`."""

    model_uri: str
    replicas: int = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_batch_size: int = 32  # requests per model call (@serve.batch); 1 turns batching off
    batch_wait_ms: float = 5.0
    max_digits: int = 1000  # the largest batch one request may carry
    host: str = "127.0.0.1"
    port: int = 8000
    metrics_port: int = 0  # local Ray's metrics export port (its /metrics); 0 = Ray picks one
    address: str | None = None
    haproxy: bool = True  # a local Ray's ingress: HAProxy (Serve's high-throughput mode), else Serve's Python proxy
    verbose: bool = False

    def __post_init__(self) -> None:
        check_uri(self.model_uri, "--model-uri")
        _locate(self, "model_uri")
        _check_range("--replicas", self.replicas, 1, 1000)
        _check_range("--cpus-per-replica", self.cpus_per_replica, 0.01, 512)
        _check_range("--gpus-per-replica", self.gpus_per_replica, 0, 16)
        _check_range("--max-batch-size", self.max_batch_size, 1, 1000, " (1 turns batching off)")
        _check_range("--batch-wait-ms", self.batch_wait_ms, 0, 1000)
        _check_range("--max-digits", self.max_digits, 1, 10_000)
        _check_range("--port", self.port, 1, 65535)
        _check_range("--metrics-port", self.metrics_port, 0, 65535, " (0 lets Ray pick)")
        if not self.host:
            raise ConfigError("--host is empty; use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")

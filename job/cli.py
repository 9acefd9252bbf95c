"""Command line: `mnist-train train|evaluate|serve`. Every flag also reads MNIST_TRAIN_<FLAG> from the environment."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from job import session
from job.config import (
    DATASETS,
    MODEL_NAMES,
    RECIPES,
    ConfigError,
    EvaluateConfig,
    ServeConfig,
    TrainConfig,
    default_run_name,
    defaults,
)
from job.data import DataError
from job.errors import root_cause, sigterm_received, stop_on_sigterm
from job.storage import redact

ENV_PREFIX = "MNIST_TRAIN_"
PROG = "mnist-train"
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class _Parser(argparse.ArgumentParser):
    """Errors are one line on stderr and exit code 2, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true or false")


def _models(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _optional(text: str) -> str | None:
    return text or None


def _optional_int(text: str) -> int | None:
    return int(text) if text.strip() else None


_optional_int.__name__ = "int"  # argparse names the type in its error: "invalid int value: 'ten'"


def _recipe_defaults(field: str) -> str:
    """'10 for mlp, cnn, large_cnn; 30 for deep_bn_cnn': each model's own default, for --help."""
    by_value: dict[int, list[str]] = {}
    for name, recipe in RECIPES.items():
        by_value.setdefault(getattr(recipe, field), []).append(name)
    return "; ".join(f"{value} for {', '.join(names)}" for value, names in by_value.items())


def _add(
    parser: argparse.ArgumentParser, flag: str, type_: Callable[[str], Any], default: Any, help_: str, **kw: Any
) -> None:
    """Add a flag whose default comes from its env-var twin; argparse runs string defaults through `type_`."""
    dest = flag.lstrip("-").replace("-", "_")
    env = env_name(dest)
    if env in os.environ:
        default = os.environ[env]
    shown = "" if default is None else f" (default: {','.join(default) if isinstance(default, tuple) else default})"
    parser.add_argument(flag, dest=dest, type=type_, default=default, help=f"{help_}{shown} [env: {env}]", **kw)


def _add_switch(parser: argparse.ArgumentParser, flag: str, help_: str, default: bool = False) -> None:
    dest = flag.lstrip("-").replace("-", "_")
    env = env_name(dest)
    try:
        default = _bool(os.environ.get(env, str(default).lower()))
    except argparse.ArgumentTypeError as err:
        parser.error(f"{env}: {err}")
    parser.add_argument(
        flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=f"{help_} [env: {env}]"
    )


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the tutorial models with Ray Train",
        description="Train the tutorial models "
        "data-parallel (MultiWorkerMirroredStrategy on Ray Train workers) and write results to --output.",
    )
    d = defaults(TrainConfig)
    _add(p, "--models", _models, d["models"], f"comma-separated models to train, from {','.join(MODEL_NAMES)}")
    _add(
        p,
        "--epochs",
        _optional_int,
        d["epochs"],
        f"epochs for every model; default: each model's own ({_recipe_defaults('epochs')})",
    )
    _add(
        p,
        "--batch-size",
        _optional_int,
        d["batch_size"],
        f"global batch size, split evenly across workers; default: each model's own ({_recipe_defaults('batch_size')})",
    )
    _add(
        p,
        "--workers",
        int,
        d["workers"],
        "Ray Train workers; 0 trains in this process (Ray Train's local mode, no Ray instance); "
        "default: 0 locally (fastest on one machine), 2 on a cluster",
    )
    _add_switch(p, "--gpu", "give each worker one GPU")
    _add(
        p,
        "--cpus-per-worker",
        float,
        d["cpus_per_worker"],
        "CPUs per worker; default: cores/workers locally, 1 on a cluster",
    )
    _add(
        p,
        "--dataset",
        str,
        d["dataset"],
        f"built-in data set: {', '.join(DATASETS)}; mnist falls back to mnist-sample offline",
    )
    _add(
        p,
        "--data-uri",
        _optional,
        d["data_uri"],
        "an .npz or a folder of the four IDX .gz files (path, file://, s3://, gs://)",
    )
    _add(
        p,
        "--output",
        _optional,
        d["output"],
        "where results and models go (path, file://, s3://, gs://); default ./artifacts/<run-name>",
    )
    _add(p, "--run-name", _optional, None, "name of this run, also used to resume it; default mnist-<UTC time>")
    _add(p, "--seed", int, d["seed"], "random seed")
    _add(
        p,
        "--ensemble",
        int,
        d["ensemble"],
        "train K members of each model (seeds seed..seed+K-1) and save the average of their probabilities as "
        "<model>-ensemble; 1 = one model",
    )
    _add_switch(
        p,
        "--parallel-members",
        "with --ensemble K and N Ray workers, train the members at once in min(K, N) worker groups; without it, "
        "one after the other on all N workers",
        default=d["parallel_members"],
    )
    _add(
        p,
        "--address",
        _optional,
        os.environ.get("RAY_ADDRESS"),
        "Ray cluster to join (RAY_ADDRESS also works); none starts a local one",
    )
    _add_switch(p, "--overwrite", "replace a finished run at --output")
    _add(
        p,
        "--metrics-port",
        int,
        d["metrics_port"],
        "serve Prometheus /metrics on each worker at this port, or the next free one (logged); 0 = off",
    )
    _add(
        p,
        "--metrics-linger",
        float,
        d["metrics_linger"],
        "after the run, serve its outcome on --metrics-port until one scrape has read it, at most this many seconds "
        "(for Prometheus without a Pushgateway); 0 = off",
    )
    _add(
        p,
        "--pushgateway",
        _optional,
        d["pushgateway"],
        "Prometheus Pushgateway URL to push metrics to after every epoch",
    )
    _add(
        p,
        "--max-failures",
        int,
        d["max_failures"],
        "worker-group restarts Ray Train may do before the run fails (-1 = no limit)",
    )
    _add(p, "--steps-per-execution", int, d["steps_per_execution"], "training steps per tf.function call")
    _add(
        p, "--start-timeout", float, d["start_timeout"], "seconds to wait for Ray to place the workers before giving up"
    )
    _add(
        p,
        "--checkpoint-interval",
        float,
        d["checkpoint_interval"],
        "seconds of training between checkpoints (also after each model's last epoch); 0 = every epoch",
    )
    _add(p, "--storage-retries", int, d["storage_retries"], "attempts for each write to --output before the run fails")
    _add_switch(p, "--mixed-precision", "compute in float16 on GPUs (bfloat16 on CPUs), keep float32 weights")
    _add_switch(p, "--jit-compile", "compile the training step with XLA")
    _add_switch(p, "--verbose", "show Ray's and TensorFlow's own log lines too (they always go to the log file)")
    _add(p, "--log-file", _optional, d["log_file"], "the run's full log; default <output>/run.log, or ./<run-name>.log")


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="print a saved model's test error",
        description="Load a saved model "
        "(a model.keras file or a run's <model>/ folder) and print its error on a data set's test set.",
    )
    d = defaults(EvaluateConfig)
    _add(p, "--model-uri", _optional, None, "model.keras file or folder holding it (path, file://, s3://, gs://)")
    _add(p, "--dataset", str, d["dataset"], f"built-in data set: {', '.join(DATASETS)}")
    _add(p, "--data-uri", _optional, d["data_uri"], "an .npz or a folder of IDX .gz files")
    _add(p, "--batch-size", int, d["batch_size"], "evaluation batch size")


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a saved model over HTTP with Ray Serve",
        description="Serve a saved model (a model.keras file or a run's <model>/ folder, ensembles included) on "
        "Ray Serve: POST digits (JSON 28x28 arrays of 0-255 pixels, or a PNG) to /predict for classes and "
        "probabilities. Serves until Ctrl-C.",
    )
    d = defaults(ServeConfig)
    _add(p, "--model-uri", _optional, None, "model.keras file or folder holding it (path, file://, s3://, gs://)")
    _add(p, "--replicas", int, d["replicas"], "Ray Serve replicas of the model")
    _add(p, "--cpus-per-replica", float, d["cpus_per_replica"], "CPUs Ray reserves per replica")
    _add(p, "--gpus-per-replica", float, d["gpus_per_replica"], "GPUs per replica (fractions share a GPU)")
    _add(
        p,
        "--max-batch-size",
        int,
        d["max_batch_size"],
        "requests batched into one model call (@serve.batch); 1 turns batching off",
    )
    _add(p, "--batch-wait-ms", float, d["batch_wait_ms"], "how long a batch waits to fill, in milliseconds")
    _add(p, "--max-digits", int, d["max_digits"], "the largest batch one request may carry")
    _add(p, "--host", str, d["host"], "address the HTTP server listens on (0.0.0.0: every interface)")
    _add(p, "--port", int, d["port"], "HTTP port")
    _add(p, "--metrics-port", int, d["metrics_port"], "local Ray's Prometheus /metrics port; 0 lets Ray pick")
    _add(
        p,
        "--address",
        _optional,
        os.environ.get("RAY_ADDRESS"),
        "Ray cluster to deploy on (RAY_ADDRESS also works); none starts a local one",
    )
    _add_switch(
        p,
        "--haproxy",
        "a local Ray's HTTP ingress is HAProxy (Ray Serve's high-throughput mode), not Serve's Python proxy; "
        "a cluster's is set where it starts (default: on)",
        d["haproxy"],
    )
    _add_switch(p, "--verbose", "show Ray's own log lines too")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Train the Keras MNIST tutorial models as a distributed Ray Train job.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,serve}", parser_class=_Parser)
    _train_parser(sub)
    _evaluate_parser(sub)
    _serve_parser(sub)
    return parser


def parse(argv: Sequence[str] | None = None) -> TrainConfig | EvaluateConfig | ServeConfig:
    """Parse flags and env vars into one validated config; bad input exits 2 with one line on stderr."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    try:
        if command in ("evaluate", "serve"):
            if not args["model_uri"]:
                raise ConfigError("--model-uri is required; point it at a model.keras file or a run's <model>/ folder")
            return EvaluateConfig(**args) if command == "evaluate" else ServeConfig(**args)
        args["run_name"] = args["run_name"] or default_run_name()
        return TrainConfig(**args)
    except ConfigError as err:
        parser.exit(2, f"{PROG}: error: {err}\n")


def main(argv: Sequence[str] | None = None, own_session: bool = False) -> int:
    """Run a command; the one place that turns errors into one line on stderr and an exit code. With own_session
    (the `mnist-train` command), a command that starts a local Ray runs in a session of its own (job.session)."""
    config = parse(argv)
    if own_session and _starts_local_ray(config) and (code := session.detach()) is not None:
        return code  # the parent: the command ran in the child
    stop_on_sigterm()
    try:
        if isinstance(config, EvaluateConfig):
            from job import evaluate

            evaluate.run(config)
            return 0
        if isinstance(config, ServeConfig):
            from job import serve

            return serve.run(config)
        return _train(config)
    except (ConfigError, DataError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # the run failed for good: one clear line, no results.json
        if sigterm_received():  # Ray's processes got it too (a process group), and their end raised here first
            return _stopped(config)
        print(f"{PROG}: error: run failed: {redact(root_cause(err))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (errors.Stopped), after every clean-up on the way out
        return _stopped(config)


def _starts_local_ray(config: TrainConfig | EvaluateConfig | ServeConfig) -> bool:
    if isinstance(config, ServeConfig):
        return not config.address
    return isinstance(config, TrainConfig) and not config.address and not config.in_process


def _stopped(config: TrainConfig | EvaluateConfig | ServeConfig) -> int:
    how, signum = ("SIGTERM", signal.SIGTERM) if sigterm_received() else ("interrupted", signal.SIGINT)
    again = "; the same command resumes the run" if isinstance(config, TrainConfig) else ""
    print(f"{PROG}: stopped ({how}){again}", file=sys.stderr)
    return 128 + signum


def _train(config: TrainConfig) -> int:
    from job import console, metrics, storage, train

    storage.set_attempts(config.storage_retries)
    dataset = train.check_inputs(config)
    started, status, tests = time.time(), "failed", {}
    log = console.setup(Path(config.log_path), config.verbose)
    print(f"log: {config.log_path}", flush=True)
    endpoint = metrics.DriverEndpoint.start(config, started)
    try:
        results = train.run(config, dataset, log)
        status = "succeeded"
        tests = {name: (m["test_loss"], m["test_error"]) for name, m in results["models"].items()}
    except BaseException as err:
        what = "stopped" if isinstance(err, KeyboardInterrupt) else "failed"
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR {PROG}: run {what}\n{traceback.format_exc()}")
        raise
    finally:
        metrics.publish_run_end(config, status, tests, started_at=started, finished_at=time.time(), endpoint=endpoint)
        log.flush()
        storage.keep_log(config.log_path, config.output)
        log.close()
    return 0


def entry() -> NoReturn:
    """The `mnist-train` command. Python's last garbage collection at exit walks every object Ray, TensorFlow and
    matplotlib made, about 0.5 s for nothing; it skips the objects frozen here."""
    code = main(own_session=True)
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()

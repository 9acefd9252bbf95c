"""CLI and config: flags and MNIST_TRAIN_* env twins give one frozen config; bad input is one line and exit 2."""

import dataclasses
import os
import subprocess
import sys

import pytest

from job import cli
from job.config import ConfigError, TrainConfig


def parse(argv, monkeypatch=None, env=None):
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    return cli.parse(argv)


def test_defaults_are_the_tutorials() -> None:
    config = cli.parse(["train"])
    assert (config.epochs, config.batch_size) == (None, None)  # each model's recipe
    assert [(config.recipe(n).epochs, config.recipe(n).batch_size) for n in config.models] == [(10, 200)] * 3
    assert config.seed == 7
    assert config.models == ("mlp", "cnn", "large_cnn") and config.dataset == "mnist"
    assert config.output == os.path.abspath(f"artifacts/{config.run_name}")  # made absolute once (config.location)
    # Computed defaults: locally, this process (Ray Train's local mode) with every core (measured fastest there);
    # two workers on a cluster.
    assert (config.workers, config.cpus_per_worker) == (0, float(os.cpu_count() or 1)) and config.in_process
    cluster = cli.parse(["train", "--address", "10.0.0.1:6379"])
    assert (cluster.workers, cluster.cpus_per_worker) == (2, 1.0)
    assert not cluster.in_process
    assert TrainConfig(output="/tmp/x").workers == 0  # a config built in code is resolved the same way
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3


def test_env_twins_give_the_same_config_as_flags(monkeypatch) -> None:
    flags = cli.parse(
        [
            "train",
            "--models",
            "mlp,cnn",
            "--epochs",
            "3",
            "--batch-size",
            "100",
            "--workers",
            "4",
            "--gpu",
            "--output",
            "s3://b/r",
            "--run-name",
            "r1",
            "--metrics-port",
            "9100",
        ]
    )
    env = {
        "MNIST_TRAIN_MODELS": "mlp,cnn",
        "MNIST_TRAIN_EPOCHS": "3",
        "MNIST_TRAIN_BATCH_SIZE": "100",
        "MNIST_TRAIN_WORKERS": "4",
        "MNIST_TRAIN_GPU": "true",
        "MNIST_TRAIN_OUTPUT": "s3://b/r",
        "MNIST_TRAIN_RUN_NAME": "r1",
        "MNIST_TRAIN_METRICS_PORT": "9100",
    }
    assert parse(["train"], monkeypatch, env) == flags
    assert parse(["train", "--epochs", "5"], monkeypatch, env).epochs == 5  # a flag wins over its env twin


def test_each_model_trains_with_its_own_recipe_unless_flags_say_otherwise(monkeypatch) -> None:
    config = parse(["train", "--models", "mlp,deep_bn_cnn", "--workers", "2"])
    assert (config.for_model("mlp").epochs, config.for_model("mlp").batch_size) == (10, 200)
    assert (config.for_model("deep_bn_cnn").epochs, config.for_model("deep_bn_cnn").batch_size) == (40, 120)
    assert config.for_model("deep_bn_cnn").batch_size // config.workers == 60
    explicit = parse(["train", "--models", "mlp,deep_bn_cnn", "--epochs", "4", "--batch-size", "60"])
    assert {(explicit.recipe(n).epochs, explicit.recipe(n).batch_size) for n in explicit.models} == {(4, 60)}
    assert explicit.recipe("deep_bn_cnn").augment and explicit.recipe("deep_bn_cnn").schedule == "one-cycle"
    by_env = parse(["train", "--models", "deep_bn_cnn"], monkeypatch, {"MNIST_TRAIN_EPOCHS": "5"})
    assert by_env.recipe("deep_bn_cnn").epochs == 5
    empty_env = parse(["train", "--models", "deep_bn_cnn"], monkeypatch, {"MNIST_TRAIN_EPOCHS": ""})
    assert empty_env.epochs is None and empty_env.recipe("deep_bn_cnn").epochs == 40


def test_an_ensemble_trains_seeded_members_then_writes_their_average(monkeypatch) -> None:
    config = parse(["train", "--models", "cnn,deep_bn_cnn", "--ensemble", "3", "--seed", "40", "--epochs", "2"])
    assert config.members("cnn") == ("cnn-1", "cnn-2", "cnn-3")
    assert config.outputs == ("cnn-1", "cnn-2", "cnn-3", "cnn-ensemble",
                              "deep_bn_cnn-1", "deep_bn_cnn-2", "deep_bn_cnn-3", "deep_bn_cnn-ensemble")  # fmt: skip
    assert [config.for_model(m).seed for m in config.members("deep_bn_cnn")] == [40, 41, 42]
    assert config.for_model("deep_bn_cnn-2").batch_size == 120 and config.recipe("deep_bn_cnn-ensemble").augment
    single = parse(["train", "--models", "cnn"])
    assert single.outputs == single.members("cnn") == ("cnn",) and single.for_model("cnn").seed == 7
    assert parse(["train"], monkeypatch, {"MNIST_TRAIN_ENSEMBLE": "3"}).ensemble == 3


def test_ensemble_members_train_at_once_in_one_worker_group_per_member_up_to_one_per_worker() -> None:
    def groups(*argv: str) -> tuple[int, int, list[tuple[str, ...]]]:
        config = cli.parse(["train", "--models", "cnn,mlp", "--address", "10.0.0.1:6379", *argv])
        groups = config.member_groups
        return groups, config.group_workers, [config.group_members(g) for g in range(groups)]

    assert groups("--ensemble", "2", "--workers", "2") == (2, 1, [("cnn-1", "mlp-1"), ("cnn-2", "mlp-2")])
    assert groups("--ensemble", "3", "--workers", "2") == (2, 1, [("cnn-1", "cnn-3", "mlp-1", "mlp-3"),
                                                                    ("cnn-2", "mlp-2")])  # fmt: skip
    assert groups("--ensemble", "2", "--workers", "4")[:2] == (2, 2)
    assert groups("--ensemble", "2", "--workers", "5")[:2] == (2, 2)  # the fifth worker has no group
    assert groups("--ensemble", "3", "--workers", "1")[:2] == (1, 1)
    assert groups("--ensemble", "3", "--workers", "4", "--no-parallel-members")[:2] == (1, 4)
    assert groups("--workers", "4")[:2] == (1, 4)  # no ensemble: the single-model path
    assert cli.parse(["train", "--ensemble", "3"]).member_groups == 1  # in this process: one after the other
    with pytest.raises(ConfigError, match=r"--batch-size 5 does not split evenly over the 2 workers of each of 2 "):
        TrainConfig(address="10.0.0.1:6379", workers=5, ensemble=2, batch_size=5)


def test_workers_that_no_member_group_gets_are_named_with_the_fix(capsys, caplog) -> None:
    from job.data import load
    from job.train import _print_plan

    sample = load("mnist-sample")
    for workers, idle in ((4, 1), (6, 0)):
        caplog.clear()
        config = cli.parse(["train", "--models", "cnn", "--ensemble", "3", "--workers", str(workers),
                            "--address", "10.0.0.1:6379", "--batch-size", "240"])  # fmt: skip
        _print_plan(config, sample)
        assert f"members train at once in 3 groups of {workers // 3} worker" in capsys.readouterr().out
        warned = [r.getMessage() for r in caplog.records if "idle" in r.getMessage()]
        expected = ["1 of 4 workers idle: 3 member groups of 1; pass --workers a multiple of 3"]
        assert warned == (expected if idle else [])


def test_every_flag_has_a_documented_env_twin() -> None:
    parser = cli.build_parser()
    for sub in parser._subparsers._group_actions[0].choices.values():
        for action in sub._actions:
            if action.dest != "help":
                assert f"[env: {cli.env_name(action.dest)}]" in action.help


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--epochs", "0"], {}, "--epochs must be between 1 and 1000, got 0"),
        (["--epochs", "-3"], {}, "--epochs must be between 1 and 1000, got -3"),
        (["--epochs", "100000"], {}, "--epochs must be between 1 and 1000, got 100000"),
        (["--workers", "-1"], {}, "--workers must be between 0 and 1024, got -1"),
        (["--workers", "0", "--address", "10.0.0.1:6379"], {}, "--workers 0 trains in this process"),
        (["--workers", "4", "--batch-size", "2"], {}, "--batch-size 2 does not split evenly over 4 workers"),
        (
            ["--models", "deep_bn_cnn", "--workers", "7"],
            {},
            "deep_bn_cnn's default global batch 120 does not split evenly over 7 workers; pass --batch-size with a "
            "multiple of 7",
        ),
        (["--epochs", "ten"], {}, "argument --epochs: invalid int value: 'ten'"),
        (["--models", "mlp,resnet"], {}, "unknown model 'resnet' in --models; pick from mlp,cnn,large_cnn"),
        (["--dataset", "cifar10"], {}, "unknown --dataset 'cifar10'"),
        (["--output", "ftp://host/x"], {}, "--output 'ftp://host/x' has the unsupported scheme 'ftp://'"),
        (["--data-uri", "hdfs://nn/x.npz"], {}, "--data-uri 'hdfs://nn/x.npz' has the unsupported scheme 'hdfs://'"),
        (["--metrics-port", "70000"], {}, "--metrics-port must be between 0 and 65535"),
        (["--run-name", "Bad Name"], {}, "--run-name 'Bad Name' is not valid"),
        (["--pushgateway", "gateway:9091"], {}, "--pushgateway 'gateway:9091' is not an http(s) URL"),
        ([], {"MNIST_TRAIN_EPOCHS": "0"}, "--epochs must be between 1 and 1000, got 0"),
        ([], {"MNIST_TRAIN_WORKERS": "two"}, "argument --workers: invalid int value: 'two'"),
        ([], {"MNIST_TRAIN_GPU": "maybe"}, "MNIST_TRAIN_GPU: 'maybe' is not a boolean"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, argv, env, message) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(["train", *argv], monkeypatch, env)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert message in err and err.startswith("mnist-train: error: ")
    assert err.count("\n") == 1


def test_bad_input_stops_before_ray_starts(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "job", "train", "--epochs", "0", "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == "mnist-train: error: --epochs must be between 1 and 1000, got 0\n"
    assert not (tmp_path / "o").exists()


def test_config_validates_directly_too() -> None:
    with pytest.raises(ValueError, match="--workers must be between"):
        TrainConfig(workers=-1, output="o")

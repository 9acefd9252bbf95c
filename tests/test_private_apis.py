"""Every private Ray and TensorFlow name the job relies on, with where and why. A Ray or TensorFlow upgrade that moves
one fails here, loudly, with the reason, instead of somewhere in a run. The list is also the inventory: each row is a
bet on code its owners may change in any release (docs/design.md, "Private Ray and TensorFlow code")."""

from __future__ import annotations

import importlib
import inspect

import pytest

# (module, attribute or None, used by, why)
PRIVATE = [
    ("ray._common.network_utils", "build_address", "job/backend.py",
     "TF_CONFIG's worker addresses, as ray.train.tensorflow builds them (IPv6 in brackets)"),
    ("ray.train._internal.utils", "get_address_and_port", "job/backend.py",
     "each worker's address and a free port for TF_CONFIG, as ray.train.tensorflow does"),
    ("ray.train.v2._internal.util", "TrainingFramework", "job/backend.py",
     "the backend's framework tag; the backend replaces ray.train.tensorflow's, whose package imports TensorFlow "
     "in the driver and the controller (about 9 s of every run's start)"),
    ("ray._private.authentication.authentication_token_setup", "maybe_enable_token_auth_if_token_available",
     "job/cluster.py", "the token ray.init would send, to check --address in under a second (else about 20 s and "
     "a misleading 'Failed to connect')"),
    ("ray._raylet", "GcsClient", "job/cluster.py", "one GCS request that checks --address and its token"),
    ("ray._raylet", "Config", "job/cluster.py", "a 1 s GCS connect timeout for that check only"),
    ("ray._private.ray_logging", "global_worker_stdstream_dispatcher", "job/console.py",
     "the workers' forwarded output: the job's lines to the console, the rest to the run log"),
    ("tensorflow.python.data.ops.multi_device_iterator_ops", "_create_device_dataset", "job/devices.py",
     "MWMS's per-device datasets without tf.data's autotuner (fit returned 19 s after the other worker's)"),
    ("tensorflow.python.util._pywrap_util_port", "IsMklEnabled", "job/devices.py",
     "whether oneDNN is on in the process, for results.json and mnist_train_info (TensorFlow decides per CPU)"),
    ("ray.train.v2._internal.execution.train_fn_utils", "LocalTrainFnUtils", "job/inprocess.py",
     "--workers 0: Ray Train's local mode, with its checkpoints persisted for resume"),
    ("ray.train.v2._internal.execution.train_fn_utils", "set_train_fn_utils", "job/inprocess.py",
     "installs the persisting local-mode utilities"),
    ("ray.train.v2._internal.execution.scaling_policy", "FixedScalingPolicy", "job/raytrain.py",
     "no autoscaler requests on a private local Ray (1.5-1.8 s of every local start)"),
    ("ray.train.v2._internal.callbacks.datasets", "DatasetsCallback", "job/raytrain.py",
     "no DatasetManager actor: the job passes no Ray Datasets"),
    ("ray.train.v2._internal.callbacks.placement_group_callback", "PlacementGroupCleanerCallback", "job/raytrain.py",
     "no placement-group cleaner on a private local Ray (a warning a second, 12 s to stop at the end)"),
]  # fmt: skip

# Methods the job overrides or calls: a rename would silently turn an override into dead code.
METHODS = [
    ("ray.train.v2.api.data_parallel_trainer", "DataParallelTrainer", "_create_default_callbacks", "job/raytrain.py"),
    ("ray.train.v2.api.data_parallel_trainer", "DataParallelTrainer", "_initialize_and_run_controller",
     "job/raytrain.py"),
    ("ray.train.v2._internal.execution.scaling_policy", "FixedScalingPolicy", "after_controller_start",
     "job/raytrain.py"),
    ("ray.train.v2._internal.execution.scaling_policy", "FixedScalingPolicy", "_maybe_send_resource_request",
     "job/raytrain.py"),
    ("ray.train.v2._internal.execution.train_fn_utils", "LocalTrainFnUtils", "report", "job/inprocess.py"),
]  # fmt: skip


@pytest.mark.parametrize(("module", "name", "user", "why"), PRIVATE, ids=[f"{m}.{n}" for m, n, _, _ in PRIVATE])
def test_a_private_name_the_job_uses_is_still_there(module: str, name: str, user: str, why: str) -> None:
    try:
        found = importlib.import_module(module)
    except ImportError as err:
        pytest.fail(f"{user} imports {module}, gone in this version ({err}); it is there for: {why}")
    assert hasattr(found, name), f"{user} uses {module}.{name}, gone in this version; it is there for: {why}"


@pytest.mark.parametrize(("module", "cls", "method", "user"), METHODS, ids=[f"{c}.{m}" for _, c, m, _ in METHODS])
def test_a_private_method_the_job_overrides_is_still_there(module: str, cls: str, method: str, user: str) -> None:
    owner = getattr(importlib.import_module(module), cls)
    assert inspect.isfunction(getattr(owner, method, None)), (
        f"{user} overrides or calls {cls}.{method}, gone in this version: the override would do nothing"
    )


def test_the_inventory_names_every_private_import_of_the_job() -> None:
    """A new private import must come with its row here."""
    import re

    from support import ROOT

    listed = {module for module, *_ in PRIVATE} | {module for module, *_ in METHODS}
    private = r"(?:from|import) ((?:ray|tensorflow)(?:\.\w+)*?\._\w+(?:\.\w+)*|tensorflow\.python(?:\.\w+)*)"
    found = {name for path in (ROOT / "job").glob("*.py") for name in re.findall(private, path.read_text())}
    assert "ray._raylet" in found and "tensorflow.python.data.ops" in found  # the search works
    unlisted = sorted(f for f in found if not any(m == f or m.startswith(f + ".") for m in listed))
    assert not unlisted, f"private imports without a row in PRIVATE: {unlisted}"

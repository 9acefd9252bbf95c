"""The worker's devices and distribution strategy: check the GPU Ray assigned is really there, then build the strategy.

Runs in the workers only (TensorFlow).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from job.config import TrainConfig

log = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    """The worker cannot train on the devices it was given; the message says why and how to fix it."""


def make_strategy(config: TrainConfig, workers: int) -> tuple[Any, dict[str, Any]]:
    """MultiWorkerMirroredStrategy with NCCL on GPUs and the ring on CPUs, plus what this worker trains on.

    One worker on one device has nothing to mirror, so it gets TensorFlow's default strategy.
    """
    import tensorflow as tf

    gpus = check_gpus(config.gpu)
    info = describe(gpus)
    if config.mixed_precision:
        import tf_keras

        tf_keras.mixed_precision.set_global_policy("mixed_float16" if config.gpu else "mixed_bfloat16")
    if workers == 1 and len(gpus) <= 1:
        return tf.distribute.get_strategy(), {**info, "collective": "none"}
    implementation = tf.distribute.experimental.CommunicationImplementation
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=implementation.NCCL if config.gpu else implementation.RING
    )
    per_device_data_without_autotune()
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return strategy, {**info, "collective": "nccl" if config.gpu else "ring"}


def data_options() -> Any:
    """tf.data options for every pipeline the workers iterate: without the autotuner or the default optimizations.

    An iterator's end cancels its autotune thread, but TensorFlow marks the cancellation done only after waking the
    thread, so the thread can miss it and sleep out its period (which doubles up to 60 s) while the main thread waits
    to join it. That left `fit` idle for up to 60 s when it returned (bench/README.md). Without the autotuner, the
    parallel map uses one thread per core.

    The default optimizations rewrite a pipeline through its serialized graph, which holds a copy of every tensor
    its functions capture: the training set, once per epoch of a `fit` call (+470 MB per worker on Fashion-MNIST).
    None of them changes this job's pipelines (batch, then a parallel map, then prefetch): epochs took as long.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    return options


def per_device_data_without_autotune() -> None:
    """MWMS copies each batch to its devices through per-device datasets built with default options, so the autotuner
    runs there whatever the input's options say (one worker's `fit` returned 19 s after the other's). TensorFlow has
    no option for them: wrap the private function that builds them. Without it (another TF version), training works
    but may stall when `fit` ends."""
    from tensorflow.python.data.ops import multi_device_iterator_ops as per_device

    build = getattr(per_device, "_create_device_dataset", None)
    if build is None:
        log.warning("TensorFlow lacks multi_device_iterator_ops._create_device_dataset: its autotuner stays on")
        return

    def without_autotune(*args: Any, **kwargs: Any) -> Any:
        return build(*args, **kwargs).with_options(data_options())

    per_device._create_device_dataset = without_autotune


def preflight() -> dict[str, Any]:
    """Run as a Ray task holding one GPU, before the workers start: fail in seconds, not after Ray's retries."""
    return describe(check_gpus(True))


def check_gpus(want_gpu: bool) -> list[Any]:
    """The GPUs TensorFlow sees; with --gpu, fail when Ray assigned GPUs that TensorFlow cannot use."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if want_gpu and not gpus:
        assigned = os.environ.get("CUDA_VISIBLE_DEVICES")  # None in this process (--workers 0): Ray assigned none
        if not tf.test.is_built_with_cuda():
            why = "this TensorFlow build has no CUDA support; install tensorflow[and-cuda] (the GPU image has it)"
        else:
            why = (
                "no CUDA device or CUDA libraries found; use the GPU image (tensorflow[and-cuda]) on a node with a "
                "working NVIDIA driver"
            )
        given = "--gpu was given" if assigned is None else f"Ray assigned GPU {assigned} to this worker"
        raise DeviceError(f"{given} but TensorFlow sees no GPU: {why}; refusing to train on CPU")
    return gpus


def describe(gpus: list[Any]) -> dict[str, Any]:
    """What this worker trains on, for results.json and the _info metric."""
    import tensorflow as tf

    if not gpus:
        return {"type": "CPU", "name": "cpu", "count": 1, "onednn": onednn()}
    names = {tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus}
    return {"type": "GPU", "name": ", ".join(sorted(names)), "count": len(gpus), "onednn": onednn()}


def onednn() -> bool | None:
    """Whether TensorFlow's CPU ops run on oneDNN in this process (TF_ENABLE_ONEDNN_OPTS, else TensorFlow's choice
    for this CPU); None where TensorFlow no longer says (a private function: tests/test_private_apis.py)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())

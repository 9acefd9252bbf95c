"""The worker's devices and distribution strategy: check the GPU Ray assigned is really there, then build the strategy.

Runs in the workers only (TensorFlow).
"""

from __future__ import annotations

import os
from typing import Any

from job.config import TrainConfig


class DeviceError(RuntimeError):
    """The worker cannot train on the devices it was given; the message says why and how to fix it."""


def make_strategy(config: TrainConfig, workers: int) -> tuple[Any, dict[str, Any]]:
    """MultiWorkerMirroredStrategy with NCCL on GPUs and the ring on CPUs, plus what this worker trains on.

    One worker on one device has nothing to mirror, so it gets TensorFlow's default strategy: MWMS would feed each step
    through a multi-device iterator, whose tf.data autotuner left `fit` idle for up to 60 s when it returned
    (bench/README.md).
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
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return strategy, {**info, "collective": "nccl" if config.gpu else "ring"}


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
        return {"type": "CPU", "name": "cpu", "count": 1}
    names = {tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus}
    return {"type": "GPU", "name": ", ".join(sorted(names)), "count": len(gpus)}

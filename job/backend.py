"""Ray Train's TensorFlow backend, without importing TensorFlow where no training happens.

`ray.train.tensorflow.TensorflowConfig` lives in a package whose `__init__` imports TensorFlow, so the driver and Ray's
Train controller (which unpickles the backend config) each spent about 4 s of start-up importing it. This backend does
what Ray's does: give every worker a TF_CONFIG that lists all workers' addresses, and its own index.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import ray
from ray._common.network_utils import build_address
from ray.train._internal.utils import get_address_and_port
from ray.train.backend import Backend, BackendConfig
from ray.train.v2._internal.util import TrainingFramework


@dataclass
class TensorflowConfig(BackendConfig):
    @property
    def backend_cls(self) -> type[Backend]:
        return _TensorflowBackend

    @property
    def framework(self) -> TrainingFramework:
        return TrainingFramework.TENSORFLOW


def _set_tf_config(worker_addresses: list[str], index: int) -> None:
    cluster = {"cluster": {"worker": worker_addresses}, "task": {"type": "worker", "index": index}}
    os.environ["TF_CONFIG"] = json.dumps(cluster)


def _address() -> str:
    return build_address(*get_address_and_port())


class _TensorflowBackend(Backend):
    def on_start(self, worker_group, backend_config: TensorflowConfig) -> None:
        addresses = worker_group.execute(_address)
        ray.get(
            [
                worker_group.execute_single_async(i, _set_tf_config, worker_addresses=addresses, index=i)
                for i in range(len(worker_group))
            ]
        )

"""Ray Train's trainer without the parts this job has no use for; each one is one more actor process to start.

Ray Train's controller unpickles `LocalScalingPolicy` before it starts anything, so at the top this module imports
only what the controller has already loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy

if TYPE_CHECKING:
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer


class LocalScalingPolicy(FixedScalingPolicy):
    """A fixed worker count that sends no resource requests. On a cluster they tell Ray's autoscaler what training
    needs; a private local Ray has no autoscaler, and the first request starts the AutoscalingCoordinator actor,
    whose process the controller waits for before it asks for the workers (1.5-1.8 s of every local start)."""

    def after_controller_start(self, train_run_context: Any) -> None:
        pass

    def _maybe_send_resource_request(self) -> None:
        pass

    def _send_resource_request(self) -> None:
        pass


def trainer_class(local: bool) -> type[DataParallelTrainer]:
    """DataParallelTrainer without:

    - the DatasetManager: this job passes no Ray Datasets, yet Ray Train starts one for every run;
    - on the private local Ray only, the PlacementGroupCleaner and the autoscaling coordinator (LocalScalingPolicy).
      The cleaner removes a run's placement group if the Train controller dies while the cluster lives on; a private
      local Ray ends with the driver. It also polls the State API, which lives in the Ray dashboard: without one it
      logged a warning every second, and stopping it took 12 s at the end of every run.
    """
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    unused = (DatasetsCallback, PlacementGroupCleanerCallback) if local else (DatasetsCallback,)

    class Trainer(DataParallelTrainer):
        def _create_default_callbacks(self) -> list:
            return [c for c in super()._create_default_callbacks() if not isinstance(c, unused)]

        def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
            if local:
                controller_init_kwargs["scaling_policy"] = LocalScalingPolicy(self.scaling_config)
            return super()._initialize_and_run_controller(**controller_init_kwargs)

    return Trainer

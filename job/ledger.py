"""What the training steps really consumed, counted from the batches themselves (workers only, TensorFlow).

The training data carries each example's id. Every training step adds its ids to a per-example use count and its batch
size to a per-step count. Both are sync-on-read sums: each replica counts locally with no communication per step, and
reading them at the end of an epoch sums over every replica of every worker. An epoch that did not use each example
at most once, or whose steps did not each train on the global batch, fails the run instead of training silently wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class ConsumptionError(RuntimeError):
    """The training steps did not consume what data-parallel training promises."""


@dataclass(frozen=True)
class EpochUse:
    examples: int  # examples trained on, over all workers
    distinct: int  # different examples among them
    max_uses: int  # the most times one example was used
    steps: int
    batch_min: int  # smallest and largest global batch of a step
    batch_max: int
    local_examples: int  # examples this worker trained on

    def summary(self, seconds: float) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "distinct_examples": self.distinct,
            "max_uses": self.max_uses,
            "steps": self.steps,
            "global_batch_min": self.batch_min,
            "global_batch_max": self.batch_max,
            "samples_per_second": round(self.examples / seconds, 1) if seconds > 0 else 0.0,
        }


class Ledger:
    """Create under `strategy.scope()` and `attach` to a model; every worker calls `close_epoch` after each epoch."""

    def __init__(self, examples: int, steps: int) -> None:
        import tensorflow as tf

        sync = {
            "synchronization": tf.VariableSynchronization.ON_READ,
            "aggregation": tf.VariableAggregation.SUM,
            "trainable": False,
        }
        self.examples, self.steps = examples, steps
        self.uses = tf.Variable(tf.zeros([examples], tf.int32), name="ledger_uses", **sync)
        # One slot per planned step, and one more that catches any step beyond the plan.
        self.step_batch = tf.Variable(tf.zeros([steps + 1], tf.int32), name="ledger_step_batch", **sync)
        self.step = tf.Variable(0, name="ledger_step", **sync)

    def attach(self, model: Any) -> None:
        """Make the model's training step record its batch; the model itself (and what is saved of it) is unchanged."""
        train_step = model.train_step

        def counted_train_step(data: tuple[Any, Any, Any]) -> Any:
            x, y, ids = data
            self._record(ids)
            return train_step((x, y))

        model.train_step = counted_train_step

    def _record(self, ids: Any) -> None:
        import tensorflow as tf

        ids = tf.cast(ids, tf.int32)
        size = tf.size(ids)
        self.uses.assign_add(tf.math.unsorted_segment_sum(tf.ones_like(ids), ids, self.examples))
        slot = tf.minimum(self.step, self.steps)
        self.step_batch.assign_add(tf.one_hot(slot, self.steps + 1, dtype=tf.int32) * size)
        self.step.assign_add(1)

    def close_epoch(self, epoch: int, expected: int, global_batch: int) -> EpochUse:
        """Read the epoch's counts (a collective: every worker calls this), check them, and reset for the next epoch."""
        uses = self.uses.numpy()
        per_step = self.step_batch.numpy()
        local = sum(int(np.sum(v.numpy())) for v in getattr(self.uses, "values", [self.uses]))  # this worker only
        for variable in (self.uses, self.step_batch, self.step):
            variable.assign(np.zeros(variable.shape, np.int32))
        used = EpochUse(
            examples=int(uses.sum()),
            distinct=int(np.count_nonzero(uses)),
            max_uses=int(uses.max(initial=0)),
            steps=int(np.count_nonzero(per_step[: self.steps])),
            batch_min=int(per_step[: self.steps].min()),
            batch_max=int(per_step.max()),
            local_examples=local,
        )
        if used.examples != expected or used.max_uses > 1 or per_step[self.steps] or used.batch_min != global_batch:
            raise ConsumptionError(
                f"epoch {epoch} trained on {used.examples} examples ({used.distinct} distinct, up to {used.max_uses} "
                f"uses each) in steps of {used.batch_min}-{used.batch_max}; expected {expected} examples, each once, "
                f"in steps of {global_batch}"
            )
        return used

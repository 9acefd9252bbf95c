"""The checkpoint format: written by the chief every epoch, read by the workers (resume) and the driver (artifacts).

A checkpoint folder holds `state.json` (finished models with their history and test results, the model in progress and
its finished epochs), `current/ckpt*` (a tf.train.Checkpoint of the model in progress: weights and optimizer), and for
every finished model `<model>/model.keras` and `<model>/saved_model/`. Each folder is complete on its own.
No TensorFlow here: the driver reads this module.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
CURRENT = "current/ckpt"
MODEL_FILE = "model.keras"
SAVED_MODEL = "saved_model"


@dataclass
class RunState:
    """Progress that survives a restart: finished models and the epochs done on the current one."""

    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    current: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    model_dirs: dict[str, Path] = field(default_factory=dict, repr=False)  # finished models' exported files

    @classmethod
    def load(cls, folder: Path) -> RunState:
        state = cls(**json.loads((folder / STATE_FILE).read_text()))
        state.model_dirs = {name: folder / name for name in state.finished}
        return state

    def save(self, folder: Path) -> None:
        """Write state.json and copy every finished model in, so the folder is a complete checkpoint."""
        for name, source in self.model_dirs.items():
            if source.resolve() != (folder / name).resolve():
                shutil.copytree(source, folder / name, dirs_exist_ok=True)
        fields = {"finished": self.finished, "current": self.current, "history": self.history}
        (folder / STATE_FILE).write_text(json.dumps(fields, indent=1))

    def start(self, name: str) -> None:
        self.current, self.history = name, []

    def finish(self, name: str, results: dict[str, Any], model_dir: Path) -> None:
        self.finished[name] = {"history": self.history, **results}
        self.model_dirs[name] = model_dir
        self.current, self.history = None, []

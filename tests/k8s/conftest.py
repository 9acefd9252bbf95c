"""k8s/kind_e2e.py is a script, not a package module: put k8s/ on sys.path, as running the script does, so that the
tests import it (`import kind_e2e`) and its modules (`from e2e import ...`) by those names."""

from __future__ import annotations

import sys
from pathlib import Path

K8S = str(Path(__file__).resolve().parents[2] / "k8s")
if K8S not in sys.path:
    sys.path.insert(0, K8S)

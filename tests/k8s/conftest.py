"""Loads k8s/kind_e2e.py (a script, not a package module) once for the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "k8s" / "kind_e2e.py"


@pytest.fixture(scope="session")
def e2e() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kind_e2e", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["kind_e2e"] = module  # dataclasses/enums look their module up here
    spec.loader.exec_module(module)
    return module

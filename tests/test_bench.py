"""The benchmark scripts are not run by the tests (they time real training for minutes to hours), but each one must
still start: its imports (bench/benchlib, its sibling modules) resolve and its flags parse."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import ROOT

SCRIPTS = sorted(p for p in (ROOT / "bench").glob("*.py") if "def main" in p.read_text())


def test_every_script_with_a_main_is_found() -> None:
    assert {"mlp_fashion.py", "mnist_full.py", "serve_load.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_script_starts_and_explains_its_flags(script) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ") and "--" in done.stdout

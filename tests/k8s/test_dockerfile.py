"""The Dockerfile installs the package exactly the way CI does, on the pinned Ray image, as the non-root user."""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comment lines dropped and line continuations joined."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.M)]


def args_of(kind: str) -> list[str]:
    return [value for name, value in instructions(REPO / "Dockerfile") if name == kind]


def pinned(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert match, f"{package} is not pinned in constraints.txt"
    return match[1]


def ignored(path: str, patterns: list[str]) -> bool:
    """Enough of .dockerignore's matching for this repo: a pattern matches the path or one of its parents."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
        for pattern in patterns
        for prefix in prefixes + parts
    )


def test_base_image_is_the_pinned_ray_version() -> None:
    (base,) = [a for a in args_of("ARG") if a.startswith("BASE_IMAGE=")]
    assert base == f"BASE_IMAGE=rayproject/ray:{pinned('ray')}-py311-gpu"
    assert args_of("FROM") == ["${BASE_IMAGE}"]


def test_install_step_is_the_one_ci_runs() -> None:
    (install,) = [run for run in args_of("RUN") if "install.sh" in run]
    assert install.startswith('tools/install.sh "${EXTRAS}"')
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^\t.*tools/install\.sh dev$", makefile, re.M), "the Makefile's setup no longer runs install.sh"
    assert "EXTRAS=gpu" in args_of("ARG")


@pytest.mark.parametrize(("extras", "spec"), [("", "."), ("gpu", ".[gpu]"), ("dev", ".[dev]")])
def test_install_script_installs_against_the_constraints(tmp_path: Path, extras: str, spec: str) -> None:
    """Run the real script with pip replaced by a recorder: the same command serves CI (dev) and the image."""
    log = tmp_path / "pip.log"
    recorder = tmp_path / "pip"
    recorder.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    recorder.chmod(recorder.stat().st_mode | stat.S_IXUSR)
    subprocess.run([REPO / "tools" / "install.sh", extras], env={**os.environ, "PIP": str(recorder)}, check=True)
    assert log.read_text().splitlines()[-1] == f"install --quiet --constraint constraints.txt -e {spec}"


def test_environment_and_user() -> None:
    env = " ".join(args_of("ENV"))
    assert "TF_USE_LEGACY_KERAS=1" in env
    assert args_of("USER")[-1] in ("1000:100", "1000", "ray")
    assert any(a.startswith("--chown=1000:100 . ") for a in args_of("COPY"))


def test_dockerignore_keeps_what_the_install_needs() -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and p[0] != "#"]
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "tools/install.sh", "job/cli.py"):
        assert not ignored(needed, patterns), needed
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/chart/test_render.py", "job/__pycache__/cli.pyc"):
        assert ignored(dropped, patterns), dropped

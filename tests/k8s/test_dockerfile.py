"""The Dockerfile installs the package as a wheel, at the base image's versions and constraints.txt's pins, on the
pinned Ray CPU image, as the non-root user."""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from e2e import images, settings

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
    """Enough of .dockerignore's matching for this repo: a pattern matches the path or one of its parents (a leading
    `**/` at any depth); the last pattern that matches decides, and `!` lets a path back in."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        keep, bare = pattern.startswith("!"), pattern.removeprefix("!")
        candidates = prefixes + parts if bare.startswith("**/") else prefixes
        if any(fnmatch.fnmatch(c, bare.removeprefix("**/")) for c in candidates):
            verdict = not keep
    return verdict


def test_base_image_is_the_pinned_ray_cpu_image_for_both_flavours() -> None:
    """One CUDA stack: the GPU image gets TensorFlow's pip CUDA wheels on Ray's CPU image, not on Ray's -gpu one."""
    (base,) = [a for a in args_of("ARG") if a.startswith("BASE_IMAGE=")]
    assert base == f"BASE_IMAGE=rayproject/ray:{pinned('ray')}-py311"
    assert base.removeprefix("BASE_IMAGE=") == settings.CPU_BASE_IMAGE == images.base_image("x86_64")
    assert args_of("FROM") == ["${BASE_IMAGE} AS wheel", "${BASE_IMAGE}"]
    assert not any("-gpu" in value for _, value in instructions(REPO / "Dockerfile"))
    assert re.search(r'^gpu = \["tensorflow\[and-cuda\]==', (REPO / "pyproject.toml").read_text(), re.M)


def fake_bin(directory: Path, **scripts: str) -> str:
    """Executables `name` running the shell `body`, on a PATH in front of the system's."""
    directory.mkdir(exist_ok=True)
    for name, body in scripts.items():
        tool = directory / name
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return f"{directory}:{os.environ['PATH']}"


@pytest.mark.parametrize(
    ("target", "machine", "ok"),
    [
        ("", "x86_64", True),  # the legacy builder sets no TARGETARCH
        ("amd64", "x86_64", True),
        ("arm64", "aarch64", True),
        ("arm64", "x86_64", False),  # the x86-64 base on an arm64 host, run under emulation
        ("amd64", "aarch64", False),
    ],
)
def test_build_stops_when_the_base_image_is_for_another_architecture(
    tmp_path: Path, target: str, machine: str, ok: bool
) -> None:
    assert "TARGETARCH" in args_of("ARG")
    (check,) = [run for run in args_of("RUN") if "TARGETARCH" in run]
    env = {"PATH": fake_bin(tmp_path, uname=f"echo {machine}"), "TARGETARCH": target}
    done = subprocess.run(["sh", "-c", check], env=env, capture_output=True, text=True)
    assert (done.returncode == 0) is ok, done.stderr
    if not ok:
        assert f"BASE_IMAGE is {machine} but the target is {target}" in done.stderr
        assert "--build-arg BASE_IMAGE=rayproject/ray:" in done.stderr and "-aarch64" in done.stderr


def cuda_build_check() -> str:
    (install,) = [run for run in args_of("RUN") if "pins.py" in run]
    match = re.search(r'if \[ "\$\{EXTRAS\}" = gpu \]; then\s+python -c \'[^\']*is_cuda_build[^\']*\';\s+fi', install)
    assert match, "the GPU image's build no longer checks tf.sysconfig.get_build_info()['is_cuda_build']"
    return match[0]


def test_gpu_build_checks_the_cuda_wheels_and_the_cuda_build() -> None:
    (install,) = [run for run in args_of("RUN") if "pins.py" in run]
    assert "grep -q '^nvidia-'" in install
    cuda_build_check()


def test_cuda_build_check_passes_the_real_tensorflow(tmp_path: Path) -> None:
    """The pinned TensorFlow wheel (here, without a GPU) reports a CUDA build: the check needs no device."""
    path = fake_bin(tmp_path / "bin", python=f'exec {sys.executable} "$@"')
    done = subprocess.run(["sh", "-c", cuda_build_check()], env={**os.environ, "PATH": path, "EXTRAS": "gpu"},
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(("extras", "fails"), [("gpu", True), ("", False)])
def test_cuda_build_check_stops_a_gpu_image_without_cuda(tmp_path: Path, extras: str, fails: bool) -> None:
    fake_tf = tmp_path / "site" / "tensorflow"
    fake_tf.mkdir(parents=True)
    (fake_tf / "__init__.py").write_text(
        "class sysconfig:\n    get_build_info = staticmethod(lambda: {'is_cuda_build': False})\n"
    )
    env = {"PATH": fake_bin(tmp_path / "bin", python=f'exec {sys.executable} "$@"'), "EXTRAS": extras,
           "PYTHONPATH": str(tmp_path / "site")}  # fmt: skip
    done = subprocess.run(["sh", "-c", cuda_build_check()], env=env, capture_output=True, text=True)
    assert (done.returncode != 0) is fails
    if fails:
        assert "EXTRAS=gpu: this TensorFlow is not a CUDA build" in done.stderr


def test_dependencies_install_at_the_base_images_versions_and_the_package_as_a_wheel() -> None:
    """pip never replaces a package of the base image (tools/image/pins.py); the package is a wheel, not editable,
    installed in a layer after the dependencies so that a change to job/ reinstalls only it."""
    runs = args_of("RUN")
    (deps,) = [run for run in runs if "pins.py constraints" in run]
    assert "pip list --format=freeze > /tmp/plan/base.txt" in deps
    assert "-r /tmp/plan/requirements.txt -c /tmp/plan/pins.txt" in deps
    (wheel,) = [run for run in runs if "pip wheel" in run]
    assert "--no-deps" in wheel
    (package,) = [run for run in runs if "/tmp/dist/*.whl" in run]
    assert "--no-deps" in package and "pip check" in package
    assert runs.index(deps) < runs.index(package)
    assert not any(re.search(r"pip install[^&]* -e ", run) for run in runs), "no editable install in the image"
    assert not any("install.sh" in run or "--upgrade" in run for run in runs), "the base image's pip, not the newest"
    assert "EXTRAS=gpu" in args_of("ARG") and 'GIT_SHA=""' in args_of("ARG")


def test_install_step_of_ci_is_still_install_sh() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^\t.*tools/install\.sh dev$", makefile, re.M), "the Makefile's setup no longer runs install.sh"


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
    assert all(a.startswith("--") and "--chown=1000:100" in a for a in args_of("COPY"))
    assert "MNIST_TRAIN_GIT_SHA=${GIT_SHA}" in env


def test_dockerignore_keeps_what_the_install_needs() -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and p[0] != "#"]
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "tools/image/pins.py", "job/cli.py",
                   "job/resources/mnist_sample.npz"):  # fmt: skip
        assert not ignored(needed, patterns), needed
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/chart/test_render.py", "job/__pycache__/cli.pyc",
                    "bench-mnist/runs/x.json", "artifacts/results.json", "tools/install.sh", "Makefile"):  # fmt: skip
        assert ignored(dropped, patterns), dropped

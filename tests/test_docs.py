"""The docs cannot rot. Every shell command shown in README.md and docs/ either runs here, in the order the page shows
it, or is listed below as not runnable here with the reason; a command that is neither fails the test, and so does a
listing that no longer matches a command. Every relative link in the repository's Markdown resolves, anchors too.

A page's commands run as a user would type them, in a fresh folder that holds the checkout's top-level entries (as
links), with the shipped 5,000-digit sample and one epoch as defaults through the flags' env twins
(MNIST_TRAIN_DATASET, MNIST_TRAIN_EPOCHS): explicit flags in a command still win.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FAST_ENV = {"MNIST_TRAIN_DATASET": "mnist-sample", "MNIST_TRAIN_EPOCHS": "1"}
# What `make test ARGS=...` puts in its recipes' environment: a page's own `make train` must not see it.
OUTER_MAKE = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS", "VENV")

# Commands that run here, exactly as shown.
RUNS = {
    "make train",
    "mnist-train train --models cnn --run-name first",
    ".venv/bin/python -c \"import json, numpy; print(json.dumps(numpy.load('job/resources/mnist_sample.npz')"
    "['x_test'][0].tolist()))\" > digit.json",
    '.venv/bin/python -c "import numpy; from PIL import Image; Image.fromarray(numpy.load('
    "'job/resources/mnist_sample.npz')['x_test'][0]).save('digit.png')\"",
}

# Commands that cannot run here (or not fast), by pattern, with the reason.
NOT_HERE = {
    r"make test": "the test suite itself",
    r"make test-fast|make test ARGS=.*|make lint": "parts of the test suite and its lint, run by CI and `make test`",
    r"docker .*": "needs a Docker engine (none here)",
    r"(kubectl|helm|kind) .*": "needs a Kubernetes cluster (none here); tests/chart renders and validates the chart",
    r"\.venv/bin/python k8s/kind_e2e\.py (up|run|down|all).*": "needs kind, Docker, helm and kubectl; tests/k8s "
    "tests its pure parts",
    r"ray job submit .*|export RAY_AUTH_\w+=.*|CLUSTER=.*|RUNTIME_ENV=.*": "a submission to a Ray cluster of "
    "yours; tests/test_ray_submit.py submits the job to a local Ray head",
    r"mnist-train serve .*|curl .*127\.0\.0\.1:8000.*": "a long-running server; tests/test_serve.py starts it and "
    "sends these requests on loopback",
    r".*--data-uri (/data/mnist|s3://bucket/mnist/).*": "needs your copy of full MNIST (a folder, or a bucket)",
    r"mnist-train train .*--pushgateway http://127\.0\.0\.1:9091": "pushes to the Pushgateway started above; "
    "tests/metrics/test_integration.py runs the job with a real Pushgateway and Prometheus",
    r"prometheus.* &|echo .*ray-targets\.json|> /tmp/mnist-train-ray-targets\.json": "long-running servers; "
    "tests/metrics starts them on free ports with this config",
    r"python -m job\.dashboard --output .*": "rewrites the committed dashboard; tests/metrics/test_dashboard.py "
    "checks the committed file is this command's output",
    r"make image-check.*": "builds images: minutes to an hour, needs podman, buildah and debootstrap as root; "
    "tests/k8s tests its pure parts (rendered pod -> container arguments, the install pins)",
}


def shell_commands(page: Path) -> list[str]:
    """The commands of a page's ```sh blocks (in lists too): continuation lines joined, comments and blanks dropped."""
    commands = []
    for block in re.findall(r"^[ \t]*```sh\n(.*?)^[ \t]*```", page.read_text(), flags=re.S | re.M):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"(^|\s+)#\s.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def reason_not_here(command: str) -> str | None:
    return next((why for pattern, why in NOT_HERE.items() if re.fullmatch(pattern, command)), None)


def test_every_command_in_the_docs_runs_here_or_says_why_not() -> None:
    shown = {command for page in PAGES for command in shell_commands(page)}
    unlisted = sorted(c for c in shown if c not in RUNS and reason_not_here(c) is None)
    assert not unlisted, "commands in the docs that neither run here nor say why not:\n" + "\n".join(unlisted)
    assert not RUNS & {c for c in shown if reason_not_here(c)}, "a command is listed both ways"
    stale = sorted(RUNS - shown) + sorted(p for p in NOT_HERE if not any(re.fullmatch(p, c) for c in shown))
    assert not stale, f"listed here but in no page any more: {stale}"


@pytest.mark.parametrize("page", [p for p in PAGES if RUNS & set(shell_commands(p))], ids=lambda p: p.name)
def test_the_pages_commands_run(page: Path, tmp_path: Path) -> None:
    # A page's `make train` would reinstall a stale .venv from this test's folder, and point its scripts there.
    if subprocess.run(
        ["make", "-q", "setup"], cwd=ROOT, env={k: v for k, v in os.environ.items() if k not in OUTER_MAKE}
    ).returncode:
        pytest.fail(".venv is older than pyproject.toml, constraints.txt or tools/install.sh: run `make setup` first")
    for entry in ROOT.iterdir():
        if entry.name not in {".git", "artifacts"}:
            (tmp_path / entry.name).symlink_to(entry)
    (tmp_path / "tmp").mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if k not in OUTER_MAKE},
        **FAST_ENV,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TMPDIR": str(tmp_path / "tmp"),
        "RAY_TMPDIR": str(tmp_path / "tmp"),
    }
    for command in (c for c in shell_commands(page) if c in RUNS):
        done = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{page.name}: `{command}` exited {done.returncode}:\n{done.stdout}{done.stderr}"
    assert sorted((tmp_path / "tmp").iterdir()) == []  # nothing left in the temp folder


HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*$", re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped but - and _, spaces as -, repeats numbered."""
    text = re.sub(r"^[ \t]*```.*?^[ \t]*```", "", page.read_text(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(text):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def markdown_pages() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / path for path in listed.splitlines()] + [p for p in PAGES if not p.exists()]


def test_every_relative_link_resolves() -> None:
    pages = markdown_pages()
    assert ROOT / "README.md" in pages
    broken = []
    for page in pages:
        text = re.sub(r"^[ \t]*```.*?^[ \t]*```", "", page.read_text(), flags=re.S | re.M)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked here (no internet)
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_link_check_sees_a_broken_link_and_a_missing_heading(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Run it: `mnist-train`\n\n## Run it: `mnist-train`\n")
    assert anchors(page) == {"run-it-mnist-train", "run-it-mnist-train-1"}
    assert LINK.findall("see [x](docs/a.md#b) and ![c](d.png)") == ["docs/a.md#b", "d.png"]

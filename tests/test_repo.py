"""The repository stands alone: a user's clone has nothing beside it, so nothing the product, its tests, benchmarks or
tools read may lie outside it (this team keeps its CRD originals and full MNIST in a folder beside the checkout)."""

from __future__ import annotations

import ast
import hashlib
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions

from support import ROOT

# A path into the folder beside the checkout, however it is spelled: "../shared", an absolute /work/... path, or
# a Path built from a parent folder and "shared".
OUTSIDE = re.compile(r"""\.\./shared\b|/work/|["']shared["']""")
# This file names the folder to catch it, and .ci/run to hide it from the tests: neither reads it.
NAMES_IT = {"tests/test_repo.py", ".ci/run"}
CODE = re.compile(r"(\.(py|sh|ya?ml|toml|tpl|json|cfg|ini|txt)|^Makefile|^Dockerfile|^\.ci/run|\.dockerignore)$")


def tracked_code() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [path for path in listed.splitlines() if CODE.search(path) and (ROOT / path).is_file()]


def test_the_pattern_catches_what_the_chart_tests_once_did() -> None:
    assert OUTSIDE.search('CRDS = REPO.parent / "shared" / "crds"')
    assert OUTSIDE.search("--data-uri ../shared/data/mnist")
    assert not OUTSIDE.search("Ray's object store falls back to /tmp when shared memory is small")


def test_no_code_reads_a_path_outside_the_repository() -> None:
    files = tracked_code()
    assert len(files) > 100  # the listing worked: job/, tests/, bench/, k8s/, charts/, tools/
    found = [
        f"{path}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate((ROOT / path).read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line) and path not in NAMES_IT
    ]
    assert not found, "paths outside the repository:\n" + "\n".join(found)


def test_the_crd_copies_are_the_ones_their_readme_names() -> None:
    crds = ROOT / "tests" / "chart" / "crds"
    readme = (crds / "README.md").read_text()
    files = sorted(crds.glob("*.yaml"))
    assert {"ray.io_rayjobs.yaml", "ray.io_rayservices.yaml", "monitoring.coreos.com_podmonitors.yaml"} <= {
        path.name for path in files
    }
    for path in files:
        row = next((line for line in readme.splitlines() if line.startswith(f"| {path.name} |")), None)
        assert row, f"{path.name} has no row (source, commit, license, sha256) in crds/README.md"
        assert f"`{hashlib.sha256(path.read_bytes()).hexdigest()}`" in row, f"{path.name} differs from its README row"


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=~!; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def job_imports() -> dict[str, set[str]]:
    """{top-level module imported anywhere in job/ (not the standard library): the files importing it}."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "job").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for top in {name.split(".")[0] for name in names} - {"job", "__future__"}:
                if top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(path.name)
    return found


# Imported by the job but installed by an extra of a declared dependency (ray[serve] brings Starlette).
THROUGH_AN_EXTRA = {"starlette": "ray"}


def test_the_runtime_dependencies_are_what_the_job_imports() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    dev = {_name(r) for r in project["optional-dependencies"]["dev"]}
    distributions = packages_distributions()
    imported = set()
    for module, files in job_imports().items():
        names = {THROUGH_AN_EXTRA.get(module) or _name(d) for d in distributions.get(module, [module])}
        if files == {"dashboard.py"}:  # the dashboard generator, a development tool
            assert names & dev, f"{module} (job/dashboard.py) is not in the [dev] extra"
            continue
        assert names & runtime, f"{module} (job/{', job/'.join(sorted(files))}) is not a runtime dependency"
        imported |= names & runtime
    assert runtime - imported == set(), "runtime dependencies the job never imports (move them to an extra)"

"""The image's install plan, in the base image's own Python (standard library only).

    python pins.py requirements pyproject.toml [EXTRAS]    the package's dependencies (with EXTRAS), one a line
    python pins.py constraints BASE_FREEZE constraints.txt  pins for pip -c: the base image's versions for what it
                                                            has, this repo's pins for the rest; differences on stderr

The base image (Ray's, with Ray and its dependencies in a conda environment) is what Ray was tested with. Installing
the job at this repo's pins would make pip replace some of those packages: it swaps what Ray was tested with, and on a
conda environment it stops the build ("Cannot uninstall X ... distutils installed project"). Pinning every package
the base already has to the version it has means pip never uninstalls anything: a requirement the base cannot meet
fails the build with pip's ResolutionImpossible, naming the package, instead of replacing it.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)")


def canonical(name: str) -> str:
    """PEP 503 normalised name: Foo_Bar.baz -> foo-bar-baz."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> dict[str, tuple[str, str]]:
    """{canonical name: (name as written, version)} for every `name==version` line (`pip list --format=freeze`,
    constraints files); comments, options and other specifiers are skipped."""
    pins = {}
    for line in text.splitlines():
        if match := PIN.match(line.split("#", 1)[0]):
            pins[canonical(match[1])] = (match[1], match[2])
    return pins


def requirements(pyproject: str, extras: str = "") -> list[str]:
    """The project's dependencies plus those of each extra named in `extras` (comma-separated)."""
    project = tomllib.loads(pyproject)["project"]
    wanted = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in filter(None, (e.strip() for e in extras.split(","))):
        if extra not in optional:
            raise SystemExit(f"pins.py: no extra {extra!r} in pyproject.toml (there are: {', '.join(optional)})")
        wanted += optional[extra]
    return wanted


def merged_constraints(base: str, repo: str) -> tuple[list[str], list[str]]:
    """(constraint lines, differences): the base's version of every package it has, the repo's pin for the others;
    one difference line for each package the repo pins at another version than the base has."""
    have, pinned = parse_pins(base), parse_pins(repo)
    lines = [f"{name}=={version}" for name, version in sorted(have.values(), key=lambda p: canonical(p[0]))]
    lines += [f"{name}=={version}" for key, (name, version) in sorted(pinned.items()) if key not in have]
    diffs = [
        f"{pinned[key][0]}: the base image has {have[key][1]}, constraints.txt pins {pinned[key][1]}"
        for key in sorted(pinned.keys() & have.keys())
        if have[key][1] != pinned[key][1]
    ]
    return lines, diffs


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "requirements":
        print("\n".join(requirements(Path(argv[1]).read_text(), argv[2] if len(argv) > 2 else "")))
        return 0
    if len(argv) == 3 and argv[0] == "constraints":
        lines, diffs = merged_constraints(Path(argv[1]).read_text(), Path(argv[2]).read_text())
        print("\n".join(lines))
        for diff in diffs:
            print(f"pins.py: kept the base image's version: {diff}", file=sys.stderr)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The CPU image: built for the Docker host's architecture from Ray's image for it, loaded into the kind nodes."""

from __future__ import annotations

import tempfile
from pathlib import Path

from e2e.commands import E2EError, engine, require, sh
from e2e.settings import CLUSTER, CPU_BASE_IMAGE, IMAGE, REPO

# A machine architecture (`platform.machine()`'s or Docker's name) -> Docker's platform, Ray's image tag suffix.
ARCHES = {
    "x86_64": ("linux/amd64", ""),
    "amd64": ("linux/amd64", ""),
    "aarch64": ("linux/arm64", "-aarch64"),
    "arm64": ("linux/arm64", "-aarch64"),
}


def _arch(machine: str) -> tuple[str, str]:
    try:
        return ARCHES[machine.lower()]
    except KeyError:
        raise E2EError(f"Ray publishes images for x86_64 and aarch64 only, not {machine!r}: use such a host") from None


def base_image(machine: str) -> str:
    """The Ray base image for a machine architecture: rayproject/ray:<version>-py311, with -aarch64 on arm64."""
    return CPU_BASE_IMAGE + _arch(machine)[1]


def docker_platform(machine: str) -> str:
    """Docker's platform (linux/amd64, linux/arm64) for a machine architecture."""
    return _arch(machine)[0]


def api_at_least(version: str, minimum: tuple[int, int]) -> bool:
    """Whether a Docker API version such as "1.48" is at least `minimum`."""
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= minimum


def image_commands(arch: str, api_version: str, archive: Path, tool: str = "docker") -> list[list[str]]:
    """Build the CPU image for `arch` and load it into the kind nodes through an image archive.

    `kind load docker-image` fails under Docker's containerd image store (kubernetes-sigs/kind#3795): the archive
    it saves has an index naming content it lacks (other platforms, build attestations), which the nodes' containerd
    refuses. kind's documented way round: save one platform (`--platform`, Docker API 1.48+; older Dockers, on the
    classic store, save just the one anyway) and load that with `kind load image-archive`.

    With podman (`tool`), the image is tagged with its full name: podman names a bare `mnist-train:...`
    `localhost/mnist-train:...`, which the nodes' containerd would not match with the chart's `mnist-train:...`
    (docker.io/library/mnist-train:...). `podman save` writes one platform.
    """
    platform = docker_platform(arch)
    name = IMAGE if tool == "docker" else f"docker.io/library/{IMAGE}"
    build = [tool, "build", "--platform", platform, "--tag", name]
    build += ["--build-arg", f"BASE_IMAGE={base_image(arch)}", "--build-arg", "EXTRAS=", str(REPO)]
    if tool == "docker":
        save = ["docker", "save", "--output", str(archive)]
        if api_at_least(api_version, (1, 48)):
            save += ["--platform", platform]
    else:
        save = [tool, "save", "--format", "docker-archive", "--output", str(archive)]
    return [build, [*save, name], ["kind", "load", "image-archive", str(archive), "--name", CLUSTER]]


def docker_server() -> tuple[str, str]:
    """The Docker daemon's architecture (what it builds and the kind nodes run) and API version."""
    answer = sh("docker", "version", "--format", "{{.Server.Arch}} {{.Server.APIVersion}}", capture=True,
                hint="start Docker")  # fmt: skip
    arch, _, api_version = answer.strip().partition(" ")
    return arch, api_version


def podman_arch() -> str:
    """The architecture podman builds for (amd64, arm64)."""
    return sh("podman", "info", "--format", "{{.Host.Arch}}", capture=True, hint="is podman installed?").strip()


def build_and_load_image() -> None:
    tool = engine()
    require(tool, "kind")
    arch, api_version = docker_server() if tool == "docker" else (podman_arch(), "")
    # The archive (a few GB) lives in a temporary directory that goes away whatever happens.
    with tempfile.TemporaryDirectory(prefix="mnist-train-image-") as tmp:
        build, save, load = image_commands(arch, api_version, Path(tmp) / "image.tar", tool)
        sh(*build, hint="the build output above says which step failed")
        sh(*save, capture=True, hint=f"is there room for the image in {tempfile.gettempdir()}? else set TMPDIR")
        sh(*load, capture=True, hint=f"is the kind cluster {CLUSTER} up? `kind get clusters`")

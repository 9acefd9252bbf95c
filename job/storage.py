"""Every read and write of a path or URI (local, file://, s3://, gs://) goes through pyarrow.fs.

tf.io.gfile has no s3:// in TF 2.21, so models are saved to a local temp dir and uploaded from there.
Writes retry with bounded exponential backoff; a file written by `write_bytes` appears whole or not at all.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from job.errors import first_line

log = logging.getLogger(__name__)

RETRY_ATTEMPTS = 4  # the default of --storage-retries; `set_attempts` applies the flag


class StorageError(RuntimeError):
    """A read or write that failed for good; the message names the URI (without credentials)."""


def redact(uri: str) -> str:
    """Drop user:password@ from a URI so it can be logged."""
    return re.sub(r"^([a-z0-9+.-]+://)[^/@]*@", r"\1", uri, flags=re.I)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it for a local path or a URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError...; all mean the same to the user
        raise StorageError(f"cannot open {redact(uri)}: {first_line(err)}") from None


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def set_attempts(attempts: int) -> None:
    global RETRY_ATTEMPTS
    RETRY_ATTEMPTS = attempts


def _retrying(what: str):
    return retry(
        retry=retry_if_exception_type(OSError),
        stop=stop_after_attempt(RETRY_ATTEMPTS),  # read when each write starts, after set_attempts
        wait=wait_exponential(multiplier=0.5, max=8),
        before_sleep=lambda state: log.warning(
            "%s failed (attempt %d/%d): %s; retrying",
            what,
            state.attempt_number,
            RETRY_ATTEMPTS,
            first_line(state.outcome.exception()),
        ),
        reraise=True,
    )


def _info(uri: str) -> pafs.FileInfo:
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path)
    except OSError as err:
        raise StorageError(f"cannot read {redact(uri)}: {first_line(err)}") from None


def exists(uri: str) -> bool:
    return _info(uri).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.Directory


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path, compression=None) as stream:
            return stream.read()
    except FileNotFoundError:
        raise StorageError(f"{redact(uri)} does not exist; check the path") from None
    except OSError as err:
        raise StorageError(f"cannot read {redact(uri)}: {first_line(err)}") from None


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file: a local file is written beside and renamed; an object PUT is atomic by itself."""
    fs, path = resolve(uri)

    @_retrying(f"writing {redact(uri)}")
    def attempt() -> None:
        target = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if isinstance(fs, pafs.LocalFileSystem) else path
        fs.create_dir(os.path.dirname(path), recursive=True)
        with fs.open_output_stream(target, compression=None) as stream:
            stream.write(data)
        if target != path:
            fs.move(target, path)

    try:
        attempt()
    except OSError as err:
        raise StorageError(f"cannot write {redact(uri)} after {RETRY_ATTEMPTS} attempts: {first_line(err)}") from None


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    info = _info(uri)
    try:
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)
    except OSError as err:
        raise StorageError(f"cannot delete {redact(uri)}: {first_line(err)}") from None


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy a local folder's files to `uri`, file by file, each with retries."""
    root = Path(local_dir)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        write_bytes(join(uri, file.relative_to(root).as_posix()), file.read_bytes())


def checkpoint_at(uri: str) -> Any:
    """The Ray Train checkpoint whose files are at `uri`."""
    from ray.train import Checkpoint

    filesystem, path = resolve(uri)
    return Checkpoint(path=path, filesystem=filesystem)


def download_checkpoint(checkpoint: Any, local_dir: str | Path) -> Path:
    """A Ray Train checkpoint's files copied into `local_dir`, a folder private to this process. Not
    `Checkpoint.to_directory`: its lock against other processes leaves a file in $TMPDIR/_ray_lockfiles each time."""
    Path(local_dir).mkdir(parents=True, exist_ok=True)  # copy_files makes the subfolders, not this one
    pafs.copy_files(checkpoint.path, str(local_dir), source_filesystem=checkpoint.filesystem)
    return Path(local_dir)


def keep_log(log_path: str, output: str) -> None:
    """The run log beside the outputs at the end of every run, failed or not, unless it is written there already
    (s3://, gs://, --log-file): a head pod's disk goes with its cluster. A failed copy is a warning, not the outcome."""
    target = join(output, "run.log")
    if os.path.abspath(log_path) == os.path.abspath(target.removeprefix("file://")):
        return
    try:
        write_bytes(target, Path(log_path).read_bytes())
    except (StorageError, OSError) as err:
        log.warning("could not copy the run log to %s: %s", redact(target), first_line(err))


def probe_writable(uri: str) -> None:
    """Fail early, before training, when the output cannot be written (missing bucket, wrong credentials, read-only)."""
    probe = join(uri, f".write-probe-{uuid.uuid4().hex[:8]}")
    fs, path = resolve(probe)
    try:
        fs.create_dir(os.path.dirname(path), recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(b"ok")
        fs.delete_file(path)
    except OSError as err:
        raise StorageError(f"--output {redact(uri)} is not writable: {first_line(err)}") from None

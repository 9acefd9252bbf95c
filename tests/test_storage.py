"""Storage through pyarrow.fs: local paths and a real S3 API on loopback (moto server)."""

import pytest

from job import storage


def test_local_write_is_whole_and_leaves_no_temp_files(tmp_path) -> None:
    target = tmp_path / "a" / "b" / "results.json"
    storage.write_bytes(str(target), b"{}")
    storage.write_bytes(str(target), b'{"v": 2}')
    assert target.read_bytes() == b'{"v": 2}'
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]


def test_gz_files_are_copied_byte_for_byte(tmp_path) -> None:
    (tmp_path / "x.gz").write_bytes(b"\x1f\x8b\x08raw")  # pyarrow would otherwise decompress by extension
    assert storage.read_bytes(str(tmp_path / "x.gz")) == b"\x1f\x8b\x08raw"


def test_upload_folder(tmp_path) -> None:
    (tmp_path / "src" / "m").mkdir(parents=True)
    (tmp_path / "src" / "m" / "model.keras").write_bytes(b"weights")
    (tmp_path / "src" / "top.txt").write_text("hi")
    storage.upload_dir(tmp_path / "src", f"file://{tmp_path}/dst")
    assert storage.read_bytes(f"file://{tmp_path}/dst/m/model.keras") == b"weights"
    assert (tmp_path / "dst" / "top.txt").read_text() == "hi"


def test_unwritable_output_is_reported_before_training(tmp_path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(storage.StorageError, match=r"--output .*file/out is not writable"):
        storage.probe_writable(str(tmp_path / "file" / "out"))


def test_redact_drops_credentials_from_uris() -> None:
    assert storage.redact("s3://AKIA:secret@bucket/run") == "s3://bucket/run"
    assert storage.redact("/plain/path") == "/plain/path"


def test_s3_round_trip_with_credentials_from_env(s3) -> None:
    s3.filesystem().create_dir("runs")
    storage.probe_writable("s3://runs/r1")
    storage.write_bytes("s3://runs/r1/results.json", b'{"ok": true}')
    assert storage.read_bytes("s3://runs/r1/results.json") == b'{"ok": true}'
    assert storage.exists("s3://runs/r1/results.json")
    assert [
        info.path for info in s3.filesystem().get_file_info(__import__("pyarrow.fs").fs.FileSelector("runs/r1"))
    ] == ["runs/r1/results.json"]  # the probe cleaned up after itself


def test_s3_missing_bucket_fails_the_probe(s3) -> None:
    with pytest.raises(storage.StorageError, match=r"--output s3://no-such-bucket/run is not writable"):
        storage.probe_writable("s3://no-such-bucket/run")


def test_s3_write_retries_then_names_the_uri(s3, monkeypatch) -> None:
    s3.filesystem().create_dir("runs")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 2)
    with pytest.raises(storage.StorageError, match=r"cannot write s3://runs/x.json after 2 attempts"):
        storage.write_bytes("s3://runs/x.json", b"x")

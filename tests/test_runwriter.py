"""The run folder's manifest: created, finalised, secrets left out, raw files write-once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migration_blackout.harness.runwriter import OutputFolderError, create_run_folder, redact
from migration_blackout.probes.sink import CsvSink, JsonlSink
from migration_blackout.runformat import MANIFEST_SCHEMA_VERSION, RAW_SCHEMA_VERSION, RunStatus


def test_manifest_written_at_start_and_finalised(tmp_path: Path) -> None:
    run = create_run_folder(
        tmp_path,
        kind="watch",
        command=["measure", "watch", "--target", "198.18.0.2"],
        config={"icmp": {"interval_s": 0.01}},
        targets=["198.18.0.2"],
    )
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["schema_version"] == MANIFEST_SCHEMA_VERSION
    assert manifest["status"] == "running"
    assert manifest["ended_utc"] is None
    assert manifest["run_id"] == run.path.name
    assert run.path.parent == tmp_path
    assert (run.path / "raw").is_dir()

    run.finalize(RunStatus.FAILED, RuntimeError("socket closed"))
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["status"] == "failed"
    assert manifest["error"] == {"type": "RuntimeError", "message": "socket closed"}
    assert manifest["ended_utc"].endswith("Z")
    assert manifest["clock"]["end"]["mono_ns"] >= manifest["clock"]["start"]["mono_ns"]


def test_run_ids_are_unique_and_sort_by_time(tmp_path: Path) -> None:
    ids = [
        create_run_folder(tmp_path, kind="watch", command=[], config={}, targets=[]).run_id
        for _ in range(20)
    ]
    assert len(set(ids)) == len(ids)
    assert sorted(ids, key=lambda i: i[:16]) == ids


def test_secrets_never_reach_the_manifest(tmp_path: Path) -> None:
    config = {
        "hosts": [{"name": "h1", "username": "lab", "password": "hunter2"}],
        "agent": {"token": "s3cret-token"},
        "api_secret": "x",
    }
    run = create_run_folder(tmp_path, kind="run", command=[], config=config, targets=[])
    text = run.manifest_path.read_text()
    assert "hunter2" not in text
    assert "s3cret-token" not in text
    assert redact(config) == {"hosts": [{"name": "h1", "username": "lab"}], "agent": {}}


def test_unwritable_output_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputFolderError, match="cannot create output folder"):
        create_run_folder(blocker / "sub", kind="watch", command=[], config={}, targets=[])


def test_sinks_write_versioned_headers_and_refuse_to_overwrite(tmp_path: Path) -> None:
    csv_sink = CsvSink(tmp_path / "raw" / "p.csv", probe="p", columns=["a", "b"], meta={"x": 1})
    csv_sink.write_row([1, None])
    csv_sink.flush()
    lines = (tmp_path / "raw" / "p.csv").read_text().splitlines()
    assert json.loads(lines[0][2:]) == {
        "format": "csv",
        "probe": "p",
        "schema_version": RAW_SCHEMA_VERSION,
        "x": 1,
    }
    assert lines[1:] == ["a,b", "1,"]
    csv_sink.close()
    with pytest.raises(FileExistsError):
        CsvSink(tmp_path / "raw" / "p.csv", probe="p", columns=["a"])

    jsonl = JsonlSink(tmp_path / "raw" / "e.jsonl", probe="events")
    jsonl.write({"event": "start", "mono_ns": 1})
    jsonl.close()
    header, event = (
        json.loads(line) for line in (tmp_path / "raw" / "e.jsonl").read_text().splitlines()
    )
    assert header == {"header": True, "probe": "events", "schema_version": RAW_SCHEMA_VERSION}
    assert event == {"event": "start", "mono_ns": 1}

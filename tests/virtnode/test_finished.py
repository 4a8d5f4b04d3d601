"""Finished-VMI records: written, removed, pruned by count and by age."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from virtnode.finished import FinishedRecords


def _backdate(records: FinishedRecords, name: str, seconds: float) -> None:
    path = records._path("default", name)
    data = json.loads(path.read_text())
    data["finishedAt"] = time.time() - seconds
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("keep_count", "keep_seconds", "ages", "kept"),
    [
        pytest.param(10, 3600, {"a": 30, "b": 20, "c": 10}, ["a", "b", "c"], id="all-kept"),
        pytest.param(2, 3600, {"a": 30, "b": 20, "c": 10}, ["b", "c"], id="oldest-over-count"),
        pytest.param(10, 25, {"a": 30, "b": 20, "c": 10}, ["b", "c"], id="older-than-age"),
        pytest.param(1, 15, {"a": 30, "b": 20, "c": 10}, ["c"], id="both"),
    ],
)
def test_records_pruned_by_count_and_age(
    tmp_path: Path, keep_count: int, keep_seconds: float, ages: dict[str, float], kept: list[str]
) -> None:
    writer = FinishedRecords(tmp_path, keep_count=100, keep_seconds=1e9)
    for name, age in ages.items():
        writer.save("default", name, {"key": f"default/{name}", "phase": "Succeeded"})
        _backdate(writer, name, age)
    records = FinishedRecords(tmp_path, keep_count=keep_count, keep_seconds=keep_seconds)
    assert [r["key"] for r in records.load()] == [f"default/{n}" for n in kept]
    assert len(list(tmp_path.glob("vm-*.json"))) == len(kept)


def test_save_reports_pruned_keys_and_remove_forgets(tmp_path: Path) -> None:
    records = FinishedRecords(tmp_path, keep_count=1, keep_seconds=3600)
    assert records.save("default", "a", {"key": "default/a"}) == []
    _backdate(records, "a", 5)
    assert records.save("default", "b", {"key": "default/b"}) == ["default/a"]
    records.remove("default", "b")
    assert records.load() == []


def test_unreadable_record_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "vm-0123.json").write_text("{not json")
    assert FinishedRecords(tmp_path, 10, 3600).load() == []
    assert list(tmp_path.iterdir()) == []

"""The held-out ledger: append-only, tolerant of a torn last line, counted per model."""

from __future__ import annotations

import json
import logging
from datetime import datetime

import pytest

from aimri.errors import AimriError
from aimri.ledger import KINDS, LEDGER, consultations, read_ledger, record_query

SHA_A, SHA_B = "a" * 64, "b" * 64


def test_each_query_appends_one_line_and_never_rewrites_earlier_bytes(tmp_path):
    run = tmp_path / "runs" / "r1"  # created on first use
    first = record_query(run, "search", model_sha256=SHA_A, detail={"query": "deception"})
    before = (run / LEDGER).read_bytes()
    second = record_query(run, "probe", model_sha256=SHA_A, detail={"probe": "sycophancy"})
    after = (run / LEDGER).read_bytes()
    assert after.startswith(before) and after.count(b"\n") == 2
    assert read_ledger(run) == [first, second]
    line = json.loads(after.splitlines()[1])
    assert line == {
        "time": second.time,
        "kind": "probe",
        "model_sha256": SHA_A,
        "aimri_version": second.aimri_version,
        "detail": {"probe": "sycophancy"},
    }
    t = datetime.fromisoformat(second.time)
    offset = t.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    assert t >= datetime.fromisoformat(first.time)


def test_a_torn_last_line_is_skipped_with_a_warning_and_the_next_entry_stays_whole(
    tmp_path, caplog
):
    run = tmp_path / "r"
    kept = record_query(run, "scan", model_sha256=SHA_A, detail={})
    with open(run / LEDGER, "ab") as f:  # a crash in the middle of a write
        f.write(b'{"time": "2025-01-01T00:00:00.000+00:00", "kind": "sc')
    with caplog.at_level(logging.WARNING, logger="aimri.ledger"):
        assert read_ledger(run) == [kept]
    assert "line 2" in caplog.text
    later = record_query(run, "diff", model_sha256=SHA_A, detail={"other": "b"})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aimri.ledger"):
        assert read_ledger(run) == [kept, later]  # the torn line still skipped, not glued
    assert (run / LEDGER).read_bytes().endswith(b"\n")


def test_consultations_count_every_run_of_the_model_and_only_that_model(tmp_path):
    root = tmp_path / "runs"
    e1 = record_query(root / "one", "scan", model_sha256=SHA_A, detail={"config": "x"})
    record_query(root / "one", "search", model_sha256=SHA_B, detail={"query": "q"})
    record_query(root / "two", "search", model_sha256=SHA_A, detail={"query": "q"})
    e4 = record_query(root / "two", "search", model_sha256=SHA_A, detail={"query": "r"})
    record_query(root / "three", "monitor", model_sha256=None, detail={})
    (root / "empty").mkdir()
    a = consultations(root, SHA_A)
    assert (a.total, a.by_kind, a.runs) == (3, {"scan": 1, "search": 2}, ["one", "two"])
    assert (a.first, a.last) == (e1.time, e4.time)
    b = consultations(root, SHA_B)
    assert (b.total, b.by_kind, b.runs) == (1, {"search": 1}, ["one"])
    none = consultations(root, "c" * 64)
    assert (none.total, none.by_kind, none.runs, none.first) == (0, {}, [], None)
    assert consultations(tmp_path / "missing", SHA_A).total == 0


def test_bad_kinds_and_unwritable_details_are_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(AimriError, match="kind 'peek' is unknown.*scan"):
        record_query(tmp_path, "peek", model_sha256=SHA_A, detail={})
    with pytest.raises(AimriError, match="detail cannot be written"):
        record_query(tmp_path, "scan", model_sha256=SHA_A, detail={"x": object()})
    with pytest.raises(AimriError, match="detail cannot be written"):
        record_query(tmp_path, "scan", model_sha256=SHA_A, detail={"x": float("nan")})
    assert not (tmp_path / LEDGER).exists()
    assert set(KINDS) >= {"scan", "probe", "diff", "search"}


def test_an_unwritable_run_directory_is_an_error_not_a_silent_skip(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AimriError, match="cannot append to the ledger"):
        record_query(blocker / "run", "scan", model_sha256=SHA_A, detail={})


def test_a_catalog_search_is_recorded_in_its_run_ledger(tmp_path):
    from aimri.config import SearchConfig
    from aimri.features.catalog import Catalog, RunIdentity, search
    from aimri.features.records import BasisInfo, Label

    basis = BasisInfo("sae", "blocks.1.hook_resid_post", 8, "sae (8)")
    ident = RunIdentity(basis=basis, dictionary="/nowhere", model="tiny", model_sha256=SHA_A)
    run = tmp_path / "runs" / "r"
    path = run / "features" / "catalog.sqlite"
    with Catalog.create(path, ident) as cat:
        cat.add_labels(basis.name, [Label(3, "days of the week", "tokens")])
    hits = search(SearchConfig(catalog=path, query="week", limit=5))
    assert [h.feature for h in hits] == [3]
    search(SearchConfig(catalog=path, query="deception"))
    entries = read_ledger(run)
    assert [(e.kind, e.model_sha256, e.detail["query"], e.detail["hits"]) for e in entries] == [
        ("search", SHA_A, "week", 1),
        ("search", SHA_A, "deception", 0),
    ]
    assert consultations(tmp_path / "runs", SHA_A).by_kind == {"search": 2}

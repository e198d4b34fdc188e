"""results.json's schema: versioned dataclasses both the run and the report use; another version or an unknown
field is refused in one line; the report is written from the typed results alone."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from edgedistill.errors import ConfigError
from edgedistill.pipelines.report import write_distill_report
from edgedistill.pipelines.results import DistillResults, StudentResult

DEMO = Path(__file__).resolve().parents[1] / "docs" / "demo" / "results.json"


def _current() -> dict:
    """The demo's recorded results (docs/demo/results.json, written by the committed demo run)."""
    return json.loads(DEMO.read_text())


def test_results_round_trip_and_write_the_report(tmp_path: Path) -> None:
    raw = _current()
    r = DistillResults.from_dict(raw)
    assert isinstance(r.students[0], StudentResult) and r.best.name == raw["best_student"]
    assert r.teacher.reference()[0] == "linear"  # the head fitted on labels is the students' reference
    assert r.to_dict() == raw
    r.write(tmp_path / "results.json")
    assert DistillResults.load(tmp_path / "results.json") == r
    report = write_distill_report(r, tmp_path).read_text()
    best = r.best
    assert f"**{best.name}** ({best.arch}, {best.params / 1e6:.2f}M parameters)" in report
    assert f"% of the teacher's linear probe** ({100 * r.teacher.heads['linear'].test_acc:.1f}%)" in report


def test_other_versions_and_unknown_fields_are_refused(tmp_path: Path) -> None:
    raw = _current()
    (tmp_path / "old.json").write_text(json.dumps({k: v for k, v in raw.items() if k != "schema_version"}))
    with pytest.raises(ConfigError, match="results schema version None; this edgedistill reads version 1"):
        DistillResults.load(tmp_path / "old.json")  # written before results were versioned
    bad = copy.deepcopy(raw)
    bad["students"][0]["acc"] = 0.5
    with pytest.raises(ConfigError, match=r"results.students\[0\] has field\(s\) \['acc'\]"):
        DistillResults.from_dict(bad)
    bad = copy.deepcopy(raw)
    del bad["teacher"]["params"]
    with pytest.raises(ConfigError, match="results.teacher.*params"):
        DistillResults.from_dict(bad)
    with pytest.raises(ConfigError, match="version 2"):
        DistillResults.from_dict({**raw, "schema_version": 2})

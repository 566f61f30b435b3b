"""The evaluation run end to end on a tiny export: every report field present and documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vla.eval.evaluate import ExportEvalOptions, run_evaluation
from vla.eval.report import CLOSED_LOOP_FIELDS, FILES_FIELDS, OFFLINE_FIELDS, POLICY_FIELDS, REPORT_FIELDS
from vla.eval.rollout import wilson_interval
from vla.sim import OUTCOMES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"


@pytest.mark.timeout(240)
def test_report_has_every_field_and_docs_explain_them(ray_session, untrained_export, tmp_path):
    options = ExportEvalOptions(episodes=4, tasks_per_policy=1, record=1, offline_split="val", offline_max_batches=2)
    report = run_evaluation(untrained_export, str(tmp_path), options)

    assert tuple(report) == REPORT_FIELDS
    assert json.loads((tmp_path / "report.json").read_text()) == report
    loop = report["closed_loop"]
    assert tuple(loop) == CLOSED_LOOP_FIELDS
    assert set(loop["policies"]) == {"trained", "random", "constant"}
    for result in loop["policies"].values():
        assert tuple(result) == POLICY_FIELDS
        assert result["episodes"] == 4 and 0.0 <= result["success_rate"] <= 1.0
        assert tuple(result["outcomes"]) == OUTCOMES and sum(result["outcomes"].values()) == 4
        assert result["outcomes"]["success"] == result["successes"]
    assert loop["constant_action"][6] == 1.0 and len(loop["constant_action"]) == 7
    assert tuple(report["offline"]) == OFFLINE_FIELDS
    assert len(report["offline"]["pose_error_per_dim"]) == 6 and report["offline"]["windows"] > 0
    assert 0.0 <= report["offline"]["gripper_accuracy"] <= 1.0
    assert tuple(report["files"]) == FILES_FIELDS
    assert Path(report["files"]["plot"]).is_file()
    assert len(report["files"]["strips"]) == 3 and all(Path(p).is_file() for p in report["files"]["strips"])

    documented = DOCS.read_text()
    for name in {*REPORT_FIELDS, *CLOSED_LOOP_FIELDS, *POLICY_FIELDS, *OFFLINE_FIELDS, *FILES_FIELDS}:
        assert f"`{name}`" in documented, f"report field {name} is not documented in {DOCS.name}"


def test_wilson_interval_brackets_the_rate():
    assert wilson_interval(0, 0) == (0.0, 0.0)
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and 0.05 < high < 0.1
    low, high = wilson_interval(45, 50)
    assert low < 0.9 < high <= 1.0

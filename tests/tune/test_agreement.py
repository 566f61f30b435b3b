"""How far val_loss and closed-loop success agree across a sweep's trials (no Ray)."""

from __future__ import annotations

import pytest

from vla.tune.report import TrialRow, agreement, format_table, spearman


def row(name: str, val_loss: float | None, success: float | None) -> TrialRow:
    return TrialRow(trial=name, params={"train.lr": 1e-3}, metric=success, steps=10, status="completed",
                    scores={"val_loss": val_loss, "eval_success_rate": success}, trainable_params=1,
                    checkpoint=None, run_dir=None)


def test_spearman_ranks_with_ties():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 1, 2, 2]) == pytest.approx(0.894, abs=1e-3)
    assert spearman([1, 2, 3], [0, 0, 0]) is None


def test_agreement_counts_trials_with_both_scores_and_the_table_shows_both():
    rows = [row("a", 0.1, 0.5), row("b", 0.2, 0.3), row("c", 0.3, 0.1), row("d", None, 0.0)]
    expected = {"metrics": ["val_loss", "eval_success_rate"], "trials": 3, "spearman": pytest.approx(1.0)}
    assert agreement(rows) == expected
    table = format_table(rows, "eval_success_rate", "max")
    assert table.splitlines()[0].split()[:4] == ["trial", "train.lr", "eval_success_rate", "val_loss"]
    assert [line.split()[0] for line in table.splitlines()[1:5]] == ["a", "b", "c", "d"]  # best first (max)
    assert "over 3 trials (Spearman): +1.00" in table
    assert agreement(rows[:1]) is None

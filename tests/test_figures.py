"""paper_figures: registry, skipping of missing results, and drawing from small real results."""

from __future__ import annotations

import pytest

from experiments import common


def test_registry_lists_the_theory_figures() -> None:
    from paper_figures import load_all

    reg = load_all()
    for name in ("scaling_penalty", "scaling_exponents", "bound_truth_vs_bound", "bound_tightness", "is_degeneracy"):
        assert name in reg
        assert reg[name].command.startswith("python -m ")


def test_missing_results_are_skipped_with_their_command(tmp_path, capsys) -> None:
    from paper_figures.__main__ import main

    assert main(["--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[skipped] scaling_penalty" in out and "python -m experiments.scaling_sweep" in out
    assert "skipped figures:" in out
    assert not list((tmp_path / "figures").glob("*.png"))


def test_figures_are_drawn_from_results(tmp_path, monkeypatch, capsys) -> None:
    from experiments import bound_check, is_degeneracy, scaling_sweep
    from paper_figures.__main__ import main

    monkeypatch.setattr(common, "RESULTS_ROOT", tmp_path)
    assert scaling_sweep.main(["--families", "board", "crowd", "--n-agents", "2", "3", "4", "--deltas", "1e-3", "1e-2",
                               "--seeds", "2", "--workers", "1"]) == 0
    assert bound_check.main(["--instances", "30", "--workers", "1", "--optimise-share", "0"]) == 0
    assert is_degeneracy.main(["--families", "board", "--n-agents", "2", "3", "--deltas", "0.1", "--seeds", "2",
                               "--prompts", "8", "--group-size", "2", "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("scaling_penalty", "scaling_exponents", "bound_truth_vs_bound", "bound_tightness", "is_degeneracy"):
        assert f"[drawn]   {name}" in out
        for ext in ("png", "pdf"):
            path = tmp_path / "figures" / f"{name}.{ext}"
            assert path.exists() and path.stat().st_size > 1000, path


def test_unknown_figure_is_an_error(tmp_path) -> None:
    from paper_figures.__main__ import main

    with pytest.raises(SystemExit):
        main(["--results", str(tmp_path), "--only", "no_such_figure"])

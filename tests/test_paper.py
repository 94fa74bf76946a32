"""The paper study's machinery: arms start where they should, the study writes what it says."""

from __future__ import annotations

import csv

import pytest
import torch

import n2n_fx
from n2n_fx.cli import main
from n2n_fx.paper.arms import random_pad, reinit, target_widths
from n2n_fx.paper.data import load_digits
from n2n_fx.paper.nets import DEEPEN_AT, DigitsInception
from n2n_fx.paper.study import Config, run_study

pytest.importorskip("sklearn")


def _teacher():
    torch.manual_seed(0)
    return DigitsInception(0.3).eval(), load_digits().x_train[:8]


def test_digits_split_is_fixed_stratified_and_standardised():
    a, b = load_digits(), load_digits()
    assert torch.equal(a.x_val, b.x_val) and len(a.y_train) + len(a.y_val) == 1797
    assert abs(float(a.x_train.mean())) < 1e-5 and abs(float(a.x_train.std()) - 1) < 1e-4
    assert torch.bincount(a.y_val).min() >= 40  # every class is in validation


def test_target_widths_reach_the_standard_network():
    teacher, x = _teacher()
    student = n2n_fx.widen(teacher, x, widths=target_widths(teacher, DigitsInception(1.0), x))
    standard = DigitsInception(1.0)
    assert {k: v.shape for k, v in student.state_dict().items()} == {k: v.shape for k, v in standard.state_dict().items()}


def test_random_pad_keeps_the_teachers_units_and_changes_the_function():
    teacher, x = _teacher()
    widths = target_widths(teacher, DigitsInception(1.0), x)
    padded = random_pad(teacher, x, widths, seed=0)
    w_t, w_s = teacher.a.b1[0].weight, padded.get_submodule("a.b1.0").weight  # 5 -> 16 filters
    assert torch.equal(w_s[: w_t.shape[0]], w_t)  # originals kept, unscaled
    assert w_s.shape[0] > w_t.shape[0] and not torch.equal(w_s[w_t.shape[0]:], w_s[: w_s.shape[0] - w_t.shape[0]])
    assert not n2n_fx.verify(teacher, padded, x).ok  # new random units change the output
    assert n2n_fx.verify(teacher, n2n_fx.widen(teacher, x, widths=widths), x).ok


def test_reinit_keeps_the_architecture_and_draws_new_weights():
    teacher, x = _teacher()
    deeper = n2n_fx.deepen(teacher, x, after=DEEPEN_AT)
    fresh = reinit(deeper, seed=3)
    assert [(k, v.shape) for k, v in fresh.state_dict().items()] == [(k, v.shape) for k, v in deeper.state_dict().items()]
    assert not torch.equal(fresh.get_submodule("stem.0").weight, deeper.get_submodule("stem.0").weight)
    assert torch.equal(reinit(deeper, seed=3).get_submodule("stem.0").weight, fresh.get_submodule("stem.0").weight)


def test_study_writes_curves_summary_and_plots(tmp_path):
    config = Config(seeds=1, teacher_steps=30, student_steps=10, eval_every=10, out=tmp_path)
    summary = run_study(["wider", "explore"], config)
    by_arm = {(s["setting"], s["arm"]): s for s in summary}
    for key in [("wider", "net2wider (none)"), ("wider", "net2wider (split)"), ("explore", "net2net (wider+deeper)")]:
        assert by_arm[key]["acc0_equals_teacher"] and by_arm[key]["max_rel_err"] < 1e-5, key
        assert by_arm[key]["steps_to_teacher"] == 0
    assert by_arm[("wider", "random init")]["acc0"] < 0.5
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert len(rows) == 4 + (5 + 2) * 2  # the teacher 4 evaluations (0, 10, 20, 30), 7 students 2 each
    assert (tmp_path / "summary.md").read_text().count("\n| ") >= 7
    pytest.importorskip("matplotlib")
    assert (tmp_path / "wider.png").stat().st_size > 10_000 and (tmp_path / "explore.png").exists()


def test_cli_experiment(tmp_path, capsys):
    assert main(["experiment", "deeper", "--quick", "--out", str(tmp_path)]) == 0
    assert "net2deeper" in capsys.readouterr().out and (tmp_path / "deeper.png").exists()
    assert main(["experiment", "bogus"]) == 2


def test_augment_shifts_and_adds_noise_deterministically():
    from n2n_fx.paper.train import augment

    x = load_digits().x_train[:16]
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), 0, 0.0), x)
    a = augment(x, torch.Generator().manual_seed(1), 1, 0.0)
    assert a.shape == x.shape and not torch.equal(a, x)
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(1), 1, 0.0))
    # a shift moves pixels, it does not invent them: each image's values are a subset plus zero padding
    for i in range(16):
        assert set(a[i].flatten().tolist()) <= set(x[i].flatten().tolist()) | {0.0}

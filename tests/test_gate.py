"""n2n-fx as a CI gate: `verify` for any student, exit codes 0 / 1 / 2 / 3, strict JSON on every
exit, one-line causes for mistakes in the user's code and inputs, students that save and load."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import n2n_fx
from n2n_fx.cli import main

FACTORIES = """
import torch
from torch import nn


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double(), torch.randn(3, 4, dtype=torch.float64)


def bare():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def perturbed():
    model, _ = mlp()
    with torch.no_grad():
        model[2].bias.add_(1e-3)
    return model


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2).double()

    def forward(self, x):
        raise RuntimeError("student broke")


def raises():
    return Raises()


def linear_only():
    return nn.Linear(4, 2), torch.randn(3, 4)


def chatty():
    print("building the teacher ...")
    return mlp()


def boom():
    raise ValueError("bad config")


def tokens():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
"""


def strict_json(text: str) -> dict:
    def refuse(name: str):
        raise AssertionError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A factory file with a unique module name (sys.modules keeps files by stem), sys.path restored."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    path = tmp_path / f"gate_models_{tmp_path.name.replace('-', '_')}.py"
    path.write_text(FACTORIES)
    return lambda fn: f"{path}:{fn}"


def test_help_documents_the_exit_codes(capsys):
    for argv in (["--help"], ["verify", "--help"], ["check", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "0  preserved" in out and "1  NOT preserved" in out and "2  unsupported" in out
        assert "3  preserved, but nothing was widened" in out


def test_verify_exit_codes_for_students_n2n_fx_did_not_grow(models, capsys):
    assert main(["verify", models("mlp"), models("mlp"), "--json"]) == 0
    result = strict_json(capsys.readouterr().out)
    assert result["exit_code"] == 0 and result["verdict"] == "preserved" and result["preserved"] is True
    assert main(["verify", models("mlp"), models("perturbed"), "--json"]) == 1
    result = strict_json(capsys.readouterr().out)
    assert result["exit_code"] == 1 and not result["preserved"] and result["max_rel_err"] > 1e-6


def test_json_stdout_is_the_object_alone(models, capsys):
    assert main(["check", models("chatty"), "--json"]) == 0
    captured = capsys.readouterr()
    assert strict_json(captured.out)["preserved"] and "building the teacher" in captured.err


def test_json_is_strict_when_the_student_raises(models, capsys):
    assert main(["verify", models("mlp"), models("raises"), "--json"]) == 1
    result = strict_json(capsys.readouterr().out)  # the infinite errors are null, not Infinity
    assert result["max_abs_err"] is None and result["max_rel_err"] is None and "student broke" in result["detail"]


def test_nothing_widened_is_exit_3(models, capsys):
    assert main(["check", models("linear_only"), "--json"]) == 3
    result = strict_json(capsys.readouterr().out)
    assert result["preserved"] and result["widened"] == 0 and result["verdict"] == "nothing_widened"
    assert main(["widen", models("linear_only")]) == 3
    assert "nothing was widened" in capsys.readouterr().out
    assert main(["check", models("mlp")]) == 0  # something widens: 0


@pytest.mark.parametrize("argv, code", [
    (["check", "{mlp}", "--no-such-flag"], "usage"),
    (["check", "{boom}"], "user_code"),
    (["check", "no_such_module_xyz:build"], "usage"),
    (["check", "{bare}", "--input-shape", "3,5"], "usage"),
    (["verify", "{mlp}", "{missing}"], "usage"),
    (["verify", "{mlp}", "no_such_student.pt"], "usage"),
])
def test_exit_2_prints_json_and_one_line(models, capsys, argv, code):
    argv = [a.format(mlp=models("mlp"), boom=models("boom"), bare=models("bare"), missing=models("missing"))
            for a in argv]
    assert main(argv + ["--json"]) == 2
    captured = capsys.readouterr()
    result = strict_json(captured.out)
    assert result["exit_code"] == 2 and result["verdict"] == "error" and result["error"]["code"] == code
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err


def test_an_error_in_the_factory_names_its_line(models, capsys):
    assert main(["check", models("boom")]) == 2
    err = capsys.readouterr().err
    assert "ValueError: bad config" in err and ".py:" in err and "in boom" in err and "Traceback" not in err
    assert main(["check", models("boom"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_file_that_raises_on_import_is_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "path", list(sys.path))
    bad = tmp_path / "gate_bad_import.py"
    bad.write_text("import torch\nraise ImportError('needs a GPU')\ndef build():\n    return torch.nn.Linear(2, 2)\n")
    assert main(["check", f"{bad}:build", "--input-shape", "2,2"]) == 2
    assert "needs a GPU" in capsys.readouterr().err


def test_factories_import_siblings_and_load_from_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    (tmp_path / "gate_sibling_layers.py").write_text(
        "import torch\ndef block():\n    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())\n")
    (tmp_path / "gate_sibling_net.py").write_text(
        "import torch\nfrom gate_sibling_layers import block\n"
        "def build():\n    return torch.nn.Sequential(block(), torch.nn.Linear(8, 2)), torch.randn(3, 4)\n")
    assert main(["check", f"{tmp_path / 'gate_sibling_net.py'}:build"]) == 0
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "gate_sibling_net", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "gate_sibling_net:build"]) == 0  # a module in the current directory


def test_a_wrong_input_shape_is_one_line(models, capsys):
    assert main(["check", models("bare"), "--input-shape", "3,5"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "mat1 and mat2 shapes cannot be multiplied (3x5 and 4x8)" in err and "--input-shape" in err


def test_token_models_get_integer_inputs(models, capsys):
    assert main(["check", models("tokens"), "--input-shape", "2,5"]) == 2  # float ids
    assert "--vocab" in capsys.readouterr().err
    assert main(["check", models("tokens"), "--input-shape", "2,5", "--input-dtype", "int64"]) == 2  # no range
    assert "--vocab N" in capsys.readouterr().err
    assert main(["check", models("tokens"), "--input-shape", "2,5", "--vocab", "100"]) == 2  # ids past the table
    assert "index out of range" in capsys.readouterr().err
    assert main(["check", models("tokens"), "--input-shape", "2,5", "--vocab", "10", "--json"]) == 0
    assert strict_json(capsys.readouterr().out)["widened"] >= 1
    assert main(["check", models("tokens"), "--input-shape", "2,5", "--input-dtype", "int32",
                 "--int-range", "2,9"]) == 0


def test_input_dtype_mistakes_are_one_line(models, capsys):
    assert main(["check", models("bare"), "--input-shape", "3,4", "--input-dtype", "float64"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--input-dtype float32" in err
    assert main(["check", models("bare"), "--input-shape", "3,4", "--input-dtype", "float64", "--float64"]) == 0
    assert main(["check", models("bare"), "--input-shape", "3,4", "--input-dtype", "float65"]) == 2
    assert "unknown --input-dtype" in capsys.readouterr().err


def test_widen_out_loads_with_weights_only_and_n2n_fx_load(models, tmp_path, capsys):
    path = tmp_path / "student.pt"
    assert main(["widen", models("mlp"), "--factor", "1.5", "--out", str(path)]) == 0
    saved = torch.load(path)  # the default weights_only=True
    assert saved["format"] == "n2n_fx.student" and saved["recipe"][0] == "widen" and "--out" not in saved["recipe"]
    assert saved["state_dict"]["0.weight"].shape == (12, 4)
    student = n2n_fx.load(path)
    from n2n_fx.cli import make_model
    teacher, x = make_model(models("mlp"), 0)
    assert n2n_fx.verify(teacher, student, x).ok
    assert torch.equal(student.state_dict()["0.weight"], saved["state_dict"]["0.weight"])  # the saved weights
    assert main(["verify", models("mlp"), str(path)]) == 0  # and the gate reads the file


def test_fine_tuned_weights_come_back(models, tmp_path):
    from n2n_fx.cli import make_model

    teacher, x = make_model(models("mlp"), 0)
    student = n2n_fx.widen(teacher, x, factor=2.0)
    with torch.no_grad():
        student.get_parameter("2.bias").add_(0.5)
    path = n2n_fx.save(student, tmp_path / "tuned.pt", recipe=["widen", models("mlp"), "--factor", "2"])
    back = n2n_fx.load(path)
    assert torch.equal(back.get_parameter("2.bias"), student.get_parameter("2.bias"))
    assert not n2n_fx.verify(teacher, back, x).ok


def test_export_students_save_and_load(models, tmp_path, capsys):
    path = tmp_path / "exported.pt"
    assert main(["widen", models("mlp"), "--frontend", "export", "--out", str(path)]) == 0
    saved = torch.load(path)
    assert saved["frontend"] == "export"
    student = n2n_fx.load(path)
    assert student.meta.get("n2n_frontend") == "export"
    assert main(["verify", models("mlp"), str(path)]) == 0


def test_a_failed_save_leaves_no_file(tmp_path, monkeypatch):
    def broken(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        n2n_fx.save(torch.nn.Linear(2, 2), tmp_path / "s.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_file_without_recipe_says_how_to_load_it(tmp_path):
    path = n2n_fx.save(torch.nn.Linear(2, 2), tmp_path / "weights.pt")
    assert set(torch.load(path)["state_dict"]) == {"weight", "bias"}
    with pytest.raises(n2n_fx.N2NError, match="without a recipe"):
        n2n_fx.load(path)


def test_verify_reads_state_dicts_and_pickles(models, tmp_path, capsys):
    from n2n_fx.cli import make_model

    teacher, _ = make_model(models("mlp"), 0)
    same, other = tmp_path / "same.pt", tmp_path / "other.pt"
    torch.save(teacher.state_dict(), same)
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).state_dict(), other)
    assert main(["verify", models("mlp"), str(same)]) == 0
    capsys.readouterr()
    assert main(["verify", models("mlp"), str(other), "--json"]) == 2  # another architecture: say so
    assert "does not fit the teacher's architecture" in strict_json(capsys.readouterr().out)["error"]["message"]
    pickled = tmp_path / "whole.pt"
    torch.save(make_model(models("perturbed"), 0)[0], pickled)
    assert main(["verify", models("mlp"), str(pickled)]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert main(["verify", models("mlp"), str(pickled), "--allow-pickle"]) == 1


def test_deepen_takes_module_names_in_both_front_ends(models, capsys):
    from n2n_fx.cli import make_model

    teacher, x = make_model(models("mlp"), 0)
    for frontend in ("fx", "export"):
        student = n2n_fx.deepen(teacher, x, after=["1"], frontend=frontend)  # the ReLU, by its module name
        assert n2n_fx.verify(teacher, student, x).ok, frontend
        assert main(["deepen", models("mlp"), "--after", "0", "--frontend", frontend, "--no-activation"]) == 0
    with pytest.raises(n2n_fx.UnknownNodeError, match="explain"):
        n2n_fx.deepen(teacher, x, after=["9"], frontend="export")
    assert main(["explain", models("mlp"), "--frontend", "export"]) == 0
    out = capsys.readouterr().out
    listed = out.split("deepen --after takes")[1].split()
    assert {"0", "1", "2"} <= set(listed)


def test_the_pytest_plugin_imports_no_torch():
    code = "import sys, n2n_fx.pytest_plugin; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_library_calls_hide_hugging_face_progress_bars():
    transformers = pytest.importorskip("transformers")
    hf_logging = transformers.utils.logging
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)

        def forward(self, x):
            seen.append(hf_logging.is_progress_bar_enabled())
            return self.fc(x)

    hf_logging.enable_progress_bar()
    model = Probe()
    n2n_fx.verify(model, model, torch.randn(2, 3))
    assert seen and not any(seen)
    assert hf_logging.is_progress_bar_enabled()  # restored


def test_experiment_writes_outside_tracked_files(tmp_path, capsys):
    from n2n_fx.cli import make_parser

    assert make_parser().parse_args(["experiment"]).out == "n2n_experiment"
    (tmp_path / "notes.md").write_text("mine")
    assert main(["experiment", "deeper", "--quick", "--out", str(tmp_path)]) == 2  # not empty: refused
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "notes.md").read_text() == "mine"


def test_library_shape_errors_are_one_line_without_a_printed_traceback(capsys):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.raises(n2n_fx.N2NError) as err:
        n2n_fx.plan(model, torch.randn(3, 5), frontend="fx")
    assert "\n" not in str(err.value) and "mat1 and mat2 shapes cannot be multiplied (3x5 and 4x8)" in str(err.value)
    assert capsys.readouterr().err == ""


def test_token_ids_are_redrawn_for_the_comparison(models, tmp_path, capsys):
    """verify redraws floating inputs only; drawn token ids get three more draws, so a student that
    is wrong on an id the first draw missed fails."""
    draws = []
    for seed in range(4):
        torch.manual_seed(seed)
        draws.append(set(torch.randint(0, 10, (1, 3)).flatten().tolist()))
    row = next(r for r in range(10) if r not in draws[0] and any(r in d for d in draws[1:]))
    student = tmp_path / "gate_token_student.py"
    student.write_text(textwrap.dedent(f"""
        import torch
        from {models('tokens').split(':')[0].rsplit('/', 1)[1][:-3]} import tokens

        def build():
            model = tokens()
            with torch.no_grad():
                model[0].weight[{row}] += 1.0
            return model
    """))
    assert main(["verify", models("tokens"), models("tokens"), "--input-shape", "1,3", "--vocab", "10"]) == 0
    capsys.readouterr()
    assert main(["verify", models("tokens"), f"{student}:build", "--input-shape", "1,3", "--vocab", "10",
                 "--json"]) == 1
    assert strict_json(capsys.readouterr().out)["inputs"] == 7  # the example, 3 Gaussian (ids repeat), 3 redraws


def test_deepened_students_save_and_load(models, tmp_path, capsys):
    path = tmp_path / "deeper.pt"
    assert main(["deepen", models("mlp"), "--after", "1", "--frontend", "export", "--out", str(path)]) == 0
    student = n2n_fx.load(path)
    assert len(torch.load(path)["state_dict"]) == 6  # two Linears and the identity layer
    assert main(["verify", models("mlp"), str(path), "--json"]) == 0
    assert student.meta.get("n2n_frontend") == "export"

"""The command line: demo, explain, widen, deepen, check, with exit codes 0 / 1 / 2 / 3 (tests/test_gate.py: verify,
saving, the gate's exit codes and JSON)."""

from __future__ import annotations

import json

import torch

from n2n_fx.cli import main

SPEC = "n2n_fx.models:demo_model"


def test_demo(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "NOT PRESERVED" not in out and out.count("preserved") >= 5 and "inc1.b1.0" in out


def test_explain_and_rules(capsys):
    assert main(["explain", SPEC, "--float64"]) == 0
    out = capsys.readouterr().out
    assert "model_output" in out and "why frozen" in out
    assert main(["explain", "--rules"]) == 0
    assert "conv_matrix" in capsys.readouterr().out


def test_widen_saves_a_loadable_student(tmp_path, capsys):
    import n2n_fx

    path = tmp_path / "student.pt"
    assert main(["widen", SPEC, "--float64", "--factor", "1.5", "--symmetry", "split", "--out", str(path)]) == 0
    assert "preserved" in capsys.readouterr().out
    assert torch.load(path)["state_dict"]["fc1.weight"].shape[0] == 48  # weights_only=True reads it
    student = n2n_fx.load(path)
    assert student.fc1.out_features == 48
    assert [p.name for p in tmp_path.iterdir()] == ["student.pt"]  # no temporary left behind


def test_deepen(capsys):
    assert main(["deepen", SPEC, "--float64", "--after", "stem", "--after", "fc1", "--batch-norm"]) == 0


def test_check_json_and_exit_codes(capsys):
    assert main(["check", SPEC, "--float64", "--json", "--after", "inc1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["preserved"] and result["max_rel_err"] <= 1e-10 and result["widened"] == 16
    assert main(["check", "n2n_fx.models:nothing_here"]) == 2
    assert main(["check", SPEC, "--width", "fc2=20"]) == 2  # bound to the output
    assert main(["deepen", SPEC, "--after", "no_such_node"]) == 2


def test_factory_from_a_file(tmp_path, capsys):
    f = tmp_path / "mymodel.py"
    f.write_text("import torch\n"
                 "def build():\n"
                 "    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))\n")
    assert main(["check", f"{f}:build", "--input-shape", "3,4"]) == 0
    assert main(["check", f"{f}:build"]) == 2  # no example inputs


def test_pytest_plugin_fixture(n2n_check):
    """The fixture users get from the installed plugin: passes exact students, fails wrong ones."""
    import pytest

    import n2n_fx
    from n2n_fx.models import ZOO

    model, x = ZOO["se"]()
    model, x = model.double().eval(), x.double()
    student = n2n_fx.widen(model, x, factor=1.5)
    assert n2n_check(model, student, x).ok
    with torch.no_grad():
        student.head.bias.add_(1e-3)
    with pytest.raises(AssertionError, match="does not preserve(.|\n)*first difference: module 'head'"):
        n2n_check(model, student, x)


def test_export_frontend_and_residual_block(tmp_path, capsys):
    spec = tmp_path / "enc.py"
    spec.write_text(
        "import torch\nfrom torch import nn\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, batch_first=True), 1,\n"
        "                                enable_nested_tensor=False)\n"
        "    return nn.Sequential(nn.Linear(3, 8), enc, nn.Linear(8, 2)).eval(), (torch.randn(2, 4, 3),)\n")
    assert main(["check", f"{spec}:build", "--frontend", "export", "--float64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["preserved"] and result["widened"] >= 2  # residual stream and MLP through torch.export
    # fx keeps the encoder opaque: nothing widens, which the gate reports as exit 3, not success
    assert main(["check", f"{spec}:build", "--frontend", "fx", "--float64", "--json"]) == 3
    opaque = json.loads(capsys.readouterr().out)
    assert opaque["widened"] == 0 and opaque["preserved"] and "unknown_op" in json.dumps(opaque["frozen"])
    # auto sees the opaque leaf and takes torch.export's graph, which looks inside it
    assert main(["check", f"{spec}:build", "--float64", "--json"]) == 0
    auto = json.loads(capsys.readouterr().out)
    assert auto["widened"] == result["widened"] and auto["preserved"]
    assert main(["deepen", f"{spec}:build", "--frontend", "export", "--float64", "--after", "linear_2",
                 "--block", "residual"]) == 0
    assert "preserved" in capsys.readouterr().out

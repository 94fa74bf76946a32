"""The `explain` table of fixed models is checked in; regenerate with N2N_REGEN_GOLDEN=1 pytest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from n2n_fx.cli import main
from n2n_fx.models import ZOO

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("name", ["inception", "mobilenet", "shuffle", "resnet"])
def test_explain_matches_golden(name, capsys, monkeypatch):
    import n2n_fx.models as models

    monkeypatch.setattr(models, "golden_factory", lambda: ZOO[name](), raising=False)
    torch.manual_seed(0)
    assert main(["explain", "n2n_fx.models:golden_factory", "--factor", "1.5"]) == 0
    out = capsys.readouterr().out
    path = GOLDEN / f"explain_{name}.txt"
    if os.environ.get("N2N_REGEN_GOLDEN"):
        path.write_text(out)
    assert path.exists(), f"missing golden file {path}: run N2N_REGEN_GOLDEN=1 pytest tests/test_golden.py"
    assert out == path.read_text()

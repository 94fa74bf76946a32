"""dynamic_shapes=: an exported student keeps the batch and sequence dims torch.export left
dynamic, so it runs (and verifies) at sizes other than the example's. The plan is the static one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

import n2n_fx

SIZES = [(1, 5), (3, 11), (2, 1), (4, 16)]


def _rows(plan: n2n_fx.Plan) -> list:
    return [(p.name, p.width, p.new_width, p.frozen, tuple(map(str, p.reasons)), p.g.tolist()) for p in plan.spaces]


def _check(teacher: nn.Module, student: nn.Module, make) -> None:
    for b, s in SIZES:
        report = n2n_fx.verify(teacher, student, make(b, s))
        assert report.ok and report.max_rel_err <= 1e-10, ((b, s), report)


@pytest.fixture(scope="module")
def llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).double().eval(), torch.randint(0, 64, (2, 7))


def _ids(b: int, s: int) -> torch.Tensor:
    return torch.randint(0, 64, (b, s), generator=torch.Generator().manual_seed(b * 100 + s))


@pytest.mark.parametrize("dynamic", ["auto", ({0: Dim("batch", min=1, max=8), 1: Dim("seq", min=1, max=32)},)])
def test_llama_student_runs_at_other_batch_and_sequence_sizes(llama, dynamic) -> None:
    model, ids = llama
    student = n2n_fx.widen(model, ids, factor=2.0, frontend="export", dynamic_shapes=dynamic)
    assert student.model.embed_tokens.weight.shape == (64, 64)
    _check(model, student, lambda b, s: (_ids(b, s),))


def test_llama_plan_is_the_static_plan(llama) -> None:
    model, ids = llama
    static = n2n_fx.plan(model, ids, factor=2.0, frontend="export")
    dynamic = n2n_fx.plan(model, ids, factor=2.0, frontend="export", dynamic_shapes="auto")
    assert _rows(dynamic) == _rows(static)
    assert any(p.new_width > p.width for p in static.spaces)


def test_static_export_student_refuses_other_sizes(llama) -> None:
    """The default (dynamic_shapes=None) is torch.export's: specialised to the example shapes; the
    student's input check (torch.export's pre-hook, kept by the student) names the dim."""
    model, ids = llama
    student = n2n_fx.widen(model, ids, factor=2.0, frontend="export")
    assert n2n_fx.verify(model, student, (ids,)).ok
    with pytest.raises(Exception, match="Guard failed"):
        student(_ids(3, 11))


class SeqNet(nn.Module):
    """An MLP and a conv over a sequence, with sizes read from the input (x.shape) and literal
    widths in view/reshape: the shapes a dynamic export writes as sym_size nodes and ints."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.conv = nn.Linear(6, 16), nn.Conv1d(16, 16, 3, padding=1)
        self.norm, self.mid, self.out = nn.LayerNorm(16), nn.Linear(16, 12), nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        h = F.gelu(self.inp(x))
        h = torch.relu(self.conv(h.transpose(1, 2))).transpose(1, 2)
        h = self.norm(h).reshape(b * s, 16)  # a computed size next to a width literal
        h = torch.tanh(self.mid(h)).view(b, s, 12)
        return self.out(h) + h.mean(1, keepdim=True)[..., :5]


def _x(b: int, s: int) -> torch.Tensor:
    return torch.randn(b, s, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(b * 100 + s))


def test_custom_seq_model_dynamic_student() -> None:
    torch.manual_seed(0)
    model, x = SeqNet().double().eval(), _x(2, 7)
    static = n2n_fx.plan(model, x, factor=2.0, frontend="export")
    dynamic = n2n_fx.plan(model, x, factor=2.0, frontend="export", dynamic_shapes="auto")
    assert _rows(dynamic) == _rows(static)
    student = n2n_fx.widen(model, x, factor=2.0, frontend="export", dynamic_shapes="auto")
    assert student.conv.weight.shape[0] == 32
    _check(model, student, lambda b, s: (_x(b, s),))
    with pytest.raises(Exception, match="Guard failed"):
        n2n_fx.widen(model, x, factor=2.0, frontend="export")(_x(3, 11))


def test_deepen_keeps_dynamic_dims() -> None:
    torch.manual_seed(0)
    model, x = SeqNet().double().eval(), _x(2, 7)
    gm = n2n_fx.trace(model, x, frontend="export", dynamic_shapes="auto")
    conv = next(n.name for n in gm.graph.nodes if "conv1d" in str(n.target))
    student = n2n_fx.deepen(model, x, after=[conv], frontend="export", dynamic_shapes="auto")
    _check(model, student, lambda b, s: (_x(b, s),))


def test_bad_dynamic_shapes_is_a_typed_error() -> None:
    model, x = SeqNet().double().eval(), _x(2, 7)
    with pytest.raises(n2n_fx.N2NError, match="dynamic_shapes"):
        n2n_fx.plan(model, x, frontend="export", dynamic_shapes="yes")
    # a width dim cannot vary: torch.export refuses, the error is typed and names dynamic_shapes
    with pytest.raises(n2n_fx.TraceFailure, match="dynamic_shapes"):
        n2n_fx.plan(model, x, frontend="export", dynamic_shapes=({2: Dim("feat")},))

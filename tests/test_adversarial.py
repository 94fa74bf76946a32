"""An adversarial audit of tied embeddings kept tied (and of verify): each model here made n2n_fx
produce a wrong student, or verify misjudge or write into a teacher, when the audit wrote it.
Freezing a space is always allowed; a student that does not compute the teacher's function is not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import n2n_fx
from n2n_fx.testing import assert_untouched, fingerprint

V, C = 11, 6
FRONTENDS = ["fx", "export"]


def _ids(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, V, (batch, 6), generator=torch.Generator().manual_seed(batch))


def _exact(model: nn.Module, x, frontend: str, **kw) -> None:
    """Widen 2x and require the student to compute the teacher's function (a frozen space is fine)."""
    before = fingerprint(model)
    student = n2n_fx.widen(model, x, factor=2.0, frontend=frontend, **kw)
    assert_untouched(model, before)
    report = n2n_fx.verify(model, student, x, mode=kw.get("mode", "eval"))
    assert report.ok, f"wrong student: max_rel_err={report.max_rel_err:.3g} ({report.detail})"


class _Tied(nn.Module):
    """Embedding table looked up and reused as the head's matrix, with a final LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.mid, self.ln = nn.Embedding(V, C), nn.Linear(C, C), nn.LayerNorm(C)
        with torch.no_grad():
            self.ln.weight.uniform_(0.5, 1.5)
            self.ln.bias.normal_()


class SharedNormTied(_Tied):
    """One LayerNorm module called twice: inside the block and before the tied head. Dividing its
    weight and bias for the head also divides the block's input."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + torch.tanh(self.mid(self.ln(h)))
        return F.linear(self.ln(h), self.emb.weight)


class GainAlsoGatesTied(_Tied):
    """The head's gain `g` also gates the block's input (h * g read twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.rand(C) + 0.5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + torch.tanh(self.mid(h * self.g))
        return F.linear(h * self.g, self.emb.weight)


class ShiftAlsoUsedTied(_Tied):
    """The shift `b` added before the head is also added to the block's input."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.randn(C))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + torch.tanh(self.mid(h + self.b))
        return F.linear(self.ln(h) + self.b, self.emb.weight)


class NormBiasAlsoUsedTied(_Tied):
    """The final norm's bias is also added to the residual stream (a carry use elsewhere)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + torch.tanh(self.mid(h)) + self.ln.bias
        return F.linear(self.ln(h), self.emb.weight)


class GainSquaredTied(_Tied):
    """h * g * g before the head: the walk stops at the outer mul and divides g, which the inner
    mul reads too, so the head's input is divided by c**2."""

    def __init__(self) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.rand(C) + 0.5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + torch.tanh(self.mid(h))
        return F.linear(h * self.g * self.g, self.emb.weight)


class BiasOnlyNormTied(_Tied):
    """F.layer_norm with a bias and no weight: dividing the bias alone does not divide the output
    (normalised + b / c is not (normalised + b) / c)."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.randn(C))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + torch.tanh(self.mid(h))
        return F.linear(F.layer_norm(h, (C,), None, self.b), self.emb.weight)


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("model_cls", [SharedNormTied, GainAlsoGatesTied, ShiftAlsoUsedTied,
                                       NormBiasAlsoUsedTied, GainSquaredTied],
                         ids=lambda c: c.__name__)
def test_tied_gain_with_another_use_is_not_divided(model_cls, frontend: str) -> None:
    """A gain or shift read anywhere else (a second call of the norm, another mul or add, g * g)
    would see the divided values there: it must be read by the one call alone, else the tie freezes."""
    _exact(model_cls().double().eval(), (_ids(),), frontend)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_tied_head_after_bias_only_norm(frontend: str) -> None:
    """A norm with a bias and no weight has no gain: normalised + b / c is not (normalised + b) / c."""
    _exact(BiasOnlyNormTied().double().eval(), (_ids(),), frontend)


class _DropoutLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.mid, self.drop, self.head = nn.Embedding(V, C), nn.Linear(C, C), nn.Dropout(0.3), nn.Linear(C, V)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        return self.head(h + self.drop(torch.tanh(self.mid(h))))


def test_export_train_mode_dropout_verifies() -> None:
    """A student exported in train mode carries aten.dropout nodes, not nn.Dropout modules:
    verify(mode='train') skips them as it skips the modules, instead of comparing two random masks."""
    model, ids = _DropoutLM().double().eval(), _ids()
    student = n2n_fx.widen(model, (ids,), factor=2.0, frontend="export", mode="train")
    report = n2n_fx.verify(model, student, (ids,), mode="train")
    assert report.ok, f"max_rel_err={report.max_rel_err:.3g}"


class _MaxNormLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(V, C, max_norm=1.0), nn.Linear(C, V)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_verify_leaves_max_norm_embedding_untouched(frontend: str) -> None:
    """nn.Embedding(max_norm=...) renormalises the rows it looks up, in place, on every forward:
    verify runs such a teacher on a copy, never on its own tensors."""
    model, ids = _MaxNormLM().double().eval(), _ids()
    student = n2n_fx.widen(model, (ids,), factor=2.0, frontend=frontend)
    before = fingerprint(model)
    n2n_fx.verify(model, student, (ids,))
    assert_untouched(model, before)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_untie_gives_an_exact_student_for_a_one_name_tie(frontend: str) -> None:
    """untie=True copies tables reached under two names; F.linear(y, self.emb.weight) reads one, so
    the student must still be exact (the tie freezes, and the reason says why untie cannot help)."""
    _exact(SharedNormTied().double().eval(), (_ids(),), frontend, untie=True)

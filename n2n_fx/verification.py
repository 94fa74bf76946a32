"""Verification: does the student compute the teacher's function? Compared in float64 by default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .frontend import _copy, as_inputs


@dataclass
class Report:
    ok: bool
    max_abs_err: float
    max_rel_err: float  # max |student - teacher| / max |teacher|, over all outputs and inputs
    rtol: float
    n_inputs: int
    mode: str
    per_input: list[tuple[float, float]] = field(default_factory=list)
    detail: str = ""  # why the outputs could not be compared, when they could not
    dtype: str = "float64"  # the precision both models ran in

    def __str__(self) -> str:
        verdict = "preserved" if self.ok else "NOT preserved"
        text = (f"{verdict}: max abs err {self.max_abs_err:.3e}, max rel err {self.max_rel_err:.3e} "
                f"(rtol {self.rtol:.0e}, {self.n_inputs} inputs, {self.mode} mode, {self.dtype})")
        return f"{text}: {self.detail}" if self.detail else text


def _float_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float64


def _cast(x: Any, dtype: torch.dtype) -> Any:
    return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flat(out[k])]
    return []


def _seeded_run(model: torch.nn.Module, batch: tuple, seed: int) -> Any:
    """Both models draw the same random numbers (stochastic depth masks in train mode)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model(*batch)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    err = float((a.double() - b.double()).abs().max())
    return float("inf") if err != err else err  # NaN must fail, not vanish in max()


def random_like(inputs: tuple, n: int, seed: int, dtype: torch.dtype = torch.float64) -> list[tuple]:
    """Gaussian inputs shaped like the floating example inputs (integer inputs are reused)."""
    gen = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype) if isinstance(x, torch.Tensor)
                  and x.is_floating_point() else x for x in inputs) for _ in range(n)]


def prepare(model: torch.nn.Module, mode: str, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    tensors = [*model.parameters(), *model.buffers()]
    if mode == "eval" and not any(m.training for m in model.modules()) and \
            all(t.dtype == dtype for t in tensors if t.is_floating_point()):
        # a copy of the module tree that shares the parameters (a 4x student is large): a forward
        # may still write Python state and buffers (caches, counters), never the caller's
        m = _copy(model, share_tensors=True)
        for sub in m.modules():
            for name, b in sub._buffers.items():
                if b is not None:
                    sub._buffers[name] = b.clone()
        return m
    m = _copy(model, share_tensors=False).to(dtype)
    m.train(mode == "train")
    if mode == "train":  # dropout masks are random and shaped by the width: compare without them
        for sub in m.modules():
            if isinstance(sub, torch.nn.modules.dropout._DropoutNd):
                sub.eval()
    return m


def verify(teacher: torch.nn.Module, student: torch.nn.Module, example_inputs: Any, *, n_random: int = 3,
           seed: int = 0, mode: str = "eval", rtol: float | None = None,
           dtype: torch.dtype = torch.float64) -> Report:
    """Run teacher and student in float64 on the example inputs and `n_random` Gaussian inputs.

    Neither model is modified (each is deep-copied, unless it already is in eval mode and `dtype`,
    and the check is in eval mode: then it runs as is, which writes nothing). `rtol` defaults to 1e-10 when the student's
    parameters are float64 and 1e-5 otherwise (float32 weights divided by replica counts round).
    `dtype=torch.float32` compares in float32 (rtol 1e-5 by default) for models whose float64
    copies would not fit in memory; rounding then hides errors below about 1e-6.
    In train mode each input is one batch for both models (BatchNorm uses its statistics), and both
    run from the same random state, so per-sample drop masks (stochastic depth) agree.
    """
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    if rtol is None:
        rtol = 1e-10 if _float_dtype(student) == torch.float64 and dtype == torch.float64 else 1e-5
    inputs = as_inputs(example_inputs)
    batches = [tuple(_cast(x, dtype) for x in inputs)] + random_like(inputs, n_random, seed, dtype)
    t_model, s_model = prepare(teacher, mode, dtype), prepare(student, mode, dtype)
    name = str(dtype).replace("torch.", "")
    worst_abs, worst_rel, largest, per = 0.0, 0.0, 0.0, []
    with torch.no_grad():
        for k, batch in enumerate(batches):
            t_out, s_out = _flat(_seeded_run(t_model, batch, seed + k)), _flat(_seeded_run(s_model, batch, seed + k))
            if len(t_out) != len(s_out) or any(a.shape != b.shape for a, b in zip(t_out, s_out)):
                shapes = [tuple(t.shape) for t in t_out], [tuple(t.shape) for t in s_out]
                return Report(False, float("inf"), float("inf"), rtol, len(batches), mode, per,
                              f"outputs differ in structure: teacher {shapes[0]}, student {shapes[1]} (a traced "
                              f"student keeps the control flow of the mode it was traced in)", name)
            abs_err = max((_max_abs(a, b) for a, b in zip(t_out, s_out) if a.numel()), default=0.0)
            scale = max((float(a.abs().max()) for a in t_out if a.numel()), default=0.0)
            rel_err = abs_err / scale if scale > 0 else abs_err
            per.append((abs_err, rel_err))
            worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel_err)
            largest = max(largest, scale)
    if largest == 0.0:  # e.g. a zero-initialised classifier head: equality would prove nothing
        return Report(False, worst_abs, worst_rel, rtol, len(batches), mode, per,
                      "the teacher's outputs are all zero on every input, so the comparison proves nothing "
                      "(re-initialise a zero head, or compare an earlier output)", name)
    return Report(worst_rel <= rtol, worst_abs, worst_rel, rtol, len(batches), mode, per, dtype=name)

"""Verification: does the student compute the teacher's function? Compared in float64 by default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from .errors import N2NError
from .frontend import Inputs, _copy, as_inputs, as_module, call, map_inputs


@dataclass
class Report:
    ok: bool  # the plan check (`dtype`, float64 by default) and, when the models run in another dtype, the native one
    max_abs_err: float
    max_rel_err: float  # max |student - teacher| / max |teacher|, over all outputs and inputs
    rtol: float
    n_inputs: int
    mode: str
    per_input: list[tuple[float, float]] = field(default_factory=list)
    detail: str = ""  # why the outputs could not be compared, when they could not
    dtype: str = "float64"  # the precision of the plan check (both models' twins ran in it)
    # the student as it will run: its own dtype, against the teacher's function computed in `dtype`
    native_dtype: str = ""  # empty: the models' dtype is `dtype`, the plan check already is the native one
    native_ok: bool = True
    native_max_rel_err: float = 0.0  # max |student_native - teacher_ref| / max |teacher_ref|
    native_teacher_rel_err: float = 0.0  # the same for the teacher itself: its own rounding error
    native_rtol: float = 0.0
    # a 16-bit student over eps/4: the error one rounding of every weight makes (the bound is then twice it)
    rounding_rel_err: float = 0.0

    def __str__(self) -> str:
        verdict = "preserved" if self.ok else "NOT preserved"
        text = (f"{verdict}: max abs err {self.max_abs_err:.3e}, max rel err {self.max_rel_err:.3e} "
                f"(rtol {self.rtol:.0e}, {self.n_inputs} inputs, {self.mode} mode, {self.dtype})")
        if self.native_dtype:
            text += (f"; in {self.native_dtype}: student rel err {self.native_max_rel_err:.3e}, teacher "
                     f"{self.native_teacher_rel_err:.3e} (rtol {self.native_rtol:.1e})")
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


def _seeded_run(model: torch.nn.Module, batch: Inputs, seed: int) -> Any:
    """Both models draw the same random numbers (stochastic depth masks in train mode)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return call(model, batch)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    err = float((a.double() - b.double()).abs().max())
    return float("inf") if err != err else err  # NaN must fail, not vanish in max()


def random_like(inputs: Inputs, n: int, seed: int, dtype: torch.dtype = torch.float64) -> list[Inputs]:
    """Gaussian inputs shaped like the floating example inputs (integer inputs, token ids and masks,
    are reused); a dict of keyword inputs gives dicts, drawn in its key order."""
    gen = torch.Generator().manual_seed(seed)

    def draw(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
        return x

    return [map_inputs(inputs, draw) for _ in range(n)]


def _less_precise(dt: torch.dtype, than: torch.dtype) -> bool:
    return dt.is_floating_point and than.is_floating_point and not dt.is_complex \
        and torch.finfo(dt).eps > torch.finfo(than).eps


_CAST_METHODS = ("float", "half", "bfloat16")  # Tensor methods that pin a low precision


def _retarget_args(value: Any, old: torch.dtype, dtype: torch.dtype, hits: list[int]) -> Any:
    if isinstance(value, torch.dtype) and value == old:
        hits.append(1)
        return dtype
    if isinstance(value, (list, tuple)):
        return type(value)(_retarget_args(v, old, dtype, hits) for v in value)
    if isinstance(value, dict):
        return {k: _retarget_args(v, old, dtype, hits) for k, v in value.items()}
    return value


def retarget_dtypes(model: torch.nn.Module, dtype: torch.dtype, old: torch.dtype, *, apply: bool = True) -> int:
    """Make every `old` dtype literal (the model's own dtype) in the graphs of `model` `dtype`: the
    dtype kwargs of `_assert_tensor_metadata`, the targets of `to` / `_to_copy` / `.float()` casts,
    `dtype=` of factories. torch.export pins the dtype the model was exported in: a float64 copy of
    the graph would fail those asserts, or round back to it inside. Casts to other dtypes (the
    float32 upcast of a bfloat16 RMSNorm) are the model's own arithmetic and stay, as they do in
    the Python code of a module that is not a GraphModule, so a graph and the module it was
    exported from still compute alike. Returns how many literals were (with `apply=False`: would
    be) rewritten."""
    if not _less_precise(old, dtype):
        return 0
    count = 0
    for m in model.modules():
        if not isinstance(m, torch.fx.GraphModule):
            continue
        changed = False
        for n in m.graph.nodes:
            if n.op == "call_method" and n.target in _CAST_METHODS and old == \
                    {"float": torch.float32, "half": torch.float16, "bfloat16": torch.bfloat16}[n.target]:
                count, changed = count + 1, True
                if apply:
                    n.target, n.args, n.kwargs = "to", (n.args[0], dtype), {}
            elif n.op in ("call_function", "call_method"):
                hits: list[int] = []
                args, kwargs = _retarget_args(n.args, old, dtype, hits), _retarget_args(dict(n.kwargs), old, dtype, hits)
                if hits:
                    count, changed = count + len(hits), True
                    if apply:
                        n.args, n.kwargs = args, kwargs
        if changed and apply:
            m.recompile()
    return count


def prepare(model: torch.nn.Module, mode: str, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """`model` ready to run in `mode` and `dtype`: a copy of its module tree sharing the parameters
    when it already is in eval mode and `dtype`, else a deep copy cast to `dtype` with its pinned
    dtype literals retargeted."""
    tensors = [*model.parameters(), *model.buffers()]
    own = _float_dtype(model)
    if mode == "eval" and not any(m.training for m in model.modules()) and not _writes_weights(model) and \
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
    retarget_dtypes(m, dtype, own)
    m.train(mode == "train")
    if mode == "train":  # dropout masks are random and shaped by the width: compare without them
        for sub in m.modules():
            if isinstance(sub, torch.nn.modules.dropout._DropoutNd):
                sub.eval()
        if isinstance(m, torch.fx.GraphModule):
            _drop_dropout(m)
    return m


_DROPOUT = {torch.ops.aten.dropout.default, torch.nn.functional.dropout, torch.dropout}


def _drop_dropout(gm: torch.fx.GraphModule) -> None:
    """A graph's own dropout calls (an exported train-mode student carries aten.dropout nodes, not
    nn.Dropout modules) are skipped, as the modules are."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in _DROPOUT:
            node.replace_all_uses_with(node.args[0] if node.args else node.kwargs["input"])
            gm.graph.erase_node(node)
            changed = True
    if changed:
        gm.recompile()


def _writes_weights(model: torch.nn.Module) -> bool:
    """A forward that writes into its own weights (nn.Embedding(max_norm=...) renormalises the rows
    it looks up, in place) must run on a copy: the caller's tensors are never written."""
    return any(isinstance(m, torch.nn.Embedding) and m.max_norm is not None for m in model.modules())


def plan_rtol(native: torch.dtype, filled: bool = False, dtype: torch.dtype = torch.float64) -> float:
    """The plan check's default tolerance for a student stored in `native`, compared in `dtype`:
    1e-10 for float64 in float64; else max(1e-5, eps/4), since a weight divided by its replica
    count (w / 3) is rounded once to the stored dtype. A 16-bit student whose normalised space was
    filled gets 2 eps: fill multiplies every weight on the space by s = sqrt(new/old), so each is
    rounded once, and the roundings add up over depth (measured 0.4 eps on 3 layers, 1.0 eps on a
    32-layer Llama)."""
    if native == torch.float64 and dtype == torch.float64:
        return 1e-10
    if filled and native.itemsize == 2:
        return 2 * torch.finfo(native).eps
    return max(1e-5, torch.finfo(native).eps / 4)


ROUNDING_C = 2.0  # the plan bound of a deep 16-bit student: this many times one rounding of every weight


def perturbed(t: torch.Tensor, rel: float, key: str, seed: int = 0) -> torch.Tensor:
    """t in float64 times (1 + rel * u), u uniform in [-1, 1] drawn for this tensor by (seed, key):
    with rel = eps/4, a typical rounding's worth of error on every entry, reproducibly."""
    from .planning import seeded

    out = torch.empty(t.shape, dtype=torch.float64, device=t.device).copy_(t)  # contiguous, whatever t's strides
    flat, gen = out.view(-1), seeded(seed, "rounding", key)
    for start in range(0, flat.numel(), 1 << 22):  # u a chunk at a time: a streamed 12B check stays small
        part = flat[start:start + (1 << 22)]
        part.mul_(torch.rand(part.shape, generator=gen, dtype=torch.float64).mul_(2 * rel).add_(1 - rel))
    return out


def rounding_rtol(rtol: float, rounding_rel_err: float) -> float:
    """The plan check's bound once the rounding error is measured: a 16-bit student's w / c weights
    are each rounded once (relative error at most eps/2), and those roundings add up with depth and
    width (0.22 eps on a 12-layer Llama, 0.54 eps at 26 layers and hidden 3072, 2x), past eps/4.
    Where eps/4 fails, the bound follows the model: ROUNDING_C times the error of a typical rounding
    of *every* weight (relative u in [-eps/4, eps/4]: a rounding to nearest errs by eps/8 to eps/4 on
    average), measured on the student's twin in the same run. The student rounds only its divided
    weights, so its error stays below that (measured: 1/2.5 to 1/4 of it); a mistake (an undivided
    replica, a wrong map) is not a rounding and stands out where the model is small enough for it to
    (in bfloat16 a one-unit mistake is about 1/width of the output: under any rounding bound in wide
    models; the float64 models of the test suite are where exactness is proved)."""
    return max(rtol, ROUNDING_C * rounding_rel_err)


def native_rtol(dtype: torch.dtype, teacher_rel_err: float) -> float:
    """The tolerance of the student as it runs in `dtype` (against the teacher computed in float64).

    The student computes the teacher's real function with the same ops in the same precision, so
    its rounding error is the teacher's own kind: contractions up to `factor` times longer (a
    length-n sum's rounding bound grows linearly in n, like sqrt(n) in practice) and each weight
    rounded once (relative eps/2). The bound is NATIVE_C times the teacher's own error measured in
    the same run on the same inputs, and never below NATIVE_C * eps / 2 (a teacher can be exact by
    luck on a few inputs; one rounding of the output is eps/2 of its scale). Measured on Llama,
    Qwen2 at 2x in bfloat16/float16/float32: student/teacher 0.93-1.5; on the demo MLP at 1.5x in
    float32 up to 2.1; NATIVE_C = 4 leaves twice the worst seen. This check
    says the student is usable in its dtype; the plan check (float64 twins) is the sharp one: in
    bfloat16 a single undivided replica is ~1 eps, which only the plan check resolves.
    """
    return NATIVE_C * max(teacher_rel_err, torch.finfo(dtype).eps / 2)


NATIVE_C = 4.0


def verify(teacher: torch.nn.Module, student: torch.nn.Module, example_inputs: Any, *, n_random: int = 3,
           seed: int = 0, mode: str = "eval", rtol: float | None = None,
           dtype: torch.dtype = torch.float64) -> Report:
    """Does the student compute the teacher's function? Two checks, on the example inputs and
    `n_random` Gaussian inputs:

    * the plan: both models' twins in `dtype` (float64 by default: deep copies cast to it, with
      the model's own dtype where an exported graph pins it retargeted, see `retarget_dtypes`). `.ok`,
      `.max_abs_err`, `.max_rel_err`, `.rtol` describe it. `rtol` defaults to 1e-10 when the
      student's parameters are float64, else 1e-5 (its weights, divided by replica counts, were
      rounded to its dtype once; Python code that upcasts to float32, as Hugging Face RMSNorm
      does, rounds there too); for bfloat16/float16 weights it is eps/4 (w / 3 stored in 16 bits
      is off by up to eps/2 per weight; the output errs by 0.07-0.11 eps on Llama at 2x, where
      random replica counts reach 3, while one undivided replica of 48 errs by ~1 eps); a 16-bit student whose normalised space was
      filled (its graph's meta['n2n_filled']) gets 2 eps: every weight on that space is rounded once.
      Where a 16-bit student's error passes eps/4 (the roundings add up in deep, wide models), the
      bound becomes twice the error a typical rounding of every weight makes on its twin, measured
      in the same run (`rounding_rtol`; `.rounding_rel_err`). `dtype=torch.float32` is for models whose float64 copies do not
      fit in memory; rounding then hides errors below about 1e-6.
    * the student as it will run, when its dtype is less precise than `dtype` (float32, bfloat16,
      float16): teacher and student run natively (inputs rounded to that dtype, used by both
      checks), and each is compared with the teacher's `dtype` twin. `.native_ok` holds when the
      student's error is within `native_rtol(dtype, teacher's own error)`: the student is as
      accurate as the teacher, up to the rounding of a longer computation. `.ok` requires both.

    A student that raises is `ok=False` with the exception in `.detail`; bad arguments (an
    unknown `mode`, a teacher that does not run on the inputs) raise `N2NError`. Neither model is
    modified: each runs as a copy of its module tree (sharing the parameters, with its own buffers
    and Python state) when it is in eval mode and `dtype`, else as a deep copy.
    In train mode each input is one batch for both models (BatchNorm uses its statistics), and both
    run from the same random state, so per-sample drop masks (stochastic depth) agree.
    """
    if mode not in ("eval", "train"):
        raise N2NError(f"mode must be 'eval' or 'train', got {mode!r}", op="verify",
                       fix="pass mode='eval' (inference) or mode='train' (batch statistics)")
    teacher, student = as_module(teacher), as_module(student)  # an ExportedProgram: the module it runs
    for role, m in (("teacher", teacher), ("student", student)):
        if not isinstance(m, torch.nn.Module):
            raise N2NError(f"the {role} must be an nn.Module, got {type(m).__name__}", op="verify",
                           fix="pass the model objects themselves")
    native = _float_dtype(student)
    measure = rtol is None and native.itemsize == 2 and dtype == torch.float64  # rounding_rtol, if needed
    if rtol is None:
        meta = getattr(student, "meta", None)
        filled = isinstance(meta, dict) and bool(meta.get("n2n_filled"))
        rtol = plan_rtol(native, filled=filled, dtype=dtype)
        measure = measure and not filled
    low = native if _less_precise(native, dtype) else None
    inputs = as_inputs(example_inputs)
    drawn = [map_inputs(inputs, lambda x: _cast(x, low or dtype))] + random_like(inputs, n_random, seed, low or dtype)
    batches = [map_inputs(b, lambda x: _cast(x, dtype)) for b in drawn]  # the same numbers in both checks
    name = str(dtype).replace("torch.", "")
    t_model, s_model = prepare(teacher, mode, dtype), prepare(student, mode, dtype)
    t_nat = s_nat = None
    if low is not None:
        t_nat, s_nat = prepare(teacher, mode, low), prepare(student, mode, low)
    worst_abs, worst_rel, largest, per, plan_outs = 0.0, 0.0, 0.0, [], []
    nat_s, nat_t, rounding = 0.0, 0.0, 0.0

    def failed(detail: str) -> Report:
        return Report(False, float("inf"), float("inf"), rtol, len(batches), mode, per, detail, name,
                      str(low).replace("torch.", "") if low else "", False, float("inf"), nat_t,
                      native_rtol(low, nat_t) if low else 0.0)

    def run(model: torch.nn.Module, batch: Inputs, k: int, role: str) -> list[torch.Tensor]:
        try:
            return _flat(_seeded_run(model, batch, seed + k))
        except Exception as exc:  # whatever a broken student raises is the verdict, not a crash
            if role.startswith("teacher"):
                raise N2NError(f"the {role} does not run on the example inputs: {type(exc).__name__}: {exc}",
                               op="verify", fix="pass example_inputs the teacher accepts") from exc
            raise _StudentFailed(f"the {role} raised {type(exc).__name__}: {exc}") from exc

    with torch.no_grad():
        try:
            for k, batch in enumerate(batches):
                t_out, s_out = run(t_model, batch, k, "teacher"), run(s_model, batch, k, "student")
                if len(t_out) != len(s_out) or any(a.shape != b.shape for a, b in zip(t_out, s_out)):
                    shapes = [tuple(t.shape) for t in t_out], [tuple(t.shape) for t in s_out]
                    return failed(f"outputs differ in structure: teacher {shapes[0]}, student {shapes[1]} (a "
                                  f"traced student keeps the control flow of the mode it was traced in)")
                abs_err = max((_max_abs(a, b) for a, b in zip(t_out, s_out) if a.numel()), default=0.0)
                scale = max((float(a.abs().max()) for a in t_out if a.numel()), default=0.0)
                rel_err = abs_err / scale if scale > 0 else abs_err
                per.append((abs_err, rel_err))
                if measure:  # the rounding measure compares against them
                    plan_outs.append((s_out, scale))
                worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel_err)
                largest = max(largest, scale)
                if t_nat is not None and s_nat is not None and scale > 0:
                    tn = run(t_nat, drawn[k], k, f"teacher in {low}")
                    sn = run(s_nat, drawn[k], k, f"student in {low}")
                    if len(sn) != len(t_out) or any(a.shape != b.shape for a, b in zip(t_out, sn)):
                        return failed(f"the student's outputs in {low} differ in structure")
                    nat_t = max(nat_t, max(_max_abs(a, b) for a, b in zip(t_out, tn)) / scale)
                    nat_s = max(nat_s, max(_max_abs(a, b) for a, b in zip(t_out, sn)) / scale)
            if measure and worst_rel > rtol:  # a deep 16-bit student: measure what its roundings can add up to
                rounding = _rounding_error(s_model, batches, plan_outs, torch.finfo(native).eps / 4, seed,
                                           lambda model, batch, k: run(model, batch, k, "student"))
                rtol = rounding_rtol(rtol, rounding)
        except _StudentFailed as exc:
            return failed(str(exc))
    low_name = str(low).replace("torch.", "") if low else ""
    tol = native_rtol(low, nat_t) if low else 0.0
    native_ok = low is None or nat_s <= tol
    if largest == 0.0:  # e.g. a zero-initialised classifier head: equality would prove nothing
        return Report(False, worst_abs, worst_rel, rtol, len(batches), mode, per,
                      "the teacher's outputs are all zero on every input, so the comparison proves nothing "
                      "(re-initialise a zero head, or compare an earlier output)", name, low_name, False, nat_s,
                      nat_t, tol, rounding)
    return Report(worst_rel <= rtol and native_ok, worst_abs, worst_rel, rtol, len(batches), mode, per,
                  "" if native_ok else f"in {low_name} the student's error exceeds {NATIVE_C:g}x the teacher's own",
                  name, low_name, native_ok, nat_s, nat_t, tol, rounding)


def _rounding_error(twin: torch.nn.Module, batches: list, outs: list, rel: float, seed: int, run: Any) -> float:
    """The plan error one rounding of every weight makes: the student's float64 twin (a private
    copy: its dtype differs from the 16-bit student's) with each parameter perturbed (`perturbed`)
    against its own outputs. Its parameters stay perturbed: the twin is not used again."""
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if p.is_floating_point():
                p.copy_(perturbed(p, rel, name, seed))
        worst = 0.0
        for k, (batch, (ref, scale)) in enumerate(zip(batches, outs)):
            out = run(twin, batch, k)
            if scale > 0:
                worst = max(worst, max((_max_abs(a, b) for a, b in zip(ref, out) if a.numel()), default=0.0) / scale)
    return worst


class _StudentFailed(Exception):
    """The student raised while running: reported, not propagated."""

"""Grow a teacher into a target architecture: the target's widths, its extra blocks, its class.

`grow(teacher, target, example_inputs)` reads every space's new width from the target's parameter
shapes (one linear equation per bound parameter axis), widens the teacher with one plan, starts
each block the target has in addition as the identity (a copy of a teacher block whose residual
branch ends in zeros), and loads the result into a copy of `target` (typically built on the meta
device), verified against the teacher.

Blocks are the children of a stack: a ModuleList / Sequential whose children are named by
consecutive integers (`layers.0`, `encoder_layer_0`, ...). A target stack longer than the
teacher's gets new blocks placed by `layer_map`: "interleave" (default: spread between the
teacher's), "append" (after them), or {stack path: [teacher index or None per target block]}.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from . import spaces as S
from .errors import FrozenSpaceError, HookError, N2NError, NotPreservedError, TraceFailure
from .frontend import as_inputs, own_tensors, trace
from .inference import Analysis, HeadGrowth, infer
from .planning import Plan
from .spaces import Seg
from .spec import RuleTable, bind, load_table
from .tied import untie_parameters
from .verification import Report, _float_dtype, plan_rtol, verify
from .wider import Net2WiderNet

LAYER_POLICIES = ("interleave", "append")
_INDEXED = re.compile(r"^(.*?)(\d+)$")
# kinds whose parameters, set to zero, make the op's output zero: a residual branch ending in one
# is switched off (dense/conv: weight and bias; BatchNorm/LayerNorm affine: gain and shift)
ZEROING_KINDS = ("dense", "conv", "matmul", "channelwise", "normalize")


class GrowError(N2NError):
    """The target cannot be reached from the teacher: a shape no plan gives, a parameter with no
    counterpart, a block that cannot start as the identity."""

    code = "grow"


@dataclass
class Stack:
    """A sequence of blocks the target lengthens: target block j starts from teacher block
    `sources[j]`, or, when that is None, as the identity copy of teacher block `copies[j]`."""

    path: str
    teacher: list[str]
    target: list[str]
    sources: list[int | None]
    copies: list[int]

    def block(self, names: list[str], i: int) -> str:
        return f"{self.path}.{names[i]}" if self.path else names[i]


# ---------------------------------------------------------------- stacks and the name map
def _indexed_children(module: torch.nn.Module) -> list[str] | None:
    """Child names of a stack (`0, 1, ...` or `block0, block1, ...`), in index order, else None."""
    names = list(module._modules)
    if not names or not isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)):
        return None
    parsed = [_INDEXED.match(n) for n in names]
    if any(m is None for m in parsed) or len({m.group(1) for m in parsed}) != 1:
        return None
    if [int(m.group(2)) for m in parsed] != list(range(len(names))):
        return None
    return names


def _inner_growth(teacher_block: torch.nn.Module, target_block: torch.nn.Module) -> tuple[str, int, int] | None:
    """A stack inside a block that the target lengthens too: (its path in the block, old, new)."""
    inner = dict(teacher_block.named_modules())
    for path, mod in target_block.named_modules():
        names, tmod = _indexed_children(mod), inner.get(path)
        tnames = _indexed_children(tmod) if tmod is not None else None
        if path and names is not None and tnames is not None and len(names) != len(tnames):
            return path, len(tnames), len(names)
    return None


def _relative_state(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}


def _placement(n: int, m: int, policy: str | Sequence[int | None], path: str) -> list[int | None]:
    if isinstance(policy, str):
        if policy == "append":
            return [*range(n), *[None] * (m - n)]
        slots = [math.floor(i * m / n) for i in range(n)]  # interleave: teacher i at slot floor(i m / n)
        out: list[int | None] = [None] * m
        for i, j in enumerate(slots):
            out[j] = i
        return out
    out = list(policy)
    kept = [i for i in out if i is not None]
    if len(out) != m or kept != list(range(n)):
        raise GrowError(f"layer_map for {path!r} must list {m} entries: the teacher's blocks 0..{n - 1} in order, "
                        f"once each, and None where a new block goes; got {out}", node=path, op="layer_map",
                        fix=f"e.g. {[*range(n), *[None] * (m - n)]} (append)")
    return out


def find_stacks(teacher: torch.nn.Module, target: torch.nn.Module,
                layer_map: str | dict[str, Sequence[int | None]]) -> list[Stack]:
    """The stacks the target lengthens, with where each teacher block goes and what each new
    block is copied from (the nearest teacher block before it of the same structure, else after)."""
    if isinstance(layer_map, str) and layer_map not in LAYER_POLICIES:
        raise GrowError(f"layer_map must be one of {LAYER_POLICIES} or a dict, got {layer_map!r}", op="layer_map",
                        fix="use layer_map='interleave' (new blocks spread between the teacher's) or 'append'")
    stacks = []
    teacher_mods = dict(teacher.named_modules())
    for path, mod in target.named_modules():
        names = _indexed_children(mod)
        tmod = teacher_mods.get(path)
        if names is None or tmod is None or any(path.startswith(f"{s.path}.") for s in stacks):
            continue
        tnames = _indexed_children(tmod)
        if tnames is None or len(tnames) == len(names):
            continue
        if len(tnames) > len(names):
            raise GrowError(f"the target's {path!r} has {len(names)} blocks, the teacher's {len(tnames)}: growing "
                            f"never removes blocks", node=path, op="layer_map",
                            fix="build the target with at least as many blocks as the teacher")
        policy = layer_map.get(path, "interleave") if isinstance(layer_map, dict) else layer_map
        sources = _placement(len(tnames), len(names), policy, path)
        nested = [(j, n) for j, i in enumerate(sources) if i is not None
                  and (n := _inner_growth(tmod._modules[tnames[i]], mod._modules[names[j]]))]
        if nested:
            j, (inner, old, new) = nested[0]
            where = f"{path}.{names[j]}.{inner}"
            raise GrowError(f"stacks nested in {path!r} grow too ({where}: {old} -> {new} blocks): grow changes "
                            f"the block count of one level at a time", node=where, op="layer_map",
                            fix=f"grow in two calls: first into a target with the inner depth and the teacher's "
                                f"{len(tnames)} blocks of {path!r}, then into the full target")
        shapes = [_relative_state(tmod._modules[n]) for n in tnames]
        copies = []
        for j, src in enumerate(sources):
            if src is not None:
                copies.append(src)
                continue
            want = set(_relative_state(mod._modules[names[j]]))
            before = [sources[k] for k in range(j - 1, -1, -1) if sources[k] is not None]
            after = [sources[k] for k in range(j + 1, len(sources)) if sources[k] is not None]
            fit = [i for i in before + after if set(shapes[i]) == want]
            if not fit:
                raise GrowError(f"new block {path}.{names[j]} has parameters no teacher block of {path!r} has "
                                f"(a different structure, e.g. a downsampling block)", node=f"{path}.{names[j]}",
                                op="layer_map", fix="place new blocks next to blocks of their own structure "
                                "with an explicit layer_map")
            copies.append(fit[0])
        stacks.append(Stack(path, tnames, names, sources, copies))
    if isinstance(layer_map, dict):
        missing = set(layer_map) - {s.path for s in stacks}
        if missing:
            raise GrowError(f"layer_map names {sorted(missing)}, which the target does not lengthen",
                            node=sorted(missing)[0], op="layer_map",
                            fix=f"name stacks the target lengthens: {[s.path for s in stacks] or 'none'}")
    return stacks


def target_name(name: str, stacks: list[Stack]) -> str:
    """A teacher parameter's name in the target (blocks move when new ones go between them)."""
    for st in stacks:
        for i in range(len(st.teacher)):
            prefix = st.block(st.teacher, i) + "."
            if name.startswith(prefix):
                return st.block(st.target, st.sources.index(i)) + "." + name[len(prefix):]
    return name


def source_name(name: str, stacks: list[Stack]) -> str:
    """The teacher name a target name starts from: a moved block's own, a new block's copy source's."""
    for st in stacks:
        for j in range(len(st.target)):
            prefix = st.block(st.target, j)
            if name == prefix or name.startswith(prefix + "."):
                src = st.sources[j] if st.sources[j] is not None else st.copies[j]
                return st.block(st.teacher, src) + name[len(prefix):]
    return name


# ---------------------------------------------------------------- widths from the target's shapes
def _axis_terms(an: Analysis, layout: Any) -> tuple[dict[str, int], int]:
    """new size = sum(coef[space] * width[space]) + fixed, for one bound axis."""
    coef: dict[str, int] = {}
    fixed = 0
    for s in S.normalize(layout):
        if isinstance(s, Seg):
            sp = an.space_of(s.atom)
            if sp is not None:
                coef[sp.name] = coef.get(sp.name, 0) + s.inner
            else:
                fixed += S.find(s.atom).width * s.inner
        else:
            fixed += s.size
    return coef, fixed


def target_widths(an: Analysis, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Every space's width as the target's shapes state it (`shapes`: teacher parameter name ->
    the target's shape of it). Raises GrowError where two axes ask one space for two widths."""
    eqs = []
    for (param, axis), layout in an.param_layouts.items():
        shape = shapes.get(param)
        if shape is None or axis >= len(shape):
            continue
        coef, fixed = _axis_terms(an, layout)
        eqs.append((f"{param} axis {axis}", coef, fixed, shape[axis]))
    by_name = {sp.name: sp for sp in an.spaces}
    known: dict[str, tuple[int, str]] = {}
    progress = True
    while progress:
        progress = False
        for where, coef, fixed, size in eqs:
            rest = size - fixed - sum(c * known[n][0] for n, c in coef.items() if n in known)
            free = [n for n in coef if n not in known]
            if len(free) != 1:
                continue
            (name,) = free
            sp = by_name[name]
            if sp.frozen and rest != coef[name] * sp.width:
                r = sp.reasons[0]
                raise FrozenSpaceError(f"the target's size {size} of {where} widens space {name!r}, which cannot be "
                                       f"widened: {r}", node=r.node, op=r.op,
                                       fix=f"build the target with {where} of size {fixed + coef[name] * sp.width}")
            if rest % coef[name] or rest <= 0:
                raise GrowError(f"the target's size {size} of {where} is not a whole number of units of space "
                                f"{name!r} ({coef[name]} positions per unit)", node=name, op="grow",
                                fix="build the target with sizes the teacher's structure can reach")
            known[name] = (rest // coef[name], where)
            progress = True
    for where, coef, fixed, size in eqs:
        got = fixed + sum(c * (known[n][0] if n in known else by_name[n].width) for n, c in coef.items())
        if got != size:
            named = [f"{n} = {known[n][0]} (from {known[n][1]})" for n in coef if n in known]
            raise GrowError(f"the target's size {size} of {where} disagrees with the widths its other parameters "
                            f"ask for ({'; '.join(named) or 'unchanged'}): one space, two widths", node=where,
                            op="grow", fix="build the target with one width per coupled set of axes")
    return {name: w for name, (w, _) in known.items()}


def plan_target(an: Analysis, shapes: dict[str, tuple[int, ...]], *, seed: int = 0, symmetry: str = "none",
                qk_scales: dict[str, float | None] | None = None) -> Plan:
    """The plan that gives every space the width the target's shapes state (see target_widths);
    qk_scales: the target's attention scales (target_qk_scales) where heads grow wider."""
    current = {sp.name: sp.width for sp in an.spaces}
    asked = {n: w for n, w in target_widths(an, shapes).items() if w != current[n]}
    return Plan(an, widths=asked, seed=seed, symmetry=symmetry, qk_scales=qk_scales)


@dataclass(frozen=True)
class NewBlock:
    """A block the target has in addition: a copy of teacher block `source` with `zeros` zeroed."""

    path: str
    source: str
    zeros: tuple[str, ...]
    feeds: str | None = None  # no zeros of its own: its output only reaches this new block, which is zeroed


def new_blocks(gm: torch.fx.GraphModule, stacks: list[Stack], params: set[str]) -> list[NewBlock]:
    """Every new block of the stacks with the teacher parameters whose zeros make it the identity;
    GrowError for one whose source has no residual branch a zero switches off, unless its output
    only feeds a zeroed new block at the same place of a parallel stack (norms[i] -> layers[i])."""
    table = load_table()
    out: list[NewBlock] = []
    pending: list[tuple[NewBlock, Stack, int]] = []
    for st in stacks:
        for j, src in enumerate(st.sources):
            if src is None:
                source = st.block(st.teacher, st.copies[j])
                block = NewBlock(st.block(st.target, j), source, tuple(residual_zeros(gm, source, params, table)))
                if block.zeros:
                    out.append(block)
                else:
                    pending.append((block, st, j))
    for block, st, j in pending:
        peers = {b.source: b.path for other in stacks if other is not st and other.sources == st.sources
                 for b in out if b.path == other.block(other.target, j)}
        fed = _fed_block(gm, block.source, set(peers), table)
        if fed is None:
            raise GrowError(f"new block {block.path} copies {block.source}, which has no residual branch ending in "
                            f"a linear, conv or norm: it cannot start as the identity", node=block.source, op="grow",
                            fix="grow without new blocks in this stack, or insert identity layers with n2n_fx.deepen")
        out.append(NewBlock(block.path, block.source, (), feeds=peers[fed]))
    return out


def _fed_block(gm: torch.fx.GraphModule, prefix: str, candidates: set[str], table: RuleTable) -> str | None:
    """The one block of `candidates` that every use of block `prefix`'s outputs reaches (through ops
    that pass values on and activations: whatever reaches a zeroed block is multiplied by zero), or
    None when a use reaches anything else."""
    own = [n for n in gm.graph.nodes if _reads(n, gm, prefix + ".")]
    reached: set[str] = set()
    seen: set[torch.fx.Node] = set(own)
    todo = [u for n in own for u in n.users if u not in own]
    while todo:
        node = todo.pop()
        if node in seen:  # a value reached along two paths is walked once
            continue
        seen.add(node)
        hit = [c for c in candidates if _reads(node, gm, c + ".")]
        if hit:
            reached.update(hit)
            continue
        spec = table.lookup(node, gm) if node.op in ("call_module", "call_function", "call_method") else None
        if spec is None or not (spec.options.get("tie_head") == "pass" or spec.kind == "getitem" or spec.activation):
            return None
        todo += list(node.users)
    return reached.pop() if len(reached) == 1 else None


# ---------------------------------------------------------------- identity blocks
def _reads(node: torch.fx.Node, gm: torch.nn.Module, prefix: str) -> list[str]:
    """The parameters under `prefix` that a call reads (a module call: the module's own)."""
    if node.op == "call_module":
        if not f"{node.target}.".startswith(prefix):  # the block itself (a leaf module) or one inside it
            return []
        return [f"{node.target}.{n}" for n, _ in gm.get_submodule(node.target).named_parameters()]
    return [str(a.target) for a in node.all_input_nodes if a.op == "get_attr" and str(a.target).startswith(prefix)]


def residual_zeros(gm: torch.fx.GraphModule, prefix: str, params: set[str], table: RuleTable) -> list[str]:
    """Parameters of the block at `prefix` whose zeros make it the identity: for every residual
    add x + f(x) in the block, those of the last op of f, found walking back from the add through
    ops that map zeros to zeros (the table's tie_head 'pass': dropout, views, casts, ...)."""
    prefix = prefix + "."
    zeros: list[str] = []
    for node in gm.graph.nodes:
        spec = table.lookup(node, gm) if node.op in ("call_function", "call_method") else None
        if spec is None or spec.name != "add" or len(node.all_input_nodes) != 2:
            continue  # a residual sum adds two tensors (y + 1.0 is part of a branch)
        operands = node.all_input_nodes[:2]
        ends = [_branch_end(a, gm, prefix, params, table) for a in operands]
        found = [e for e in ends if e]
        if len(found) != 1:
            continue  # both operands computed in the block (a downsampling shortcut) or neither
        if _reads_any(operands[ends.index([])], gm, prefix, set(found[0])):
            continue  # the other operand is computed from the branch (h + f(h), h = norm(x)): no residual
        norms = [(user, u) for user in node.users
                 if (u := table.lookup(user, gm) if user.op != "output" else None) is not None
                 and u.kind == "normalize" and _reads(user, gm, prefix)]
        if norms and len(norms) == len(node.users):  # pre-norm sums also feed the next sum directly
            user, u = norms[0]
            raise GrowError(f"block {prefix[:-1]} is post-norm: its residual sum {node.name} feeds only {user.name} "
                            f"({u.name}), so a zero branch gives norm(x), not x", node=node.name, op=u.name,
                            fix="grow without new blocks here, or insert gated blocks with "
                                "n2n_fx.deepen(block='gated')")
        zeros += [p for p in found[0] if p not in zeros]
    return zeros


def _reads_any(node: torch.fx.Node, gm: torch.nn.Module, prefix: str, wanted: set[str]) -> bool:
    """Whether `node` is computed (at any depth) from one of the parameters `wanted`."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if wanted.intersection(_reads(n, gm, prefix)):
            return True
        todo += n.all_input_nodes
    return False


def _branch_end(node: torch.fx.Node, gm: torch.nn.Module, prefix: str, params: set[str],
                table: RuleTable) -> list[str]:
    """The parameters to zero at the end of the branch that computes `node`, or [] when `node` is
    not computed by a zeroable op of the block (the residual operand)."""
    while True:
        spec = table.lookup(node, gm) if node.op in ("call_module", "call_function", "call_method") else None
        if spec is None:
            return []
        read = [p for p in _reads(node, gm, prefix) if p in params]
        if spec.kind == "attention" and node.op == "call_module":  # nn.MultiheadAttention: its out_proj
            return [p for p in read if ".out_proj." in p]
        if read and (spec.kind in ZEROING_KINDS or spec.options.get("tie_head") == "gain"):
            if spec.kind == "channelwise" or spec.kind == "normalize":
                read = [p for p in read if p.rsplit(".", 1)[-1] in ("weight", "bias")]
            return read
        if spec.options.get("tie_head") == "gain":  # y * c with no parameter of the block: 0 * c = 0
            return next((end for a in node.all_input_nodes if (end := _branch_end(a, gm, prefix, params, table))), [])
        if spec.options.get("tie_head") == "pass" or (spec.kind == "getitem" and node.op == "call_function"):
            ins = node.all_input_nodes
            if not ins:
                return []
            node = ins[0]
            continue
        return []


# ---------------------------------------------------------------- grow
def _meta(module: torch.nn.Module) -> bool:
    return any(t.is_meta for t in module.state_dict(keep_vars=True).values())


def _device(model: torch.nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def grow(teacher: torch.nn.Module, target: torch.nn.Module, example_inputs: Any, *,
         layer_map: str | dict[str, Sequence[int | None]] = "interleave", seed: int = 0, symmetry: str = "none",
         frontend: str = "auto", mode: str = "eval", leaf_modules: Sequence[type] = (), rtol: float | None = None,
         check: bool = True, dynamic_shapes: Any = None) -> torch.nn.Module:
    """The teacher grown into `target`'s sizes and class: an instance of type(target), holding the
    teacher's function (verified on example_inputs unless check=False).

    `target` is a bigger model of the teacher's family (build it on the meta device: nothing of it
    is read but its structure and shapes); it is not modified. Its parameter names must be the
    teacher's, plus blocks its stacks have in addition (see the module docstring for layer_map).
    Every space's width is read from the target's shapes; the plan is Net2WiderNet's with `seed`
    and `symmetry` (wider heads, heads='dim', where the target's head_dim differs and its heads do
    not: q and k rows rescaled for the scale the target's own code computes with). New blocks copy a teacher block and zero the last op of each residual branch.
    Raises GrowError (a shape no plan reaches, a parameter without a counterpart, a post-norm new
    block), FrozenSpaceError / ConstraintError / WidthError from the plan (a frozen space the
    target grows, with its reason; a shrink), NotPreservedError when the check fails.
    """
    _check_arguments(teacher, target, layer_map, seed, symmetry, rtol)
    inputs = as_inputs(example_inputs)
    stacks = find_stacks(teacher, target, layer_map)
    t_state = teacher.state_dict(keep_vars=True)
    g_state = target.state_dict(keep_vars=True)
    name_of = {n: target_name(n, stacks) for n in t_state}
    missing = [n for n, tn in name_of.items() if tn not in g_state]
    if missing:
        raise GrowError(f"the target has no counterpart of the teacher's {missing[:4]}"
                        + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else ""), node=missing[0], op="grow",
                        fix="the target must be the teacher's family: the same parameter names, bigger sizes")
    heads = head_growth(teacher, target, stacks)
    _check_hooks(teacher, target, stacks)
    untie = any(len({_sid(g_state[name_of[n]]) for n in group}) > 1 for group in _tied_groups(teacher))
    by_target = {tn: n for n, tn in name_of.items()}
    for group in _tied_groups(target):
        if len({_sid(t_state[by_target[k]]) for k in group if k in by_target}) > 1:
            raise GrowError(f"the target ties {group}, which the teacher holds as separate tensors", node=group[0],
                            op="grow", fix="build the target untied (tie_word_embeddings=False): two trained "
                            "matrices cannot become one")
    gm = trace(teacher, inputs, leaf_modules=leaf_modules, share_tensors=True, frontend=frontend, mode=mode,
               dynamic_shapes=dynamic_shapes)
    if untie:
        untie_parameters(gm)
    an = infer(gm, heads=heads)
    target_gm = trace_target(target, inputs, leaf_modules=leaf_modules, frontend=frontend,
                             mode=mode) if sdpa_scales(an.gm) else None
    qk = target_qk_scales(an, target, inputs, kept=True, target_gm=target_gm)
    plan = plan_target(an, {n: tuple(g_state[tn].shape) for n, tn in name_of.items()}, seed=seed, symmetry=symmetry,
                       qk_scales=qk)
    if target_gm is not None:
        _check_attention_shapes(plan, target_gm)
    widened = any(p.new_width != p.width for p in plan.spaces)
    student = Net2WiderNet(plan)(an.gm).graph_module if widened else an.gm
    own_tensors(student, teacher)
    s_state = student.state_dict(keep_vars=True)
    for n, t in t_state.items():  # unused by the traced forward (an aux head in eval): no plan covers it
        if n not in s_state:
            if tuple(t.shape) != tuple(g_state[name_of[n]].shape):
                raise GrowError(f"{n} is not used by the traced forward, so no plan sizes it, but the target "
                                f"wants {tuple(g_state[name_of[n]].shape)} for it (the teacher's is {tuple(t.shape)})",
                                node=n, op="grow", fix="trace in the mode that uses it (mode='train'), or keep its "
                                "size in the target")
            s_state[n] = t.detach().clone()
    wrong = [f"{tn}: grown {tuple(s_state[n].shape)}, target {tuple(g_state[tn].shape)}"
             for n, tn in name_of.items() if tuple(s_state[n].shape) != tuple(g_state[tn].shape)]
    if wrong:
        raise GrowError(f"{len(wrong)} parameters do not reach the target's shape: {'; '.join(wrong[:4])}",
                        node=wrong[0].split(":")[0], op="grow",
                        fix="`n2n-fx explain` shows which spaces are frozen and why; build the target with those "
                            "sizes unchanged")

    state: dict[str, torch.Tensor] = {tn: s_state[n].detach() for n, tn in name_of.items()}
    params = {n for n, _ in teacher.named_parameters(remove_duplicate=False)}
    blocks = new_blocks(an.gm, stacks, params)
    for block in blocks:
        src_prefix, dst_prefix = block.source + ".", block.path + "."
        for n, tensor in s_state.items():
            if n.startswith(src_prefix):
                new = tensor.detach().clone()
                if n in block.zeros:
                    new.zero_()
                state[dst_prefix + n[len(src_prefix):]] = new
    extra = [k for k in g_state if k not in state]
    if extra:
        raise GrowError(f"the target's {extra[:4]} have no counterpart in the teacher and no rule initialises them",
                        node=extra[0], op="grow", fix="build the target from the teacher's family with only sizes "
                        "and block counts changed")
    model = _materialise(target, teacher, state, stacks)
    if rtol is None and plan.fills:  # the target's class carries no graph meta for verify to read
        rtol = plan_rtol(_float_dtype(model), filled=True)
    if check:
        _check_identity_blocks(model, [b.path for b in blocks if b.feeds is None], inputs)
        report = verify(teacher, model, inputs, rtol=rtol, mode=mode)
        if not report.ok:
            low_precision_inside = report.rtol < 1e-9 and report.max_rel_err < 1e-5
            raise NotPreservedError(f"the grown {type(model).__name__} does not compute the teacher's function: "
                                    f"{report}", op="grow",
                                    fix="the error is at float32 rounding: a family that computes parts in float32 "
                                        "inside a float64 model (Hugging Face RMSNorm upcasts) needs rtol=1e-6"
                                    if low_precision_inside else "the report says why; a target whose settings (not "
                                    "sizes) differ from the teacher's computes another function")
        model.n2n_report = report  # type: ignore[attr-defined]
    return model


def _check_arguments(teacher: Any, target: Any, layer_map: Any, seed: Any, symmetry: Any, rtol: Any) -> None:
    for role, m in (("teacher", teacher), ("target", target)):
        if not isinstance(m, torch.nn.Module):
            raise GrowError(f"the {role} must be an nn.Module, got {type(m).__name__}", op="grow",
                            fix="pass the model objects themselves")
    if _meta(teacher):
        raise GrowError("the teacher is on the meta device: it holds no weights to grow", op="grow",
                        fix="load the teacher's weights; for checkpoints bigger than memory use grow_checkpoint")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise GrowError(f"seed must be an int, got {seed!r}", op="grow", fix="pass seed=0 (or any int)")
    if symmetry == "noise":
        raise GrowError("symmetry='noise' does not preserve the function, and grow promises that it does", op="grow",
                        fix="use symmetry='none' or 'split' (exact), or widen(symmetry='noise') and check nothing")
    if rtol is not None and (isinstance(rtol, bool) or not isinstance(rtol, (int, float))
                             or not math.isfinite(rtol) or rtol <= 0):
        raise GrowError(f"rtol must be a positive number, got {rtol!r}", op="grow", fix="pass rtol=1e-6 or leave it out")
    if isinstance(layer_map, dict):
        for path, entries in layer_map.items():
            if not isinstance(entries, (list, tuple)) or any(
                    e is not None and (isinstance(e, bool) or not isinstance(e, int)) for e in entries):
                raise GrowError(f"layer_map[{path!r}] must be a list of teacher block indices and None, got "
                                f"{entries!r}", node=str(path), op="layer_map", fix="e.g. {'layers': [0, None, 1]}")
    elif not isinstance(layer_map, str):
        raise GrowError(f"layer_map must be a policy name or a dict of stack path -> list, got {layer_map!r}",
                        op="layer_map", fix="layer_map='interleave', 'append' or {'layers': [0, None, 1]}")


def _check_hooks(teacher: torch.nn.Module, target: torch.nn.Module, stacks: list[Stack]) -> None:
    """The result is the target's object: a hook the teacher has and the target lacks would stop
    running (a side effect lost silently, or an output changed)."""
    for name, mod, other in _module_pairs(teacher, target, stacks):
        hooks = len(mod._forward_hooks) + len(mod._forward_pre_hooks)
        if hooks and (other is None or len(other._forward_hooks) + len(other._forward_pre_hooks) != hooks):
            raise HookError(f"the teacher's module {name or '<root>'} has {hooks} forward hook(s) that the target's "
                            f"does not: the grown model is the target's object, where they would not run",
                            node=name or "<root>", op="hook",
                            fix="register the same hooks on the target before growing (or on the result after)")


def _first(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        return next((t for v in value if (t := _first(v)) is not None), None)
    if isinstance(value, dict):
        return next((t for v in value.values() if (t := _first(v)) is not None), None)
    return None


def _check_identity_blocks(model: torch.nn.Module, blocks: list[str], inputs: tuple) -> None:
    """Each new block must give back its input (or zeros, when it is the branch of a sum in its
    parent): run the grown model once and compare, so a misread residual (x + x + f(x)) is named
    here rather than reported as a wrong model."""
    if not blocks:
        return
    seen: dict[str, float] = {}
    handles = []
    for name in blocks:
        def hook(mod, args, kwargs, out, name=name):
            x, y = _first(args) if args else _first(kwargs), _first(out)
            if x is not None and y is not None and x.shape == y.shape:
                # a block holding its residual sum gives x back; a block that is the branch (the sum
                # is in its parent's forward) gives zeros
                scale = float(x.abs().max()) or 1.0
                seen[name] = min(float((y.double() - x.double()).abs().max()), float(y.abs().max())) / scale
        handles.append(model.get_submodule(name).register_forward_hook(hook, with_kwargs=True))
    flags = {n: m.training for n, m in model.named_modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs[:-1], **inputs[-1]) if inputs and isinstance(inputs[-1], dict) else model(*inputs)
    finally:
        for h in handles:
            h.remove()
        for n, m in model.named_modules():
            m.training = flags[n]
    for name, err in seen.items():
        if err > 1e-6:
            raise GrowError(f"new block {name} is not the identity (rel change {err:.2e}): its residual branches "
                            f"are not switched off by zeroing their last op", node=name, op="grow",
                            fix="grow without new blocks in this stack, or insert identity layers with n2n_fx.deepen")


def _module_pairs(teacher: torch.nn.Module, target: torch.nn.Module,
                  stacks: list[Stack]) -> list[tuple[str, torch.nn.Module, torch.nn.Module | None]]:
    """Each teacher module with its place in the target (None where the target has none)."""
    modules = dict(target.named_modules())
    return [(name, mod, modules.get(target_name(name + ".", stacks)[:-1] if name else ""))
            for name, mod in teacher.named_modules()]


_HEAD_COUNTS = ("num_heads", "n_head", "num_attention_heads", "n_heads")


def head_growth(teacher: torch.nn.Module, target: torch.nn.Module, stacks: list[Stack]) -> HeadGrowth:
    """Whole heads (COUNT) unless the target's heads are wider (a different `head_dim` attribute on
    a module, or in a Hugging Face config): then DIM, refused where one attention would grow both."""
    t_cfg, g_cfg = getattr(teacher, "config", None), getattr(target, "config", None)
    pairs = [("config", t_cfg, g_cfg)] if t_cfg is not None and g_cfg is not None else []
    pairs += [(name or "<root>", mod, other) for name, mod, other in _module_pairs(teacher, target, stacks)
              if other is not None]
    wider = None
    for name, a, b in pairs:
        ha, hb = getattr(a, "head_dim", None), getattr(b, "head_dim", None)
        if type(ha) is int and type(hb) is int and ha != hb:
            counts = [(getattr(a, k), getattr(b, k)) for k in _HEAD_COUNTS
                      if type(getattr(a, k, None)) is int and type(getattr(b, k, None)) is int]
            if any(x != y for x, y in counts):
                x, y = next((x, y) for x, y in counts if x != y)
                raise GrowError(f"{name} grows both its heads ({x} -> {y}) and head_dim ({ha} -> {hb}): one plan "
                                "grows either the heads or head_dim of an attention", node=name, op="attention",
                                fix=f"grow twice: first into a target with {y} heads of {ha}, then into this one")
            wider = wider or (name, ha, hb)
    rotary = t_cfg is not None and (getattr(t_cfg, "rope_theta", None) is not None or getattr(t_cfg, "rope_parameters", None)
                                    or getattr(t_cfg, "position_embedding_type", None) == "rotary")
    if wider and rotary:
        name, ha, hb = wider
        raise GrowError(f"{name}.head_dim is {ha} in the teacher and {hb} in the target, and the family uses rotary "
                        "position embeddings, whose frequencies depend on head_dim: no wider head computes the "
                        "teacher's scores", node=name, op="attention",
                        fix=f"keep head_dim = {ha} in the target and grow the number of heads instead")
    return HeadGrowth.DIM if wider else HeadGrowth.COUNT


def sdpa_scales(gm: torch.fx.GraphModule, table: RuleTable | None = None) -> list[tuple[str, Any]]:
    """(node, scale) of every F.scaled_dot_product_attention call in graph order: a literal, or
    None where the call derives 1/sqrt(head_dim) at run time (anything else: a computed scale)."""
    table = table or load_table()
    out = []
    for node in gm.graph.nodes:
        spec = table.lookup(node, gm) if node.op == "call_function" else None
        if spec is not None and spec.kind == "sdpa":
            out.append((node.name, bind(spec, node.args, node.kwargs).get("scale")))
    return out


def target_qk_scales(an: Analysis, target: torch.nn.Module, inputs: Any, *, kept: bool = False,
                     target_gm: torch.fx.GraphModule | None = None, **trace_kw: Any) -> dict[str, float | None]:
    """The scale each of the teacher's rescaled attentions computes with in the target's class (its
    code decides: HF's scaling = head_dim ** -0.5 is the target's own literal). One scale for all
    of the target's attentions (the usual case) applies to all; otherwise they pair in order.
    kept=True also refuses an attention whose head_dim is kept (whole heads, or frozen) and whose
    scale the target changes (a literal or a multiplier of its own): no factor is planned for it.
    target_gm: the target's trace, where the caller has one."""
    ours = sdpa_scales(an.gm)
    if not an.qk and not (kept and ours):
        return {}
    theirs = sdpa_scales(target_gm if target_gm is not None else trace_target(target, inputs, **trace_kw))
    if an.qk and any(not _literal_scale(v) for _, v in theirs):
        raise GrowError("the target computes an attention scale in its graph", node=theirs[0][0], op="sdpa",
                        fix="wider heads need the target's scale as a literal or sdpa's default")
    pairs = _pair_calls([n for n, _ in ours], [v for _, v in theirs])
    if pairs is None and an.qk:
        raise GrowError(f"the target's {len(theirs)} attentions use {len({v for _, v in theirs})} scales and the "
                        f"teacher has {len(ours)}: their pairing is unknown", node=an.qk[0].node, op="sdpa",
                        fix="grow head_dim and the number of layers in two steps")
    pairs = pairs or {}  # unknown pairing and no rescaled attention: the verification judges
    rescaled = {link.node for link in an.qk}
    if kept:
        for name, scale in ours:
            if name in rescaled or name not in pairs or not (_literal_scale(scale) and _literal_scale(pairs[name])):
                continue
            d = _qk_shape(an.gm, name)[-1]
            mine, their = (1 / math.sqrt(d) if v is None else float(v) for v in (scale, pairs[name]))
            if not math.isclose(mine, their, rel_tol=1e-12):
                raise GrowError(f"{name} scales its scores by {mine:.6g} in the teacher and by {their:.6g} in the "
                                "target, and its head_dim is kept: the target's scores would not be the teacher's",
                                node=name, op="sdpa", fix="give the target the teacher's attention scale "
                                "(its literal, multiplier or scale config field)")
    return {link.node: pairs[link.node] for link in an.qk}


def trace_target(target: torch.nn.Module, inputs: Any, **trace_kw: Any) -> torch.fx.GraphModule:
    """The target's graph with shapes (for its attention scales and query shapes). A target on the
    meta device that torch.export cannot run on the example's device is traced on meta inputs."""
    try:
        return trace(target, inputs, share_tensors=True, **trace_kw)
    except TraceFailure:
        if not any(t.is_meta for t in target.state_dict().values()):
            raise
        to_meta = lambda v: v.to("meta") if isinstance(v, torch.Tensor) else v  # noqa: E731
        return trace(target, torch.utils._pytree.tree_map(to_meta, as_inputs(inputs)), share_tensors=True, **trace_kw)


def _check_attention_shapes(plan: Plan, target_gm: torch.fx.GraphModule) -> None:
    """The query shape (heads, head_dim) each of the student's sdpa calls will see must be the target's: a
    target class that splits its projections otherwise (a head count attribute of a name
    head_growth does not read, no head_dim attribute at all) would read the grown rows as other
    heads. The calls pair as the scales do: one shape for all of the target's, or in order."""
    ours = [n for n, _ in sdpa_scales(plan.analysis.gm)]
    pairs = _pair_calls(ours, [_qk_shape(target_gm, n) for n, _ in sdpa_scales(target_gm)])
    if pairs is None:
        return  # the pairing is unknown: the verification judges
    for name in ours:
        q = plan.analysis.vals[_sdpa_query(plan.analysis.gm, name).name]
        mine = tuple(plan.new_width(layout) for layout in q.layouts)
        if mine != pairs[name]:
            raise GrowError(f"{name}: the grown query is {mine} (..., heads, positions, head_dim) and the target's "
                            f"class makes it {pairs[name]}: it would read the grown rows as other heads", node=name, op="sdpa",
                            fix="give the attention modules head_dim and num_heads attributes (so that grow sees "
                            "which one grows), and grow either the heads or head_dim")


def _pair_calls(ours: list[str], theirs: list[Any]) -> dict[str, Any] | None:
    """The teacher's sdpa calls paired with what the target's hold (scales, query shapes): one value
    for all of the target's (the usual case) applies to every call, else they pair in order; None
    where neither holds (extra layers with values of their own)."""
    if len(set(theirs)) == 1:
        return dict.fromkeys(ours, theirs[0])
    return dict(zip(ours, theirs)) if len(ours) == len(theirs) else None


def _qk_shape(gm: torch.fx.GraphModule, name: str) -> tuple[int, ...]:
    """The shape of an sdpa call's query (shape propagation's metadata)."""
    return tuple(int(d) for d in _sdpa_query(gm, name).meta["tensor_meta"].shape)


def _sdpa_query(gm: torch.fx.GraphModule, name: str) -> torch.fx.Node:
    """The query operand of an sdpa call, passed by position or by name."""
    node = next(n for n in gm.graph.nodes if n.name == name)
    return node.args[0] if node.args else node.kwargs["query"]


def _literal_scale(v: Any) -> bool:
    """sdpa's scale as a literal the graph holds, or None (1/sqrt(head_dim) at run time)."""
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _sid(t: torch.Tensor) -> int:
    return id(t) if t.is_meta else t.untyped_storage().data_ptr()


def _tied_groups(model: torch.nn.Module) -> list[list[str]]:
    by: dict[int, list[str]] = {}
    for n, p in model.state_dict(keep_vars=True).items():
        by.setdefault(_sid(p), []).append(n)
    return [g for g in by.values() if len(g) > 1]


def _materialise(target: torch.nn.Module, teacher: torch.nn.Module, state: dict[str, torch.Tensor],
                 stacks: list[Stack]) -> torch.nn.Module:
    """A copy of `target` holding `state` (each tensor keeps the grown dtype and device); tensors
    outside the state_dict are the target's own (rebuilt from the config for a meta target of a
    Hugging Face family, else the teacher's), training flags and requires_grad the teacher's."""
    device = _device(teacher)
    model = copy.deepcopy(target)
    ties = _tied_groups(model)
    was_meta = _meta(model)
    model = model.to_empty(device=device) if was_meta else model.to(device)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    bad = [f"{k}: {tuple(v.shape)} for {shapes[k]}" for k, v in state.items() if shapes.get(k) != tuple(v.shape)]
    if bad:
        raise GrowError(f"the target's blocks differ in shape from the ones they start from: {bad[:3]}",
                        node=bad[0].split(":")[0], op="grow", fix="give new blocks the sizes of the teacher block "
                        "they copy (grown), or place them with an explicit layer_map")
    model.load_state_dict(state, strict=True, assign=True)
    named = dict(model.named_parameters(remove_duplicate=False))
    for group in ties:  # one tensor under several names, as in the target
        first = named.get(group[0])
        for name in group[1:] if first is not None else ():
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, first)
    keys = set(state)
    t_modules = dict(teacher.named_modules())
    config = getattr(model, "config", None)
    for mod_name, mod in model.named_modules():
        # to_empty left a meta target's non-persistent buffers uninitialised memory
        metas = [b for b, v in mod._buffers.items() if v is not None and (was_meta or v.is_meta)
                 and f"{mod_name}.{b}".lstrip(".") not in keys]
        metas += [a for a, v in vars(mod).items() if isinstance(v, torch.Tensor) and v.is_meta]
        if not metas:
            continue
        rebuilt = None
        if config is not None:  # a Hugging Face module computes them from the config (rotary frequencies)
            try:
                rebuilt = type(mod)(config).to(device)
            except Exception:
                rebuilt = None
        source = rebuilt if rebuilt is not None else t_modules.get(source_name(mod_name, stacks))
        for attr in metas:
            value = getattr(source, attr, None) if source is not None else None
            if not isinstance(value, torch.Tensor) or value.shape != getattr(mod, attr).shape:
                raise GrowError(f"the target's {mod_name}.{attr} is computed at construction and the meta device "
                                f"left it empty; no counterpart of its shape was found", node=f"{mod_name}.{attr}",
                                op="grow", fix="build the target on a real device (it then computes its own)")
            like = getattr(t_modules.get(source_name(mod_name, stacks)), attr, None)
            value = value.detach().clone().to(like.dtype if isinstance(like, torch.Tensor) else value.dtype)
            if attr in mod._buffers:
                mod._buffers[attr] = value
            else:
                setattr(mod, attr, value)
    for n, m in model.named_modules():
        src = t_modules.get(source_name(n, stacks))
        m.training = src.training if src is not None else teacher.training
    t_params = dict(teacher.named_parameters(remove_duplicate=False))
    for n, p in model.named_parameters(remove_duplicate=False):
        src = t_params.get(source_name(n, stacks))
        if src is not None:
            p.requires_grad_(src.requires_grad)
    return model


__all__ = ["GrowError", "LAYER_POLICIES", "NewBlock", "Report", "Stack", "find_stacks", "grow", "new_blocks",
           "plan_target", "residual_zeros", "source_name", "target_name", "target_widths"]

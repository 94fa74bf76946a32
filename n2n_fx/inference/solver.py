"""The post-pass solver: constraints that need the whole graph read (sizes, roles, ties,
uniform norms, attention links), then the spaces the user sees."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch.fx.passes.shape_prop import TensorMetadata

from .. import spaces as S
from ..spaces import Code, Reason, Seg
from ..spec import bind
from .context import Context
from .values import ParamAxis, Role, Space, TiedHead, Val, _get_attr, _walk


def check_sizes(ctx: Context) -> None:
    """A size read at run time may size a view's spaced axis only if it tracks that very space."""
    for lay, arg, why in ctx.sizes:
        need = {S.find(t) for t in S.atoms_of(lay)}
        have = {S.find(leaf) for t in arg.taint for leaf in S.leaves(t)}
        if not need <= have:  # the computed size follows other spaces: hold both
            ctx.freeze_all(Val((1,), (lay,)), why)
            ctx.freeze_all(arg, why)


def check_roles(ctx: Context) -> None:
    for key, roles in list(ctx.roles.items()):
        if roles == {Role.OUT, Role.CONTRACT} and divide_before_head(ctx, key):
            continue
        if Role.CONTRACT in roles and roles & {Role.OUT, Role.CARRY}:
            for atom in S.atoms_of(ctx.param_layouts[key]):
                S.freeze(atom, Reason(Code.PARAM_ROLE_CONFLICT, key[0], "parameter",
                                      f"axis {key[1]} is both copied and contracted (tied weights); " +
                                      ("untie=True widens it with separate copies" if ctx.aliases.get(key[0])
                                       else "no per-unit gain before the contraction takes the division, "
                                            "and the table has one name (untie=True copies tables reached "
                                            "under two names)")))
    for key, reader in ctx.reads.items():
        # a contracted axis holds divided (or split) columns on the student: any other read of
        # its values (a reduction, a norm, an indexing, a view) sees numbers the teacher never had
        if ctx.roles.get(key, set()) & {Role.CONTRACT, Role.GROUPED}:
            for atom in S.atoms_of(ctx.param_layouts[key]):
                S.freeze(atom, Reason(Code.PARAM_READ, reader, "parameter",
                                      f"{key[0]} axis {key[1]} is contracted and also read by {reader}"))


def divide_before_head(ctx: Context, key: ParamAxis) -> bool:
    """A tied embedding + head (one table, copied by the lookup and contracted by the head) stays
    one tensor when the head's division by replica counts moves onto the per-unit gain (and
    shift) that produced the head's input: the final norm's weight and bias. Holds when nothing
    else reads the values in between (proofs: the tied claims of `embedding`)."""
    gains: list[ParamAxis] = []
    for node in ctx.contractors.get(key, []):
        found = gain_before(ctx, node, key)
        if found is None:
            return False
        gains += found
    if not gains or any(ctx.roles.get(g, set()) - {Role.CARRY} for g in gains):
        return False
    ctx.roles[key] = {Role.OUT}
    for g in gains:
        ctx.roles.setdefault(g, set()).add(Role.DIVIDE)
    ctx.tied_heads.append(TiedHead(key, tuple(gains)))
    return True


def gain_before(ctx: Context, head: torch.fx.Node, key: ParamAxis) -> list[ParamAxis] | None:
    """The per-unit parameters whose division by replica counts divides the head's input,
    walking back through ops the table marks `tie_head`: pass (f(x / c) = f(x) / c), gain
    (x * w: divide w, stop), shift (x + b: divide b, go on); a normalize op with a weight is gain
    (and shift, with a bias). Each divided parameter must be read by that one call alone: any
    other use would see the divided values."""
    space = {S.find(a) for a in S.atoms_of(ctx.param_layouts[key])}

    def per_unit(v: Any) -> bool:  # a 1-D parameter laid out on the tied space
        return isinstance(v, Val) and v.param_axes is not None and v.ndim == 1 and v.param_axes[0] is not None \
            and {S.find(a) for a in S.atoms_of(v.layouts[0])} == space

    def sole(vals: list[Val], node: torch.fx.Node) -> list[ParamAxis] | None:
        keys = [v.param_axes[0] for v in vals]
        return keys if all(param_uses(ctx, k[0]) == [node] for k in keys) else None

    inputs = [a for a in head.all_input_nodes if not getattr(ctx.vals.get(a.name), "param_axes", None)]
    node, found = (inputs[0] if len(inputs) == 1 else None), []
    while node is not None and node.op.startswith("call") and len(node.users) == 1:
        spec = ctx.table.lookup(node, ctx.gm)
        if spec is None:
            return None
        args, kwargs = ctx.value(node.args), ctx.value(node.kwargs)
        operands = [v for v in _walk((args, kwargs)) if isinstance(v, Val)]
        params = [v for v in operands if per_unit(v)]
        tensors = [a for a in node.all_input_nodes if not getattr(ctx.vals.get(a.name), "param_axes", None)]
        how = "norm" if spec.kind == "normalize" else spec.options.get("tie_head")
        if how == "norm":
            bound = ctx.bind_module(node, spec, args, kwargs) if node.op == "call_module" else bind(spec, args, kwargs)
            weight, bias = bound.get("weight"), bound.get("bias")
            if not per_unit(weight) or not (bias is None or per_unit(bias)):
                return None  # no gain (a bias alone does not divide the output) or a computed one
            gains = sole([weight] + ([bias] if bias is not None else []), node)
            return None if gains is None else found + gains
        if how == "gain" and len(params) == 1 and len(tensors) == 1 and len(operands) == 2:
            gains = sole(params, node)
            return None if gains is None else found + gains
        if how == "gain" and len(tensors) == 1 and len(operands) == 1:
            how = "pass"  # x * a number (T5's d_model ** -0.5 before its tied head) commutes
        if how == "shift" and len(params) == 1 and len(tensors) == 1 and len(operands) == 2:
            shift = sole(params, node)
            if shift is None:
                return None
            found += shift
        elif how != "pass" or len(tensors) != 1:
            return None
        node = tensors[0]
    return None


def param_uses(ctx: Context, qualname: str) -> list[torch.fx.Node]:
    """Every call that reads this parameter (under any of its names, tied ones included)."""
    tensor = _get_attr(ctx.gm, qualname, None)
    uses: list[torch.fx.Node] = []
    for n in ctx.gm.graph.nodes:
        if n.op == "get_attr" and _get_attr(ctx.gm, n.target, None) is tensor:
            uses += list(n.users)
        elif n.op == "call_module":
            mod = ctx.gm.get_submodule(n.target)
            if any(t is tensor for t in (*mod.parameters(), *mod.buffers())):
                uses.append(n)
    return uses


# ops that move or copy each element as it is (x * f per unit commutes with them)
_MOVES = {"reshape", "permute", "expand", "split", "getitem"}
# ops linear in a parameter whose rows (OUT) or columns (CONTRACT) lie on the space
_LINEAR = {"dense", "matmul", "conv", "embedding"}


def check_qk(ctx: Context) -> None:
    """Wider heads rescale the q and k rows of a head_dim space (QKLink): exact only when every
    value on the space reaches the scores through ops that commute with a per-unit factor, from
    linear producers (their OUT rows and biases take the factor), and leaves them, when v shares
    the space, into linear consumers (their columns take 1/(c f)). Anything else (rotary
    embeddings, q/k norms, activations) freezes the space with the op that breaks it."""
    nodes = {n.name: n for n in ctx.gm.graph.nodes} if ctx.qk else {}
    for link in ctx.qk:
        space = {S.find(a) for a in S.atoms_of(link.layout)}
        frozen = [a for a in space if a.frozen]
        if frozen:  # a piece frozen (a reduce over half of head_dim, ...): its values meet the others'
            # in every score, so no piece may widen or take a factor the check has not cleared
            why = Reason(Code.CONSTRAINT, link.node, "sdpa", "wider heads rescale every q and k row of a head_dim, "
                         f"and part of this one is frozen ({frozen[0].frozen[0]})")
            for a in space - set(frozen):
                S.freeze(a, why)
            continue
        found = _qk_params(ctx, link, space, nodes)
        if not isinstance(found, Reason):
            link.params = found
            continue
        for a in space:
            S.freeze(a, found)


def _qk_params(ctx: Context, link: Any, space: set, nodes: dict[str, torch.fx.Node]) -> tuple[ParamAxis, ...] | Reason:
    """The parameter axes on the space (every call on it commutes with the factor), or why not."""
    def no(node: str, why: str) -> Reason:
        return Reason(Code.CONSTRAINT, node, ctx.ops.get(node, "?"), f"wider heads rescale the q and k rows of {link.node}: {why}")

    def on(v: Any) -> bool:
        return isinstance(v, Val) and any(S.find(a) in space for lay in v.layouts for a in S.atoms_of(lay))

    params: set[ParamAxis] = set()
    for name, ev in ctx.events.items():
        operands = [v for v in _walk(ev.bound) if isinstance(v, Val)]
        if not any(on(v) for v in operands + [v for v in _walk(ev.out) if isinstance(v, Val)]):
            continue
        mine = [v for v in operands if v.param_axes and on(v)]
        why = _not_float(nodes.get(name)) or _qk_breaks(ctx, name, ev, [v for v in operands if not v.param_axes], mine, on)
        if why is not None:
            return no(name, why)
        params |= {key for v in mine for key, lay in zip(v.param_axes, v.layouts)
                   if key is not None and any(S.find(a) in space for a in S.atoms_of(lay))}
    if any(ctx.roles.get(key, set()) - {Role.OUT, Role.CARRY, Role.CONTRACT} for key in params):
        return no(link.node, "a parameter on it is divided or grouped")
    return tuple(sorted(params))


def _not_float(node: torch.fx.Node | None) -> str | None:
    """A call whose result is not floating point (a cast to int or bool, a comparison) rounds or
    tests each element: it does not commute with a per-row factor."""
    metas = node.meta.get("tensor_meta") if node is not None else None
    for meta in [metas] if isinstance(metas, TensorMetadata) else metas if isinstance(metas, (list, tuple)) else []:
        dtype = getattr(meta, "dtype", None)
        if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
            return f"its result is {dtype}, not floating point (a cast does not commute with a per-row factor)"
    return None


def _qk_breaks(ctx: Context, name: str, ev: Any, acts: list[Val], mine: list[Val], on: Any) -> str | None:
    """Why one call on a rescaled head_dim space breaks the rescaling (None: it does not)."""
    kind, how = ev.spec.kind, ev.spec.options.get("tie_head")
    if kind == "sdpa":
        return None if any(q.node == name for q in ctx.qk) else "another attention reads it"
    if kind == "shape_query":  # x.shape, x.size(-1): sizes, not values (a size used as a factor breaks later)
        return None
    if kind in _MOVES or how == "pass":
        return None if not mine else "a parameter is moved as a value"
    if kind in _LINEAR:  # a producer (rows on the space) or a consumer (columns on it), not both
        if any(on(v) for v in acts) and any(on(v) for v in _walk(ev.out) if isinstance(v, Val)):
            return "it passes a linear op"
        return None
    if how == "gain" and len(acts) == 1 and not mine and len([v for v in _walk(ev.bound) if isinstance(v, Val)]) == 1:
        numbers = [v for v in _walk(ev.bound) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return None if numbers else "it is multiplied by a computed value"
    if how == "shift" and all(isinstance(ev.bound.get(n), Val) and on(ev.bound[n]) for n in ("input", "other")):
        return None  # x + b (+ alpha y) with both operands on the space: each is rescaled alike
    return "it does not commute with a per-row factor (rotary embeddings, q/k norms, products, activations do not)"


def check_ties(ctx: Context) -> None:
    for group in ctx.ties:
        atoms = [a for layout in group for a in S.atoms_of(layout)]
        frozen = [r for a in atoms for r in S.find(a).frozen]
        inners = {lay[0].inner if len(lay) == 1 and isinstance(lay[0], Seg) else None
                  for lay in (S.normalize(layout) for layout in group)}
        bad = frozen or None in inners or len(inners) > 1  # each piece must be one space, alike
        if bad and atoms:
            reason = frozen[0] if frozen else Reason(Code.CONSTRAINT, "-", "conv", "grouped conv piece is not one space")
            for a in atoms:
                S.freeze(a, reason)


def check_uniform(ctx: Context) -> bool:
    """All units under one norm replicate by one k: a frozen one (k = 1) fixes the others."""
    changed = False
    for node, layout in ctx.uniform:
        atoms = S.atoms_of(layout)
        frozen = [r for a in atoms for r in S.find(a).frozen]
        if frozen and any(not S.find(a).frozen for a in atoms):
            why = Reason(Code.CONSTRAINT, node, "normalize", f"normalised together with a frozen space ({frozen[0].code})")
            for a in atoms:
                S.freeze(a, why)
            changed = True
    return changed


def check_links(ctx: Context) -> bool:
    """embed width == heads x head_dim: frozen heads fix the embed width, a fixed embed the heads."""
    changed = False
    for link in ctx.links:
        heads = S.find(link.heads)
        embed = [S.find(a) for a in S.atoms_of(link.embed)]
        if heads.frozen and any(not a.frozen for a in embed):
            why = Reason(Code.CONSTRAINT, link.node, "attention", f"embed width is heads x head_dim and the heads are frozen ({heads.frozen[0].code}"
                         + (f": {heads.frozen[0].detail})" if heads.frozen[0].detail else ")"))
            for a in embed:
                S.freeze(a, why)
            changed = True
        elif not heads.frozen and all(a.frozen for a in embed):
            S.freeze(heads, Reason(Code.CONSTRAINT, link.node, "attention", "heads x head_dim must equal the embed width, which is frozen"))
            changed = True
    return changed


def find_spaces(ctx: Context) -> list[Space]:
    found: dict[int, Space] = {}
    order: list[int] = []
    for (param, axis), layout in ctx.param_layouts.items():
        roles = ctx.roles.get((param, axis), {Role.CARRY})
        offset, norm = 0, S.normalize(layout)
        for seg in norm:
            if isinstance(seg, Seg):
                root = S.find(seg.atom)
                if root.id not in found:
                    found[root.id] = Space("", root.width, root)
                    order.append(root.id)
                sp = found[root.id]
                owner = param.rsplit(".", 1)[0] if "." in param else param
                label = owner if len(norm) == 1 else f"{owner}[{offset}:{offset + seg.size}]"
                if Role.OUT in roles:
                    sp.producers.append(label)
                if Role.CONTRACT in roles:
                    sp.consumers.append(label)
                if Role.CARRY in roles or not roles & {Role.OUT, Role.CONTRACT}:
                    sp.carriers.append(label)
            offset += seg.size
    for gc in ctx.grouped:  # grouped conv columns: consumers of each input piece
        owner = gc.param.rsplit(".", 1)[0]
        for k, piece in enumerate(gc.in_pieces):
            for atom in S.atoms_of(piece):
                sp = found.get(S.find(atom).id)
                if sp is not None:
                    sp.consumers.append(f"{owner}[group {k}]")
    result, names = [], set()
    for rid in order:
        sp = found[rid]
        if not sp.producers and not (sp.carriers and sp.consumers):
            continue  # a parameter axis that meets no hidden unit (kernel taps, ...)
        base = S.find(sp.atom).label or (sp.producers or sp.carriers)[0]
        name, k = base, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.add(name)
        sp.name = name
        sp.reasons = tuple(S.find(sp.atom).frozen)
        result.append(sp)
    return result


def solve(ctx: Context) -> list[Space]:
    """The constraints in order (uniform norms and head links may freeze more: ties again until
    nothing changes), then the spaces, each told the norm or attention that constrains it."""
    check_sizes(ctx)
    check_roles(ctx)
    check_qk(ctx)
    check_ties(ctx)
    while check_uniform(ctx) | check_links(ctx):
        check_ties(ctx)
    spaces = find_spaces(ctx)
    by_root = {S.find(sp.atom).id: sp for sp in spaces}
    for node, layout in ctx.uniform:
        for atom in S.atoms_of(layout):
            sp = by_root.get(S.find(atom).id)
            if sp is not None and not sp.uniform:
                sp.uniform = node
    for link in ctx.links:
        for atom in (*S.atoms_of(link.embed), link.heads):
            sp = by_root.get(S.find(atom).id)
            if sp is not None and not sp.attention:
                sp.attention = link.node
    return spaces

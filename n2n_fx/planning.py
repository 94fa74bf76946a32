"""Plan: choose the new width of every space and draw its mapping g (seeded, deterministic)."""

from __future__ import annotations

import hashlib
import math
import zlib
from collections import Counter
from dataclasses import dataclass

import torch
import torch.fx

from . import fill as F
from . import indexmaps as im
from . import spaces as S
from .errors import ConstraintError, FrozenSpaceError, StalePlanError, UnknownSpaceError, WidthError
from .inference import Analysis, Space
from .spaces import Layout, Seg
from .texttable import format_table

SYMMETRY_MODES = ("none", "split", "noise")
REPLICATION_MODES = ("random", "uniform")


@dataclass
class SpacePlan:
    """One row of the plan: a space, its current and planned width, and why it is frozen if so."""

    space: Space
    new_width: int
    g: torch.Tensor

    @property
    def name(self) -> str:
        return self.space.name

    @property
    def width(self) -> int:
        return self.space.width

    @property
    def frozen(self) -> str | None:
        return self.space.frozen

    @property
    def reasons(self) -> tuple[S.Reason, ...]:
        return self.space.reasons


def seeded(seed: int, *keys: object) -> torch.Generator:
    """A generator that depends on the seed and a stable key (not on iteration order)."""
    gen = torch.Generator()
    gen.manual_seed((seed * 1_000_003 + zlib.crc32(repr(keys).encode())) % (2**63))
    return gen


def _target(target: object) -> str:
    if isinstance(target, str):
        return target
    try:
        return torch.fx.node._get_qualified_name(target)  # type: ignore[arg-type]
    except Exception:  # an object without a stable name (a functools.partial, an op overload packet)
        return repr(target)


def _arg(a: object) -> object:
    if isinstance(a, torch.fx.Node):
        return a.name
    return f"tensor{tuple(a.shape)}" if isinstance(a, torch.Tensor) else a


def fingerprint(gm: torch.nn.Module) -> tuple[str, ...]:
    """What a plan depends on in its graph: every node (name, op, target, arguments), every
    submodule's class, every parameter and other tensor (qualified name, shape, the name it is tied
    to). Plans name nodes and parameters and record their widths, so any difference here can make
    the plan's maps wrong."""
    out = []
    graph = getattr(gm, "graph", None)
    for n in graph.nodes if isinstance(graph, torch.fx.Graph) else ():
        args = torch.fx.node.map_aggregate((n.args, n.kwargs), _arg)
        out.append(f"node {n.name}: {n.op} {_target(n.target)} {args!r}")
    # a call_module node names its module, not what it computes: a module swapped for another class
    # with the same parameter shapes (a Linear whose forward reads its weight transposed) is another graph
    out += [f"module {name}: {type(m).__module__}.{type(m).__qualname__}"
            for name, m in gm.named_modules(remove_duplicate=False) if name]
    # buffers and plain tensor attributes alike, sorted: a graph module's copy registers the constants
    # its get_attr nodes read as buffers (ep.module() holds them as attributes)
    tensors = []
    for prefix, m in gm.named_modules(remove_duplicate=False):
        tensors += [(f"{prefix}.{k}".lstrip("."), v) for k, v in [*m._buffers.items(), *vars(m).items()]
                    if isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter)]
    first: dict[int, str] = {}  # a tied tensor's first name: a plan for tied weights is not one for untied
    for kind, named in (("parameter", list(gm.named_parameters(remove_duplicate=False))),
                        ("tensor", sorted(tensors, key=lambda e: e[0]))):
        for name, t in named:
            tie = f" = {first[id(t)]}" if id(t) in first else ""
            first.setdefault(id(t), name)
            out.append(f"{kind} {name}: {tuple(t.shape)}{tie}")
    return tuple(out)


def check_fingerprint(planned: tuple[str, ...], gm: torch.nn.Module, what: str) -> None:
    """StalePlanError naming the first entries that differ, unless `gm` is the planned graph."""
    got = fingerprint(gm)
    if got == planned:
        return
    have, want = set(got), set(planned)
    missing = [e for e in planned if e not in have]
    extra = [e for e in got if e not in want]
    first = (missing or extra or ["(the same entries in another order)"])[0]
    raise StalePlanError(
        f"{what} got a graph other than the one its plan was made for: "
        + (f"the plan's {missing[0]!r} is not in it" if missing else "")
        + ("; " if missing and extra else "") + (f"it has {extra[0]!r}" if extra else "")
        + f" ({len(missing)} planned entries missing, {len(extra)} new; a pass run twice, after another pass "
          f"that changed the graph, or on another model)", node=first.split(":")[0].split(" ")[-1], op=what,
        fix="re-plan on this graph: n2n_fx.plan(graph_module, example_inputs), or "
            "Net2WiderNet(factor=..., example_inputs=...) which plans from the graph it receives")


def scaled_width(n: int, factor: float) -> int:
    return max(n, math.floor(n * factor + 0.5))


class Plan:
    """The spaces of a model with their target widths and mappings."""

    def __init__(self, analysis: Analysis, *, factor: float | None = None,
                 widths: dict[str, int] | None = None, seed: int = 0, symmetry: str = "none",
                 noise_std: float = 0.01, replication: str = "random", norm_fill: bool = False,
                 qk_scales: dict[str, float | None] | None = None) -> None:
        if symmetry not in SYMMETRY_MODES:
            raise WidthError(f"symmetry must be one of {SYMMETRY_MODES}, got {symmetry!r}",
                             fix="use symmetry='none' (exact), 'split' (exact) or 'noise' (the paper's)")
        if replication not in REPLICATION_MODES:
            raise WidthError(f"replication must be one of {REPLICATION_MODES}, got {replication!r}",
                             fix="use replication='random' (the paper's g) or 'uniform' (every unit k times)")
        self.analysis, self.seed, self.symmetry, self.noise_std = analysis, seed, symmetry, noise_std
        self.replication, self.norm_fill = replication, norm_fill
        self.fingerprint = fingerprint(analysis.gm)  # the pass checks it gets this very graph
        self.fills: dict[str, F.SpaceFill] = {}  # normalised spaces grown to a non-multiple (fill.py)
        self._fill_wanted: dict[str, int] = {}
        targets = self._targets(factor, widths or {})
        if replication == "uniform":
            for sp in analysis.spaces:
                if targets[sp.name] % sp.width:
                    raise WidthError(f"replication='uniform' copies every unit k times, so space {sp.name!r} "
                                     f"needs a multiple of {sp.width}; got {targets[sp.name]}", node=sp.name,
                                     op="replication", fix="use an integer factor (2.0, 3.0) or widths that are multiples")
        self.spaces = [SpacePlan(sp, targets[sp.name],
                                 im.uniform_map(sp.width, targets[sp.name])
                                 if (sp.uniform or replication == "uniform") and sp.name not in self.fills
                                 else im.random_map(sp.width, targets[sp.name], seeded(seed, "g", sp.name)))
                       for sp in analysis.spaces]
        self._by_root = {S.find(p.space.atom).id: p for p in self.spaces}
        self._fill_roots = {S.find(p.space.atom).id: self.fills[p.name] for p in self.spaces if p.name in self.fills}
        self._cache: dict[tuple, torch.Tensor] = {}  # many tensors share one layout (conv + its BN)
        # wider heads: the scale each sdpa computes with on the student (default: as the graph does, a
        # literal kept, None derived from the new head_dim); grow passes the target class's
        self.qk_scales = {link.node: link.scale for link in analysis.qk} | dict(qk_scales or {})
        self._qk_ratio = self._qk_ratios()
        # what the maps depend on: the pass stamps its student with it, widen_optimizer checks the stamp
        # (a plan of another seed has the same shapes and other maps)
        self.token = hashlib.sha256(repr((self.fingerprint, seed, symmetry, noise_std, replication, norm_fill,
                                          [(p.name, p.new_width) for p in self.spaces],
                                          sorted(self.qk_scales.items()))).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ widths
    def _targets(self, factor: float | None, widths: dict[str, int]) -> dict[str, int]:
        by_name = {sp.name: sp for sp in self.analysis.spaces}
        if factor is not None:
            if not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 1:
                raise WidthError(f"factor must be a real number >= 1, got {factor!r}",
                                 fix="pass factor=1.5 or larger; shrinking is not function-preserving")
        targets = {sp.name: (scaled_width(sp.width, factor) if factor is not None and not sp.frozen else sp.width)
                   for sp in self.analysis.spaces}
        for name, q in widths.items():
            sp = by_name.get(name)
            if sp is None:
                near = ", ".join(sorted(by_name)[:12])
                raise UnknownSpaceError(f"no space named {name!r}", node=name, op="widths",
                                        fix=f"use one of the plan's space names: {near}")
            if isinstance(q, bool) or not isinstance(q, int):
                raise WidthError(f"width for {name!r} must be an int, got {q!r}", node=name, op="widths",
                                 fix="pass whole unit counts, e.g. widths={name: 96}")
            if q < sp.width:
                raise WidthError(f"width {q} for space {name!r} is below its current width {sp.width}",
                                 node=name, op="widths", fix=f"choose a width >= {sp.width}")
            if sp.frozen and q != sp.width:
                r = sp.reasons[0]
                raise FrozenSpaceError(f"space {name!r} cannot be widened: {r}", node=r.node, op=r.op,
                                       fix="widen another space; `n2n-fx explain` lists the widenable ones")
            targets[name] = q
        # a request spreads through conv ties and norm groups until nothing new is asked: a tie-mate of a
        # request is asked too, and so is a norm-mate whose k a request fixed (which may tie further)
        asked = set(widths)
        while True:
            spread = asked | self._apply_ties(targets, asked)
            spread |= self._apply_uniform(targets, spread, factor)
            if spread == asked:
                break
            asked = spread
        self._apply_links(targets, asked)
        self._settle_ties(targets, set(widths))
        self._solve_fills(targets, asked, factor)
        return targets

    def _solve_fills(self, targets: dict[str, int], requested: set[str], factor: float | None) -> None:
        """The fill plan of every normalised space that still wants a non-multiple width: a
        requested one that cannot be filled exactly is an error; one that norm_fill asked of a
        factor falls back to k = floor(factor) replication (the default behaviour)."""
        by_name = {sp.name: sp for sp in self.analysis.spaces}
        fell_back = False
        for name, q in self._fill_wanted.items():
            if targets[name] != q:
                continue  # another constraint (attention, grouped conv) kept its width
            try:
                self.fills[name] = F.solve(self.analysis, by_name[name], q)
            except ConstraintError:
                if name in requested:
                    raise
                targets[name] = by_name[name].width * max(1, math.floor((factor or 1) + 1e-9))
                fell_back = True
        if fell_back:  # the widths that followed the fill width (attention heads, conv groups) follow again
            self._apply_links(targets, requested)
            self._settle_ties(targets, requested)

    def _settle_ties(self, targets: dict[str, int], requested: set[str]) -> None:
        """A norm on one piece of a grouped conv (k = floor(factor)) can pull that piece off the
        width its tie group got: then the group and what is tied to it keep their widths (a
        requested width that cannot hold is an error)."""
        an = self.analysis
        for _ in range(len(an.ties) + 1):
            reset: set[str] = set()
            for group in an.ties:
                names = {sp.name for lay in group for a in S.atoms_of(lay)
                         if (sp := an.space_of(a)) is not None and not sp.frozen}
                if len({targets[n] for n in names}) <= 1:
                    continue
                if names & requested:
                    first = sorted(names)[0]
                    raise ConstraintError(
                        f"spaces {sorted(names)} are the groups of one grouped conv and need one width, but a "
                        f"norm or mean on one of them allows only multiples of its width; got "
                        f"{sorted({targets[n] for n in names})}", node=first, op="conv",
                        fix="request one integer multiple of the current width for all of them")
                reset |= names
            if not reset:
                return
            self._reset(targets, reset, requested, "a grouped conv's pieces")
            self._apply_links(targets, requested)
        raise ConstraintError("grouped conv widths did not settle", op="conv",  # pragma: no cover
                              fix="request widths for the grouped conv's spaces explicitly")

    def uniform_groups(self) -> list[tuple[str, list[Space]]]:
        """(norm node, spaces) for every set of spaces that must replicate by one k (joined when
        two norms share a space)."""
        groups: list[tuple[list[str], dict[str, Space]]] = []
        for node, layout in self.analysis.uniform:
            members = {sp.name: sp for a in S.atoms_of(layout) if (sp := self.analysis.space_of(a)) is not None}
            joined = [g for g in groups if set(g[1]) & set(members)]
            for g in joined:
                groups.remove(g)
                members.update(g[1])
            groups.append(([node] + [n for g in joined for n in g[0]], members))
        return [(nodes[0], list(members.values())) for nodes, members in groups]

    def _apply_uniform(self, targets: dict[str, int], requested: set[str], factor: float | None) -> set[str]:
        """Spaces under a LayerNorm/RMSNorm grow by one integer k: k = floor(factor), or the one k
        their requested widths imply. A requested width that is not a multiple (or, with norm_fill,
        a factor's) grows by fill instead (fill.py; replication='uniform' keeps the old refusal).
        Returns the spaces whose k a request fixed."""
        asked: set[str] = set()
        for node, spaces in self.uniform_groups():
            live = [sp for sp in spaces if not sp.frozen]
            ks = set()
            fill = {sp.name: targets[sp.name] for sp in live if sp.name in requested and targets[sp.name] % sp.width}
            if not fill and self.norm_fill and factor is not None and len(live) == 1 and live[0].name not in requested \
                    and (q := scaled_width(live[0].width, factor)) % live[0].width:
                fill = {live[0].name: q}  # opt-in: a factor's exact width by fill, not floor(factor)
            if fill and self.replication != "uniform":
                if len(live) != 1:
                    raise ConstraintError(
                        f"spaces {[sp.name for sp in live]} are normalised together at {node}: fill (for a "
                        f"width that is not a multiple) grows one normalised space at a time, and all of them "
                        f"must use one scheme", node=node, op="normalize",
                        fix="request multiples of the current widths (uniform replication) for all of them")
                self._fill_wanted.update(fill)
                targets.update(fill)
                continue
            for sp in live:
                if sp.name in requested:
                    q = targets[sp.name]
                    if q % sp.width:
                        raise ConstraintError(
                            f"space {sp.name!r} is normalised at {node}: it can only be replicated uniformly, "
                            f"so its width must be a multiple of {sp.width}; got {q}", node=node, op="normalize",
                            fix=f"ask for {sp.width * max(2, round(q / sp.width))} (or leave it out)")
                    ks.add(q // sp.width)
            if len(ks) > 1:
                raise ConstraintError(f"spaces {[sp.name for sp in live]} are normalised together at {node} and "
                                      f"need one replication factor; got {sorted(ks)}", node=node, op="normalize",
                                      fix="request widths with one ratio to their current widths")
            if ks:
                asked |= {sp.name for sp in live}
            k = ks.pop() if ks else (max(1, math.floor(factor + 1e-9)) if factor is not None else 1)
            for sp in live:
                targets[sp.name] = sp.width * k
        return asked

    def _apply_links(self, targets: dict[str, int], requested: set[str]) -> None:
        """nn.MultiheadAttention: heads = embed width / head_dim. A factor that gives an embed width
        off the head_dim grid leaves that attention's spaces (and what is tied to them) as they are;
        a requested width off the grid is an error."""
        an = self.analysis
        for _ in range(len(an.links) + 1):
            reset: set[str] = set()
            for link in an.links:
                heads = an.space_of(link.heads)
                embed = [sp for a in S.atoms_of(link.embed) if (sp := an.space_of(a)) is not None]
                if heads is None:
                    continue
                width = self._layout_width(link.embed, targets)
                want = width // link.head_dim if width % link.head_dim == 0 else None
                if want is not None and (heads.frozen and want != heads.width or
                                         heads.name in requested and targets[heads.name] != want):
                    want = None
                if want is not None:
                    targets[heads.name] = want
                    continue
                if heads.name in requested or any(sp.name in requested for sp in embed):
                    raise ConstraintError(
                        f"attention {link.node}: embed width {width} must equal heads x head_dim "
                        f"({targets[heads.name]} x {link.head_dim})", node=link.node, op="attention",
                        fix=f"request an embed width that is a multiple of {link.head_dim} and leave "
                            f"{heads.name!r} out (it follows: embed width / {link.head_dim})")
                reset |= {heads.name, *(sp.name for sp in embed)}
            if not reset:
                return
            self._reset(targets, reset, requested, "an attention's embed width off its head grid")
        raise ConstraintError("attention widths did not settle", op="attention",  # pragma: no cover
                              fix="request widths for the attention's spaces explicitly")

    def _layout_width(self, layout: Layout, targets: dict[str, int]) -> int:
        total = 0
        for s in S.normalize(layout):
            sp = self.analysis.space_of(s.atom) if isinstance(s, Seg) else None
            total += (targets[sp.name] * s.inner if sp is not None else s.size)
        return total

    def _reset(self, targets: dict[str, int], names: set[str], requested: set[str], why: str) -> None:
        """`names` keep their widths, and so does everything tied to them; a requested width among
        them cannot hold, which is an error, never a silent drop."""
        by_name = {sp.name: sp for sp in self.analysis.spaces}
        closure = self._closure(names)
        lost = sorted(n for n in closure if n in requested and targets[n] != by_name[n].width)
        if lost:
            raise ConstraintError(
                f"the widths requested for {lost} cannot hold: {why} keeps {sorted(names)} at their widths, and "
                f"{lost} are tied to them (conv ties, norm groups)", node=lost[0], op="widths",
                fix=f"request widths for {sorted(closure)} together, or leave {lost} out")
        for name in closure:
            targets[name] = by_name[name].width

    def _closure(self, names: set[str]) -> set[str]:
        """Spaces that must keep their width with `names`: their norm groups and conv tie groups."""
        groups = [[sp.name for sp in spaces] for _, spaces in self.uniform_groups()]
        for group in self.analysis.ties:
            groups.append([sp.name for lay in group for a in S.atoms_of(lay)
                           if (sp := self.analysis.space_of(a)) is not None])
        out, changed = set(names), True
        while changed:
            changed = False
            for g in groups:
                if out & set(g) and not set(g) <= out:
                    out |= set(g)
                    changed = True
        return out

    def _apply_ties(self, targets: dict[str, int], requested: set[str]) -> set[str]:
        """Grouped-conv pieces must all get one width: a request for one applies to its group
        (returns the spaces that got a requested width that way)."""
        tied: set[str] = set()
        for group in self.analysis.ties:
            layouts = [S.normalize(layout) for layout in group]
            if any(len(lay) != 1 or not isinstance(lay[0], Seg) or lay[0].inner != layouts[0][0].inner
                   for lay in layouts):
                continue  # the inference froze such groups: nothing here may change
            spaces = [self.analysis.space_of(lay[0].atom) for lay in layouts]
            names = [sp.name for sp in spaces if sp is not None and not sp.frozen]
            if not names:
                continue
            asked = {targets[n] for n in names if n in requested}
            if len(asked) > 1:
                raise ConstraintError(f"spaces {names} are the groups of one grouped conv and need one width; "
                                      f"got {sorted(asked)}", node=names[0], op="conv",
                                      fix="request a single width for one of them")
            q = asked.pop() if asked else max(targets[n] for n in names)
            for n in names:
                targets[n] = q
            if set(names) & requested:
                tied |= set(names)
        return tied

    # ------------------------------------------------------------------ maps
    def axis_fill(self, key: tuple[str, int]) -> tuple[F.AxisFill, F.SpaceFill] | None:
        """How a parameter axis on a filled space is remapped (None: not on one)."""
        if not self._fill_roots:
            return None
        for atom in S.atoms_of(self.analysis.param_layouts[key]):
            sf = self._fill_roots.get(S.find(atom).id)
            if sf is not None:
                return sf.axes[key], sf
        return None

    def leaf_map(self, leaf: S.Atom) -> tuple[torch.Tensor, int]:
        """(g, old width) of a leaf atom; identity for atoms that are not widened spaces."""
        p = self._by_root.get(S.find(leaf).id)
        n = S.find(leaf).width
        return (p.g, n) if p is not None else (im.identity_map(n), n)

    def new_width(self, layout: Layout) -> int:
        return sum(self.leaf_map(s.atom)[0].numel() * s.inner if isinstance(s, Seg) else s.size
                   for s in S.normalize(layout))

    @staticmethod
    def _key(layout: Layout) -> tuple:
        return tuple((S.find(s.atom).id, s.inner) if isinstance(s, Seg) else s.size for s in S.normalize(layout))

    def layout_index(self, layout: Layout) -> torch.Tensor:
        key = ("index", self._key(layout))
        if key not in self._cache:
            self._cache[key] = self._layout_index(layout)
        return self._cache[key]

    def _layout_index(self, layout: Layout) -> torch.Tensor:
        parts = []
        for s in S.normalize(layout):
            if isinstance(s, Seg):
                g, n = self.leaf_map(s.atom)
                parts.append((g, n, s.inner))
            else:
                parts.append((im.identity_map(s.size), s.size, 1))
        return im.gather_index(parts)

    def _qk_ratios(self) -> dict[int, float]:
        """r^2 = (s / s')^2 for every widened head_dim space: the teacher's scale over the student's,
        squared (a derived scale is 1/sqrt(head_dim): then r^2 = d'/d, rational)."""
        ratios: dict[int, float] = {}
        for link in self.analysis.qk:
            roots = {S.find(a).id for a in S.atoms_of(link.layout)}
            old, new, theirs = S.width(link.layout), self.new_width(link.layout), self.qk_scales[link.node]
            if new == old and theirs == link.scale:
                continue
            num = (link.scale ** 2 if link.scale is not None else 1.0) * (new if theirs is None else 1)
            den = (theirs ** 2 if theirs is not None else 1.0) * (old if link.scale is None else 1)
            ratio_sq = num / den
            frozen = next((r for a in S.atoms_of(link.layout) for r in S.find(a).frozen), None)
            if frozen is not None and ratio_sq != 1.0:  # the check did not clear these rows for a factor
                raise ConstraintError(f"{link.node} computes with another scale on the student ({theirs}, the teacher's "
                                      f"{link.scale}) and its head_dim is frozen ({frozen}): no factor on its q and k "
                                      "rows is known to keep the scores", node=link.node, op="sdpa",
                                      fix="keep this attention's scale in the target, or remove what freezes its head_dim")
            for root in roots:
                if ratios.setdefault(root, ratio_sq) != ratio_sq:
                    raise ConstraintError(f"head_dim space of {link.node} is contracted by attentions with different "
                                          f"scales ({ratios[root]:.6g} and {ratio_sq:.6g} after widening)", node=link.node,
                                          op="sdpa", fix="keep this head_dim (widths=...) or give every attention one scale")
        return ratios

    def layout_qk(self, layout: Layout) -> torch.Tensor | None:
        """Wider heads: f^4 per new position, f = sqrt(r / count) the factor on the q and k rows of a
        head_dim space (and 1/f on its consumers' columns); 1 off it; None when the layout holds none."""
        if not self._qk_ratio or not any(S.find(s.atom).id in self._qk_ratio for s in S.normalize(layout)
                                         if isinstance(s, Seg)):
            return None
        key = ("qk", self._key(layout))
        if key not in self._cache:
            parts = []
            for s in S.normalize(layout):
                if not isinstance(s, Seg):
                    parts.append((torch.ones(s.size, dtype=torch.float64), 1))
                    continue
                g, n = self.leaf_map(s.atom)
                ratio_sq = self._qk_ratio.get(S.find(s.atom).id)
                parts.append((torch.ones(g.numel(), dtype=torch.float64) if ratio_sq is None
                              else im.qk_gain4(g, n, ratio_sq), s.inner))
            self._cache[key] = im.gather_scale(parts)
        return self._cache[key]

    def layout_scale(self, layout: Layout, key: object) -> torch.Tensor:
        """Consumer factors along a contracted axis: 1/count (none, noise) or random alpha (split)."""
        if self.symmetry == "split":  # alpha is drawn per consumer tensor
            return self._layout_scale(layout, key)
        cache_key = ("scale", self._key(layout))
        if cache_key not in self._cache:
            self._cache[cache_key] = self._layout_scale(layout, key)
        return self._cache[cache_key]

    def _layout_scale(self, layout: Layout, key: object) -> torch.Tensor:
        parts = []
        for i, s in enumerate(S.normalize(layout)):
            if isinstance(s, Seg):
                g, n = self.leaf_map(s.atom)
                if self.symmetry == "split":
                    scale = im.split_scale(g, n, seeded(self.seed, "alpha", key, i))
                else:
                    scale = im.divide_scale(g, n)
                parts.append((scale, s.inner))
            else:
                parts.append((torch.ones(s.size, dtype=torch.float64), 1))
        return im.gather_scale(parts)

    def layout_counts(self, layout: Layout) -> torch.Tensor:
        """How many replicas the unit at each new position has (1 on fixed positions), float64."""
        parts = []
        for s in S.normalize(layout):
            if isinstance(s, Seg):
                g, n = self.leaf_map(s.atom)
                parts.append((im.replica_counts(g, n)[g].to(torch.float64), s.inner))
            else:
                parts.append((torch.ones(s.size, dtype=torch.float64), 1))
        return im.gather_scale(parts)

    def replicated_mask(self, layout: Layout) -> torch.Tensor:
        """True at new positions whose unit has more than one replica (where noise goes)."""
        parts = []
        for s in S.normalize(layout):
            if isinstance(s, Seg):
                g, n = self.leaf_map(s.atom)
                parts.append(((im.replica_counts(g, n)[g] > 1).to(torch.float64), s.inner))
            else:
                parts.append((torch.zeros(s.size, dtype=torch.float64), 1))
        return im.gather_scale(parts) > 0

    # ------------------------------------------------------------------ report
    def __str__(self) -> str:
        return format_plan(self)

    def __repr__(self) -> str:
        widened = sum(p.new_width > p.width for p in self.spaces)
        frozen = sum(p.frozen is not None for p in self.spaces)
        return f"<Plan: {len(self.spaces)} spaces, {widened} widened, {frozen} frozen>"


def _short(items: list[str], limit: int = 3) -> str:
    uniq = list(dict.fromkeys(items))
    text = ", ".join(uniq[:limit])
    return text + (f", +{len(uniq) - limit}" if len(uniq) > limit else "") if uniq else "-"


def format_plan(plan: Plan) -> str:
    rows = [("space", "producers", "consumers", "width", "frozen")]
    for p in plan.spaces:
        w = f"{p.width}" if p.new_width == p.width else f"{p.width} -> {p.new_width}"
        prod = p.space.producers or p.space.carriers
        note = f"{p.reasons[0].code} at {p.reasons[0].node}" if p.reasons else ""
        if not note and p.name in plan.fills:
            note = f"(filled: {plan.fills[p.name].fill.value}, not a multiple)"
        elif not note and p.space.uniform and p.new_width == p.width:
            note = f"(integer factors only: normalised at {p.space.uniform})"
        elif not note and p.space.attention and p.new_width == p.width:
            note = f"(embed width = heads x head_dim at {p.space.attention})"
        rows.append((p.name, _short(prod), _short(p.space.consumers), w, note))
    return "\n".join([format_table(rows), summary_line(plan)])


def summary_line(plan: Plan) -> str:
    """One line that makes lost coverage visible: spaces widened of total, frozen by reason code,
    and the front end that traced the model."""
    widened = sum(p.new_width > p.width for p in plan.spaces)
    codes = Counter(p.reasons[0].code for p in plan.spaces if p.reasons)
    frozen = ", ".join(f"{code} {n}" for code, n in sorted(codes.items(), key=lambda kv: (-kv[1], kv[0])))
    kept = len(plan.spaces) - widened - sum(codes.values())
    used = plan.analysis.gm.meta.get("n2n_frontend", "fx")
    return (f"{widened} of {len(plan.spaces)} spaces widened" + (f", {kept} open but kept" if kept else "")
            + (f"; frozen: {frozen}" if frozen else "; none frozen") + f" (traced with {used})")

"""Remapping inference: one forward pass over the FX graph that finds the spaces.

Every node's value gets a layout per axis (see spaces.py). Each call is looked up in the rule
table and handled by its kind's registered rule; a call the table does not know stops: every
space it touches is frozen with reason `unknown_op`. The result lists the spaces (leaf atoms that
own at least one producer), what binds each parameter axis, and the literal rewrites the student
needs.

Layout of the package:
    driver.py    the walk over the graph (Inference.run / call), rule dispatch, `infer`
    context.py   Context: the accumulators of one run and the helpers the rules call
    registry.py  @rule(kind): one function per kind; lookup raises UnknownRuleError; check_kinds
    solver.py    the post-pass: sizes, roles, ties, uniform norms, head links, then the spaces
    layouts.py   small pure functions on layouts (reshape's stride map, head splits, folds)
    values.py    Val, Scalar, Rewrite, Space, Analysis, ...; the Role and RewriteKind enums
    rules/       linear.py (dense, matmul, conv, embedding), pointwise.py (elementwise,
                 channelwise, normalize, constant, expand), structure.py (concat, stack, split,
                 getitem, reshape, permute, reduce, shape_query, space_to_depth), attention.py
                 (attention, sdpa), stop.py (stop)

Adding a kind: its entry in specs/ops.toml ([kinds] and the op), one function in a family module
of rules/ decorated with `@rule("kind")`, and its proof; `registry.check_kinds` (run by the
proofs' meta-check and tests/test_spec.py) fails while a kind and its rule do not pair up.

Porting an old-style rule (a `rule_<kind>(self, spec, a)` method of the former `Inference`):
    1. move the method into the family module it belongs to, dedented to module level;
    2. rename it to `<kind>` and decorate it `@rule("<kind>")` (add `sizes=True` when it reads
       width-dependent sizes itself, `moves=True` when it only moves axes, `passes=True` when a
       head-splitting view may see through it: the facts the old driver hard-coded per kind);
    3. rename `self` to `ctx`: the context has every helper the class had (ctx.reason,
       ctx.freeze_all, ctx.from_meta, ctx.out_meta, ctx.param_val, ctx.role, ctx.value, ctx.stop,
       ctx.broadcast, ctx.carry_per_unit, ctx.module_attr, ctx.bind_module, ctx.node, ctx.gm,
       ctx.table and the accumulators ctx.rewrites, ctx.uniform, ctx.links, ctx.ties, ...);
    4. a private helper method `self._h(...)` becomes a module function `_h(ctx, ...)`; bare
       strings become enums: reason codes `Code.*` (n2n_fx.spaces), roles `Role.*`, rewrite kinds
       `RewriteKind.*` (values.py).
"""

from __future__ import annotations

from . import rules  # noqa: F401  (registers every rule)
from .context import Context
from .driver import OBSERVERS, Inference, apply, infer
from .layouts import _fold_batch, _period, qkv_rows, reshape_layouts
from .registry import RULES, RuleInfo, UnknownRuleError, check_kinds, lookup, rule
from .values import (
    Analysis,
    Event,
    GroupedContract,
    HeadGrowth,
    HeadLink,
    ModuleAttr,
    ParamAxis,
    QKLink,
    Rewrite,
    RewriteKind,
    Role,
    Scalar,
    Space,
    TiedHead,
    Val,
    _get_attr,
    _norm_dim,
    _walk,
    op_label,
)

__all__ = [
    "OBSERVERS", "RULES", "Analysis", "Context", "Event", "GroupedContract", "HeadGrowth", "HeadLink", "Inference", "ModuleAttr",
    "ParamAxis", "QKLink", "Rewrite", "RewriteKind", "Role", "RuleInfo", "Scalar", "Space", "TiedHead", "UnknownRuleError", "Val",
    "_fold_batch", "_get_attr", "_norm_dim", "_period", "_walk", "apply", "check_kinds", "infer", "lookup", "op_label",
    "qkv_rows", "reshape_layouts", "rule",
]

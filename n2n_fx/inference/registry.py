"""One registered rule per kind of specs/ops.toml: `@rule("dense")` on a function of the
context, the table entry and the bound operands (`def dense(ctx, spec, a) -> Any`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from ..spec import RuleTable

RuleFn = Callable[..., Any]  # (ctx: Context, spec: OpSpec, a: dict[str, Any]) -> value


@dataclass(frozen=True)
class RuleInfo:
    """A kind's rule and the facts the driver needs about the kind (kept here, not in the driver).

    sizes: the rule reads width-dependent sizes itself (a view's shape, a split's sizes), so the
        driver does not freeze the spaces of tainted size arguments before calling it.
    moves: it moves axes or reads sizes, not values: the parameters it sees are not "read".
    raw: a stop rule: it sees the call's own operands ({"args", "kwargs"}; a module's parameters
        are not bound, so they stay unfrozen) and the driver records no Event for it.
    passes: layouts pass through it unchanged in value (a view feeding attention may split heads).
    """

    kind: str
    fn: RuleFn
    sizes: bool = False
    moves: bool = False
    raw: bool = False
    passes: bool = False


RULES: dict[str, RuleInfo] = {}


class UnknownRuleError(SpecError):
    """A table entry's kind has no registered rule (or a rule has no kind in the table)."""

    code = "unknown_rule"


def rule(kind: str, *, sizes: bool = False, moves: bool = False, raw: bool = False,
         passes: bool = False) -> Callable[[RuleFn], RuleFn]:
    """Register `fn` as the one rule of `kind`; a second rule for one kind is a programming error."""

    def register(fn: RuleFn) -> RuleFn:
        if kind in RULES:
            raise UnknownRuleError(f"kind {kind!r} has two rules: {RULES[kind].fn.__qualname__} and "
                                   f"{fn.__qualname__}; keep one")
        RULES[kind] = RuleInfo(kind, fn, sizes, moves, raw, passes)
        return fn

    return register


def lookup(kind: str) -> RuleInfo:
    """The rule of `kind`; a typed error when none is registered."""
    info = RULES.get(kind)
    if info is None:
        raise UnknownRuleError(f"no rule is registered for kind {kind!r}; add one with @rule({kind!r}) in "
                               "n2n_fx/inference/rules/ (see n2n_fx/inference/__init__.py)")
    return info


def check_kinds(table: RuleTable) -> list[str]:
    """Problems between the table's [kinds] and the registry: a kind without a rule, a rule without
    a kind (empty when each kind has exactly one rule; `rule` refuses a second one)."""
    kinds = set(table.kinds)
    problems = [f"kind {k!r} of [kinds] has no registered rule" for k in sorted(kinds - RULES.keys())]
    problems += [f"rule {k!r} ({RULES[k].fn.__module__}) has no entry in [kinds]" for k in sorted(RULES.keys() - kinds)]
    return problems

"""Load and validate the rule table in specs/ and resolve FX nodes to its entries.

The table is data (specs/ops.toml); this module only parses it, rejects duplicates and unknown
kinds, imports the spelled targets, and answers "which entry covers this node?".
"""

from __future__ import annotations

import ast
import builtins  # noqa: F401  (resolves "builtins.getattr" spellings)
import importlib
import operator  # noqa: F401
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.fx

from .errors import SpecError

KINDS = (
    "elementwise", "channelwise", "dense", "conv", "concat", "stack", "split", "getitem",
    "reshape", "permute", "reduce", "matmul", "shape_query", "normalize", "expand", "attention", "embedding", "space_to_depth", "sdpa", "constant", "stop",
)
# how an op carries a filled space (see n2n_fx/fill.py; documented in the table's [fill])
FILL_RULES = ("linear", "identity", "add", "sub", "mul", "div", "power", "mean", "layer_norm", "rms_norm")
_NO_DEFAULT = object()


@dataclass(frozen=True)
class OpSpec:
    """One entry of the rule table."""

    name: str
    kind: str
    signature: tuple[tuple[str, Any], ...]  # (name, default or _NO_DEFAULT); "*name" is varargs
    proof: str
    forward: tuple[tuple[str, Any], ...] = ()  # a module's forward arguments, when it takes more than one
    modules: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    params: dict[str, str] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, str] = field(default_factory=dict)
    operands: dict[str, str] = field(default_factory=dict)  # the rule's operand name -> signature name
    options: dict[str, Any] = field(default_factory=dict)  # rule options (documented per kind)
    channel_axis: int | None = None
    per_channel: tuple[str, ...] = ()
    activation: bool = False
    idempotent: bool = False
    constraint: str = ""
    reason: str = ""
    fill: str = ""  # one of FILL_RULES, or "" (the op refuses a filled operand)
    proof_reach: str = ""  # why no proof's model reaches a spelling family of the entry ("" when all are)


@dataclass(frozen=True)
class RuleTable:
    ops: tuple[OpSpec, ...]
    kinds: dict[str, str]
    by_module: dict[type, OpSpec]
    by_function: dict[Any, OpSpec]
    by_method: dict[str, OpSpec]

    def entry(self, name: str) -> OpSpec:
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(name)

    def lookup(self, node: torch.fx.Node, gm: torch.nn.Module) -> OpSpec | None:
        """The entry covering this call node, or None (an unknown op: the caller stops)."""
        if node.op == "call_module":
            return self.by_module.get(type(gm.get_submodule(node.target)))
        if node.op == "call_function":
            try:
                return self.by_function.get(node.target)
            except TypeError:  # unhashable target
                return None
        if node.op == "call_method":
            return self.by_method.get(node.target)
        return None


def specs_dir() -> Path:
    """Where the table lives: the checkout's specs/ or the copy installed as n2n_fx/_specs."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_specs", here.parent / "specs"):
        if (candidate / "ops.toml").is_file():
            return candidate
    raise SpecError("the rule table specs/ops.toml was not found next to the package",
                    fix="reinstall n2n_fx (pip install .) so that specs/ ships with it")


def _resolve(dotted: str) -> Any:
    """The object a dotted name spells: the longest importable module prefix, then attributes
    (torch.ops.aten.linear.default is attributes of torch)."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(f"cannot import any prefix of {dotted}")


def _resolve_optional(dotted: str) -> Any:
    """A spelling; "?pkg.name" marks one from an optional package (None when it is absent)."""
    if not dotted.startswith("?"):
        return _resolve(dotted)
    try:
        return _resolve(dotted[1:])
    except (ImportError, AttributeError):
        return None


def _parse_signature(items: list[str], where: str) -> tuple[tuple[str, Any], ...]:
    out = []
    for item in items:
        name, eq, default = item.partition("=")
        if eq:
            try:
                value = ast.literal_eval(default)
            except (ValueError, SyntaxError) as exc:
                raise SpecError(f"{where}: bad default in signature item {item!r}") from exc
            out.append((name, value))
        else:
            out.append((name, _NO_DEFAULT))
    return tuple(out)


def parse_table(raw: dict[str, Any]) -> RuleTable:
    kinds = dict(raw.get("kinds", {}))
    if set(kinds) != set(KINDS):
        raise SpecError(f"[kinds] must document exactly the closed set {sorted(KINDS)}; "
                        f"got {sorted(kinds)}")
    fills = dict(raw.get("fill", {}))
    if set(fills) != set(FILL_RULES):
        raise SpecError(f"[fill] must document exactly the closed set {sorted(FILL_RULES)}; got {sorted(fills)}")
    ops: list[OpSpec] = []
    by_module: dict[type, OpSpec] = {}
    by_function: dict[Any, OpSpec] = {}
    by_method: dict[str, OpSpec] = {}
    names: set[str] = set()
    for entry in raw.get("op", []):
        where = f"specs entry {entry.get('name', '?')!r}"
        if entry.get("name") in names:
            raise SpecError(f"{where}: duplicate entry name")
        if entry.get("kind") not in KINDS:
            raise SpecError(f"{where}: kind {entry.get('kind')!r} is not one of {KINDS}")
        if not entry.get("proof"):
            raise SpecError(f"{where}: every entry must name its proof")
        if entry.get("fill", "") not in ("", *FILL_RULES):
            raise SpecError(f"{where}: fill {entry.get('fill')!r} is not one of {FILL_RULES}")
        if entry["kind"] == "stop" and not entry.get("reason"):
            raise SpecError(f"{where}: a stop entry must give its reason")
        spec = OpSpec(
            name=entry["name"], kind=entry["kind"], proof=entry["proof"],
            signature=_parse_signature(entry.get("signature", ["input"]), where),
            forward=_parse_signature(entry.get("forward", []), where),
            modules=tuple(entry.get("modules", ())), functions=tuple(entry.get("functions", ())),
            methods=tuple(entry.get("methods", ())), params=dict(entry.get("params", {})),
            config=dict(entry.get("config", {})), attrs=dict(entry.get("attrs", {})),
            operands=dict(entry.get("operands", {})), options=dict(entry.get("options", {})),
            channel_axis=entry.get("channel_axis"), per_channel=tuple(entry.get("per_channel", ())),
            activation=bool(entry.get("activation", False)),
            idempotent=bool(entry.get("idempotent", False)),
            constraint=entry.get("constraint", ""), reason=entry.get("reason", ""),
            fill=entry.get("fill", ""), proof_reach=entry.get("proof_reach", ""),
        )
        names.add(spec.name)
        ops.append(spec)
        for dotted in spec.modules:
            cls = _resolve_optional(dotted)
            if cls is None:
                continue
            if cls in by_module and by_module[cls] is not spec:
                raise SpecError(f"{where}: module {dotted} already covered by {by_module[cls].name!r}")
            by_module[cls] = spec
        for dotted in spec.functions:
            fn = _resolve_optional(dotted)
            if fn is None:
                continue
            # two spellings of one entry may be aliases (F.conv2d is torch.conv2d); two entries may not
            if fn in by_function and by_function[fn] is not spec:
                raise SpecError(f"{where}: function {dotted} already covered by "
                                f"{by_function[fn].name!r}")
            by_function[fn] = spec
        for method in spec.methods:
            if method in by_method and by_method[method] is not spec:
                raise SpecError(f"{where}: method {method} already covered by {by_method[method].name!r}")
            by_method[method] = spec
    return RuleTable(tuple(ops), kinds, by_module, by_function, by_method)


@lru_cache(maxsize=1)
def load_table() -> RuleTable:
    """The rule table shipped with the package (parsed once)."""
    with open(specs_dir() / "ops.toml", "rb") as fh:
        return parse_table(tomllib.load(fh))


def bind(spec: OpSpec, args: tuple, kwargs: dict, signature: tuple[tuple[str, Any], ...] = ()) -> dict[str, Any]:
    """Bind a call's positional and keyword arguments to the entry's signature names (or to the
    given signature: a module's forward)."""
    bound: dict[str, Any] = {}
    pos = list(args)
    for name, default in signature or spec.signature:
        if name.startswith("*"):
            rest = pos
            if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
                rest = list(rest[0])
            bound[name[1:]] = tuple(rest) if rest else tuple(kwargs.get(name[1:], ()))
            pos = []
            continue
        if pos:
            bound[name] = pos.pop(0)
        elif name in kwargs:
            bound[name] = kwargs[name]
        elif default is not _NO_DEFAULT:
            bound[name] = default
    # keywords the table does not name (e.g. out=...) are kept so rules can refuse them
    for key, value in kwargs.items():
        bound.setdefault(key, value)
    return bound

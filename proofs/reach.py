"""Which table entries the proofs' models reach: every call the engine's inference matches while
the proofs run is recorded (entry, spelling family, target), as torch's test_decomp tests whatever
its decomposition table holds. The meta-check fails on a non-stop entry whose spelling family
(module, function, method, aten) no proof reaches or that has no symbolic implementation, unless
the entry's `proof_reach` says why."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.fx

from n2n_fx.inference import OBSERVERS
from n2n_fx.spec import OpSpec, RuleTable

FAMILIES = ("module", "function", "method", "aten")


def family_of(target: object, op: str) -> str:
    """The spelling family of a call: its node op, ATen overloads apart from Python functions."""
    if op == "call_module":
        return "module"
    if op == "call_method":
        return "method"
    return "aten" if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)) else "function"


def spellings(op: OpSpec, table: RuleTable) -> dict[str, list[object]]:
    """The entry's resolved spellings (optional packages that are missing drop out), by family."""
    out: dict[str, list[object]] = {}
    for cls, spec in table.by_module.items():
        if spec is op:
            out.setdefault("module", []).append(cls)
    for fn, spec in table.by_function.items():
        if spec is op:
            out.setdefault(family_of(fn, "call_function"), []).append(fn)
    for name in op.methods:
        out.setdefault("method", []).append(name)
    return out


@dataclass
class Reach:
    """entry name -> family -> the proofs whose models reached it (and through which targets)."""

    by_entry: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    targets: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def proofs(self, entry: str, family: str) -> set[str]:
        return self.by_entry.get(entry, {}).get(family, set())


@contextlib.contextmanager
def recording(reach: Reach, proof: str) -> Iterator[None]:
    """Record, while the block runs, every entry the inference matches, as reached by `proof`."""

    def observe(spec: OpSpec, node: torch.fx.Node, gm: torch.nn.Module) -> None:
        fam = family_of(node.target, node.op)
        reach.by_entry.setdefault(spec.name, {}).setdefault(fam, set()).add(proof)
        target = type(gm.get_submodule(node.target)).__name__ if node.op == "call_module" else str(node.target)
        reach.targets.setdefault((spec.name, fam), set()).add(target)

    OBSERVERS.append(observe)
    try:
        yield
    finally:
        OBSERVERS.remove(observe)


def symbolic(op: OpSpec, family: str, targets: list[object]) -> bool:
    """Does the symbolic interpreter evaluate some spelling of this family (activations: any)?"""
    from . import symbolic as sym

    if op.activation:
        return True  # SymInterpreter.run_node: every activation of the table is an undefined f
    if family == "module":
        return any(sym.sym_module_of(cls) is not None for cls in targets)
    if family == "method":
        return any(name in sym.SYM_METHODS for name in targets)
    return any(sym.sym_function_of(fn) is not None for fn in targets)


def rows(table: RuleTable, reach: Reach) -> list[tuple[str, str, str, str, str]]:
    """(entry, family, reached by, symbolic, verdict) for every spelling family of every entry."""
    out = []
    for op in table.ops:
        for fam, targets in sorted(spellings(op, table).items(), key=lambda kv: FAMILIES.index(kv[0])):
            by = sorted(reach.proofs(op.name, fam))
            has_sym = symbolic(op, fam, targets)
            if op.kind == "stop":
                verdict = "stop"
            elif by and has_sym:
                verdict = "reached"
            elif op.proof_reach:
                verdict = f"exempt: {op.proof_reach}"
            else:
                verdict = "UNREACHED" if not by else "NO SYMBOLIC"
            out.append((op.name, fam, ", ".join(by) or "-", "yes" if has_sym else "no", verdict))
    return out


def problems(table: RuleTable, reach: Reach) -> list[str]:
    table_rows = rows(table, reach)
    out = [f"entry {e} ({fam}) is {v.lower()}: no proof's model reaches it with a symbolic implementation "
           f"(add one to a proof's model, or say why in the entry's proof_reach)"
           for e, fam, _, _, v in table_rows if v in ("UNREACHED", "NO SYMBOLIC")]
    exempt = {e for e, _, _, _, v in table_rows if v.startswith("exempt")}
    out += [f"entry {op.name} says why it is not reached (proof_reach) but every spelling family is: "
            f"remove its proof_reach" for op in table.ops if op.proof_reach and op.name not in exempt]
    return out

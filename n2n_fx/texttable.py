"""The one column-aligned text table every report prints (plans, rules, proofs, mutants, demo)."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(rows: Sequence[Sequence[str]], *, rule: bool = True) -> str:
    """Left-aligned columns two spaces apart, trailing blanks stripped; the first row is the header,
    underlined by dashes when `rule`."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if rule and lines:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

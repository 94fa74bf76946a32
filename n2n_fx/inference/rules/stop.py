"""Stop entries: the table names the op but no identity holds through it (proof `stop`)."""

from __future__ import annotations

from typing import Any

from ...spaces import Code
from ...spec import OpSpec
from ..context import Context
from ..registry import rule


@rule("stop", raw=True)
def stop(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    """Every space the call's own operands touch is frozen with the table's reason."""
    return ctx.stop(a["args"], a["kwargs"], ctx.reason(Code.UNSUPPORTED_OP, spec.reason))

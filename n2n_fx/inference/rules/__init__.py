"""The rules, one registered function per kind of specs/ops.toml, grouped by family. Importing
this package registers them all (n2n_fx.inference does)."""

from . import attention, linear, pointwise, stop, structure

__all__ = ["attention", "linear", "pointwise", "stop", "structure"]

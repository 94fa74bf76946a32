"""Front end: trace a model into an FX graph with shapes on every node.

The graph is a private copy: symbolic_trace shares submodules with the model it traces, and the
teacher must never be mutated (not even its BatchNorm statistics during shape propagation).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import os
import re
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
from torch.fx.passes.shape_prop import ShapeProp

from .errors import HookError, LiftedGraphError, N2NError, TraceFailure
from .spec import load_table

_TORCH_DIR = os.path.dirname(torch.__file__)


class _Tracer(torch.fx.Tracer):
    # buffers are graph values under their own names: fx's default folds `self.mean.view(...)` into
    # a constant that aliases the buffer and is written onto the traced root
    proxy_buffer_attributes = True

    def __init__(self, leaf_modules: Sequence[type] = ()) -> None:  # default: unpickling re-creates it
        super().__init__()
        self._leaves = tuple(leaf_modules)
        # read before tracing: while it runs, fx swaps wrapped functions (Swin's attention) for
        # patched stand-ins, and a table first loaded then would record the stand-ins
        self._known = load_table().by_module

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        hooked = [(f"{qualname}.{name}".strip("."), h) for name, sub in m.named_modules() for h in _hooks(sub)]
        if hooked:
            if isinstance(m, self._leaves):
                where, hook = hooked[0]
                raise HookError(f"module {where!r} has a {hook} inside {qualname!r}, which leaf_modules keeps "
                                "opaque: the hook would run in the student unseen", node=qualname, op=type(m).__name__,
                                fix="remove the hook, or drop the class from leaf_modules so the hook is traced")
            return False  # traced through: its hooks become graph ops, exactly as they run
        # a module class the rule table covers is kept whole (torch.nn ones are leaves anyway)
        return isinstance(m, self._leaves) or type(m) in self._known or super().is_leaf_module(m, qualname)


def _hooks(m: torch.nn.Module) -> list[str]:
    """The forward hooks and pre-hooks registered on `m` itself, described for an error. The ones
    torch.export puts on its own modules (input checks, state bookkeeping) compute nothing."""
    return [f"{kind} {getattr(h, '__qualname__', type(h).__name__)!r}"
            for kind, hooks in (("forward pre-hook", m._forward_pre_hooks), ("forward hook", m._forward_hooks))
            for h in hooks.values() if getattr(h, "__module__", "") != "torch.export._unlift"]


def _check_hooks(model: torch.nn.Module) -> None:
    """Hooks the graph cannot carry: on the model itself (fx traces forward, not __call__) and global
    module hooks (they would run on the student's modules too)."""
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        raise HookError("a global module forward hook is registered (register_module_forward_hook): it runs on every "
                        "module of the student too, where the graph cannot see it", op="trace",
                        fix="remove the global hook while growing the model")
    own = _hooks(model)
    if own:
        raise HookError(f"the model itself has a {own[0]}: tracing reads forward(), not the hook",
                        node="", op=type(model).__name__,
                        fix="register the hook on a submodule (it is then traced), or remove it while growing")


def _any_hooks(model: torch.nn.Module) -> bool:
    return any(_hooks(m) for m in model.modules())


Inputs = tuple | dict  # positional example inputs, or keyword ones: model(*inputs) / model(**inputs)


def as_inputs(example_inputs: Any) -> Inputs:
    """The example inputs as a tuple (positional) or a dict of str -> tensor (keywords: the model is
    called as model(**example_inputs), e.g. a T5's input_ids and decoder_input_ids)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    if isinstance(example_inputs, dict):
        return _keywords(example_inputs)
    raise N2NError(f"example_inputs must be a tensor, a tuple of tensors or a dict of str -> tensor, got "
                   f"{type(example_inputs).__name__}", op="example_inputs",
                   fix="pass example_inputs=torch.randn(batch, ...), a tuple of such tensors, or a dict of "
                       "keyword inputs such as {'input_ids': ids}")


def _keywords(example_inputs: dict) -> dict[str, Any]:
    if not example_inputs:
        raise N2NError("example_inputs is an empty dict: nothing to run the model on", op="example_inputs",
                       fix="pass the forward's keyword inputs, e.g. {'input_ids': ids}")
    for key, value in example_inputs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise N2NError(f"example_inputs dict key {key!r} is not a keyword argument name", op="example_inputs",
                           fix="key a dict of example inputs by the forward's argument names, e.g. "
                               "{'input_ids': ids}; pass positional inputs as a tuple")
        if not isinstance(value, torch.Tensor):
            raise N2NError(f"example_inputs[{key!r}] is a {type(value).__name__}, not a tensor", op="example_inputs",
                           fix="a dict of example inputs holds tensors only: fix other arguments with "
                               "functools.partial or a wrapper module, or leave them at their defaults")
    return dict(example_inputs)


def map_inputs(inputs: Inputs, fn: Callable[[Any], Any]) -> Inputs:
    """`fn` applied to every input, keeping positions or keywords."""
    if isinstance(inputs, dict):
        return {k: fn(v) for k, v in inputs.items()}
    return tuple(fn(x) for x in inputs)


def call(model: Callable[..., Any], inputs: Inputs) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


def positional(gm: torch.fx.GraphModule, inputs: Inputs) -> tuple:
    """`inputs` in the order of the graph's placeholders, for an fx Interpreter (it reads them
    positionally): keywords are bound by the names of the GraphModule's forward, which are its
    placeholders' under symbolic_trace and torch.export alike."""
    if not isinstance(inputs, dict):
        return inputs
    try:
        bound = inspect.signature(gm.forward).bind(**inputs)
    except TypeError as exc:
        names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
        raise N2NError(f"the keyword example inputs {sorted(inputs)} do not fit the traced forward {names}: {exc}",
                       op="example_inputs", fix="key the dict by the forward's argument names") from exc
    bound.apply_defaults()
    return bound.args


def _offending_line(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
    if not frames:
        return ""
    f = frames[-1]
    return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"


def _tensors(m: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor a module tree holds: parameters, buffers and plain tensor attributes."""
    out = [*m.parameters(), *m.buffers()]
    for sub in m.modules():
        out += [v for v in vars(sub).values() if isinstance(v, torch.Tensor)]
    return out


def _copy(model: torch.nn.Module, share_tensors: bool) -> torch.nn.Module:
    """A private copy of the module tree (Python state, hooks, flags): tracing writes into the
    module it traces. A memo that maps each tensor to itself copies the tree, not the tensors."""
    # computed tensors held as attributes (prune's and weight_norm's `weight`) cannot be deep-copied;
    # their pre-hooks recompute them on every call, so the copy may share them
    memo = {id(t): t for t in _tensors(model) if share_tensors or t.grad_fn is not None}
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:  # a lock, a file handle, a generator held by the model
        raise TraceFailure(f"the model cannot be copied for tracing ({type(exc).__name__}: {exc}); n2n_fx traces a "
                           "private copy so that the teacher is never written", op="copy.deepcopy",
                           fix="move objects that cannot be deep-copied out of the model's attributes") from exc


def private_tree(gm: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree that shares the tensors: a pass replaces tensors in it without
    writing into the modules of its input (which `symbolic_trace(model)` shares with the model)."""
    copied = _copy(gm, share_tensors=True)
    # copying a GraphModule registers the plain tensor attributes its get_attr nodes read (an exported
    # graph's lifted constants) as buffers: they stay out of the state_dict, as in the original
    old = dict(gm.named_modules(remove_duplicate=False))
    for name, m in copied.named_modules(remove_duplicate=False):
        if name in old:
            m._non_persistent_buffers_set |= set(m._buffers) - set(old[name]._buffers)
    return copied


def as_module(model: Any) -> Any:
    """An ExportedProgram as the module it runs (`ep.module()`: parameters get_attr again, as
    in an fx trace); anything else as it is."""
    if isinstance(model, torch.export.ExportedProgram):
        try:
            module = model.module()
        except Exception as exc:
            raise TraceFailure(f"the ExportedProgram cannot be unlifted into a module ({type(exc).__name__}: "
                               f"{exc})", op="ExportedProgram.module",
                               fix="pass the nn.Module it was exported from") from exc
        module.meta["n2n_frontend"] = "export"
        return module
    return model


_AOT_NAME = re.compile(r"primals_\d+|tangents_\d+|arg\d+_\d+")
_LIFTED_FIX = ("grow the nn.Module before compiling (student = n2n_fx.widen(model, x); "
               "torch.compile(student)), or pass the ExportedProgram itself (n2n_fx unlifts it with ep.module())")


def check_lifted(gm: torch.nn.Module, inputs: Inputs) -> None:
    """LiftedGraphError for a graph that takes its parameters as inputs: widening it would change
    nothing the caller runs (a Dynamo backend calls it with the model's own parameters)."""
    if not isinstance(gm, torch.fx.GraphModule):
        return
    values = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    params = [n.name for n, v in zip(placeholders, values) if isinstance(v, torch.nn.Parameter)]
    params += [n.name for n in placeholders if "ParamBuffer" in repr(getattr(n.meta.get("grapharg"), "source", ""))
               and n.name not in params]
    if params:
        raise LiftedGraphError(f"the graph takes the model's parameters as inputs ({params[:3]}"
                               + (f", +{len(params) - 3}" if len(params) > 3 else "") + "): it is a torch.compile "
                               "(Dynamo) graph, and a shape-changing pass inside the compiler cannot reach the "
                               "parameters the model runs with", node=params[0], op="placeholder", fix=_LIFTED_FIX)
    # aot_autograd's graphs (torch.compile's aot_eager, inductor) hold no parameter: the compiler passes
    # them in as fake tensors (primals_1, ... or arg0_1, ...) with the inputs, so none is an nn.Parameter
    fake = [n.name for n, v in zip(placeholders, values) if isinstance(v, torch._subclasses.FakeTensor)]
    aot = [n.name for n in placeholders if _AOT_NAME.fullmatch(n.name)]
    if fake or (len(aot) == len(placeholders) > 1 and not any(True for _ in gm.parameters())):
        names = fake or aot
        raise LiftedGraphError(f"the graph takes its inputs as {'fake tensors' if fake else 'aot_autograd names'} "
                               f"({names[:3]}" + (f", +{len(names) - 3}" if len(names) > 3 else "") + ") and holds "
                               "no parameter: it is a torch.compile (aot_autograd) graph, whose parameters are "
                               "inputs, and a shape-changing pass inside the compiler cannot reach the parameters "
                               "the model runs with", node=names[0], op="placeholder", fix=_LIFTED_FIX)
    required = [n for n in placeholders if not n.args]  # a placeholder with a default may be left out
    if not isinstance(inputs, dict) and len(values) < len(required):
        names = [n.name for n in required]
        raise LiftedGraphError(f"the graph has {len(required)} inputs ({names[:4]}"
                               + (f", +{len(names) - 4}" if len(names) > 4 else "") + f") but {len(values)} example "
                               "inputs were given: the others look like lifted parameters (torch.export's "
                               "ep.graph_module, aot_autograd)", node=names[-1], op="placeholder", fix=_LIFTED_FIX)
    weights = [] if any(True for _ in gm.parameters()) else _placeholder_weights(gm)
    if weights:
        raise LiftedGraphError(f"the graph holds no parameter and takes {weights[:3]}"
                               + (f", +{len(weights) - 3}" if len(weights) > 3 else "") + " as the weights of its "
                               "ops: a lifted graph (torch.export's ep.graph_module, aot_autograd), whose widening "
                               "would change nothing the model runs with", node=weights[0], op="placeholder",
                               fix=_LIFTED_FIX)


def _placeholder_weights(gm: torch.fx.GraphModule) -> list[str]:
    """Placeholders a call passes where the table's entry takes a parameter (linear's weight)."""
    from .spec import bind

    table, out = load_table(), []
    for node in gm.graph.nodes:
        spec = table.lookup(node, gm) if node.op == "call_function" else None
        if spec is None or not spec.params:
            continue
        bound = bind(spec, node.args, node.kwargs)
        out += [v.name for key in spec.params if isinstance(v := bound.get(key), torch.fx.Node)
                and v.op == "placeholder" and v.name not in out]
    return out


def _storage(t: torch.Tensor) -> int | None:
    return None if t.device.type == "meta" else t.untyped_storage().data_ptr()


def own_tensors(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """Clone every tensor of `student` that shares storage with one of `teacher` (after a pass that
    replaced the tensors it changed), so that training or loading one never touches the other."""
    shared = {_storage(t) for t in _tensors(teacher)} - {None, 0}
    clones: dict[int, torch.Tensor] = {}  # one clone per tensor: tied weights stay tied
    for module in student.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and _storage(p) in shared:
                if id(p) not in clones:
                    clones[id(p)] = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                module._parameters[name] = clones[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None and _storage(b) in shared:
                module._buffers[name] = clones.setdefault(id(b), b.clone())
        for name, v in list(vars(module).items()):
            if isinstance(v, torch.Tensor) and _storage(v) in shared:
                setattr(module, name, clones.setdefault(id(v), v.clone()))


def _set_training(model: torch.nn.Module, training: bool) -> None:
    for m in model.modules():  # flags, not .train(): exported modules refuse train()/eval()
        m.training = training


def _restore_flags(gm: torch.nn.Module, model: torch.nn.Module) -> None:
    """The student's modules get the teacher's training flags back (it was traced in `mode`)."""
    flags = dict((name, m.training) for name, m in model.named_modules())
    for name, m in gm.named_modules():
        m.training = flags.get(name, model.training)


def _nonpersistent_extras(gm: torch.nn.Module, model: torch.nn.Module) -> None:
    """Tensors the graph needs that are not in the teacher's state_dict (constants written in
    forward, plain tensor attributes, non-persistent buffers) stay out of the student's: its keys are
    the teacher's."""
    keys = set(model.state_dict(keep_vars=True))
    for name, m in gm.named_modules():
        for b in m._buffers:
            if f"{name}.{b}".lstrip(".") not in keys:
                m._non_persistent_buffers_set.add(b)


FRONTENDS = ("auto", "fx", "export")
MODES = ("eval", "train")


def trace(model: torch.nn.Module, example_inputs: Any, *, leaf_modules: Sequence[type] = (),
          concrete_args: dict[str, Any] | None = None, share_tensors: bool = False,
          frontend: str = "auto", mode: str = "eval", dynamic_shapes: Any = None) -> torch.fx.GraphModule:
    """Trace `model` and annotate every node with `meta['tensor_meta']` from the example inputs.

    What is traced is a private copy of the module tree: tracing writes into the module it traces
    (fx Proxies into Python caches, constants onto the root, torch.export's mode switches), and the
    teacher must come out of every call as it went in. The graph module owns copies of the model's
    tensors. With `share_tensors=True` it holds the model's own tensors (no copy: the cost of a deep
    copy is that of the whole widening); only a pass that replaces tensors rather than writing into
    them may run on it, followed by `own_tensors` (this is what `n2n_fx.widen` does).

    The copy is traced in `mode` ('eval' by default, whatever the teacher's mode): Python that reads
    `self.training` (F.dropout(x, training=self.training), torch.export's batch_norm) is fixed at
    trace time. The student's modules get the teacher's training flags back.
    Hooks: a module with forward hooks or pre-hooks is traced through, so its hooks are graph ops;
    hooks the graph cannot carry (on the model itself, global ones) raise HookError.

    frontend="export" runs torch.export instead of symbolic_trace, for models that only export:
    the graph is ATen-level (the table spells those ops too) and specialised to the example shapes.
    frontend="auto" (the default) uses symbolic_trace where it traces and torch.export where it
    does not (Hugging Face models); `gm.meta["n2n_frontend"]` says which, and so does the plan.

    dynamic_shapes: what torch.export makes dynamic (its own argument, passed through; used only
    when export traces). None (the default) specialises the graph to the example shapes, so the
    student refuses other batch sizes and sequence lengths; "auto" marks every dim of every tensor
    input `torch.export.Dim.AUTO` (export keeps dynamic what the model lets vary: batch, sequence,
    image size); a dict or tuple as torch.export takes it names dims (`Dim("seq", max=512)`).
    Export specialises an example dim of size 1, so a dynamic batch needs an example batch >= 2
    (the student then runs at batch 1 too). The plan does not depend on it: shapes, spaces and
    widths are those of the example inputs.
    """
    model = as_module(model)
    if not isinstance(model, torch.nn.Module):
        raise N2NError(f"expected an nn.Module, got {type(model).__name__}", fix="pass the model object itself")
    if frontend not in FRONTENDS:
        raise N2NError(f"frontend must be one of {FRONTENDS}, got {frontend!r}", op="trace",
                       fix="use frontend='auto' (the default), 'fx' (symbolic_trace) or 'export' (torch.export)")
    if mode not in MODES:
        raise N2NError(f"mode must be one of {MODES}, got {mode!r}", op="trace",
                       fix="mode='eval' (the default) traces inference semantics, 'train' training semantics")
    inputs = as_inputs(example_inputs)
    check_lifted(model, inputs)
    _check_hooks(model)
    private = _private(model, share_tensors, mode)
    if isinstance(model, torch.fx.GraphModule) and not leaf_modules and concrete_args is None \
            and not _any_hooks(model):
        gm, used = private, model.meta.get("n2n_frontend", "fx")  # a student: its graph is already the model
    elif frontend == "export" and not isinstance(model, torch.fx.GraphModule):
        gm, used = _export(private, inputs, dynamic_shapes), "export"
    elif frontend == "auto" and not isinstance(model, torch.fx.GraphModule) and not leaf_modules \
            and concrete_args is None:
        try:
            gm = _fx(private, model, inputs, leaf_modules, concrete_args)
            return _seen_inside(gm, model, inputs, share_tensors, mode, dynamic_shapes)
        except TraceFailure as fx_failure:  # e.g. Hugging Face models: export traces them
            private = _private(model, share_tensors, mode)  # the failed trace may have written into the copy
            try:
                gm, used = _export(private, inputs, dynamic_shapes), "export"
            except TraceFailure as export_failure:
                raise TraceFailure(f"{fx_failure.message} torch.export failed too: {export_failure.message}",
                                   op="symbolic_trace, torch.export", fix=fx_failure.fix) from fx_failure
    else:
        return _fx(private, model, inputs, leaf_modules, concrete_args)
    return _finish(gm, model, inputs, used)


def _opaque_parameters(gm: torch.fx.GraphModule) -> int:
    """Parameter elements only ops the table does not know read: what such a trace cannot widen."""
    table, seen, total = load_table(), set(), 0
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method") or table.lookup(node, gm) is not None:
            continue
        if node.op == "call_module":
            tensors = list(gm.get_submodule(node.target).parameters())
        else:
            tensors = [_parameter(gm, str(a.target)) for a in node.all_input_nodes if a.op == "get_attr"]
        for t in tensors:
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                total += t.numel()
    return total


def _parameter(gm: torch.nn.Module, target: str) -> torch.nn.Parameter | None:
    try:
        return gm.get_parameter(target)
    except AttributeError:  # a buffer or constant
        return None


def _seen_inside(gm: torch.fx.GraphModule, model: torch.nn.Module, inputs: Inputs, share_tensors: bool, mode: str,
                 dynamic_shapes: Any) -> torch.fx.GraphModule:
    """frontend='auto' after symbolic_trace: torch.nn modules the table does not know are fx leaves
    (nn.TransformerEncoder), opaque; torch.export traces into them. Its graph is taken when it leaves
    fewer parameters to unknown ops, else symbolic_trace's (nn.LSTM: aten.lstm is as opaque)."""
    opaque = _opaque_parameters(gm)
    if not opaque:
        return gm
    try:
        exported = _finish(_export(_private(model, share_tensors, mode), inputs, dynamic_shapes), model, inputs,
                           "export")
    except N2NError:
        return gm
    if _opaque_parameters(exported) >= opaque or (mode == "eval" and not _agree(gm, exported, inputs)):
        return gm
    return exported


def _agree(gm: torch.fx.GraphModule, exported: torch.fx.GraphModule, inputs: Inputs) -> bool:
    """Whether export's graph computes what symbolic_trace's does in eval mode without grad, the way
    verify and inference run the teacher: a torch.nn leaf may take another path there (nn.
    TransformerEncoder's nested-tensor fast path zeroes padded positions; export traced the general
    path). Run on clones of the state, so that a forward writing a buffer writes no teacher's."""
    from torch.nn.utils.stateless import _reparametrize_module

    outs = []
    for g in (gm, exported):
        flags = {name: m.training for name, m in g.named_modules()}
        try:
            _set_training(g, False)
            with torch.no_grad(), _reparametrize_module(g, {k: v.clone() for k, v in _named_tensors(g)}):
                out = call(g, inputs)
            outs.append([t for t in torch.utils._pytree.tree_leaves(out)
                         if isinstance(t, torch.Tensor) and t.is_floating_point()])
        except Exception:  # export's graph refuses what the model runs: keep symbolic_trace's
            return False
        finally:
            for name, m in g.named_modules():
                m.training = flags[name]
    a, b = outs
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return False
    for x, y in zip(a, b):
        # another kernel rounds differently (~eps); another computation differs by far more
        rtol = torch.finfo(x.dtype).eps ** 0.5
        if x.numel() and float((x.double() - y.double()).abs().max()) > rtol * max(float(x.double().abs().max()), 1.0):
            return False
    return True


def _private(model: torch.nn.Module, share_tensors: bool, mode: str) -> torch.nn.Module:
    """The copy that is traced, its flags set to the traced mode."""
    private = _copy(model, share_tensors)
    _set_training(private, mode == "train")
    return private


def _fx(private: torch.nn.Module, model: torch.nn.Module, inputs: Inputs, leaf_modules: Sequence[type],
        concrete_args: dict[str, Any] | None) -> torch.fx.GraphModule:
    gm = _symbolic_trace(private, leaf_modules, concrete_args)
    try:
        return _finish(gm, model, inputs, "fx")
    except N2NError as exc:
        missing = _none_defaults(model, inputs)
        if exc.op != "forward" or not missing:
            raise
        raise TraceFailure(  # under frontend='auto', export then gets its turn
            f"forward argument(s) {missing} default to None, but symbolic_trace traces every argument as a "
            f"tensor, so branches such as `if {missing[0]} is not None:` are traced as taken and the graph "
            f"fails on the default", op="symbolic_trace",
            fix="use frontend='export' (it specialises the default None), or pass the argument in "
                "example_inputs") from exc


def _none_defaults(model: torch.nn.Module, inputs: Inputs) -> list[str]:
    """forward arguments the example inputs leave out that default to None (an optional mask)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    if isinstance(inputs, dict):
        return [p.name for p in params if p.name not in inputs and p.default is None
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [p.name for p in params[len(inputs):]
            if p.default is None and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _finish(gm: torch.fx.GraphModule, model: torch.nn.Module, inputs: Inputs, used: str) -> torch.fx.GraphModule:
    """The traced graph as the student's starting point: front end recorded, the teacher's
    training flags, state_dict keys as the teacher's, shapes on every node."""
    gm.meta["n2n_frontend"] = used
    _restore_flags(gm, model)
    _nonpersistent_extras(gm, model)
    if used != "export" or not shapes_from_export(gm):
        propagate_shapes(gm, inputs)
    return gm


def shapes_from_export(gm: torch.fx.GraphModule) -> bool:
    """meta['tensor_meta'] from the values torch.export recorded on every node (meta['val'], fake
    tensors), as ShapeProp would compute them, without running the graph again. False, and nothing
    written, when a node has no record or a size is symbolic (dynamic shapes): ShapeProp runs then."""
    from torch.fx.node import map_aggregate
    from torch.fx.passes.shape_prop import _extract_tensor_metadata

    metas: dict[torch.fx.Node, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        if "val" not in node.meta:
            if node.op == "call_module" or (node.op == "get_attr" and isinstance(getattr(gm, node.target, None),
                                                                               torch.nn.Module)):
                continue  # export's own input guard and higher-order ops' bodies compute no value
            return False
        tensors = [v for v in torch.utils._pytree.tree_leaves(node.meta["val"]) if isinstance(v, torch.Tensor)]
        if any(not isinstance(d, int) for t in tensors for d in t.shape):
            return False
        if tensors:  # requires_grad as ShapeProp sees it (it runs under no_grad)
            metas[node] = map_aggregate(node.meta["val"], lambda v: _extract_tensor_metadata(v)._replace(
                requires_grad=False) if isinstance(v, torch.Tensor) else v)
    for node, meta in metas.items():
        node.meta["tensor_meta"] = meta
    out = gm.graph.output_node()
    leaves = [v for v in torch.utils._pytree.tree_leaves(out.args[0]) if isinstance(v, torch.fx.Node)]
    if leaves and all(v in metas for v in leaves):  # the output's, as ShapeProp records it
        out.meta["tensor_meta"] = map_aggregate(out.args[0], lambda v: metas[v] if isinstance(v, torch.fx.Node) else v)
    return True


def _symbolic_trace(model: torch.nn.Module, leaf_modules: Sequence[type],
                    concrete_args: dict[str, Any] | None) -> torch.fx.GraphModule:
    try:
        tracer = _Tracer(leaf_modules)
        buffers = dict(model.named_buffers())
        graph = tracer.trace(model, concrete_args=concrete_args)
        gm = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
        _restore_written_buffers(gm, buffers)
        return gm
    except N2NError:
        raise
    except Exception as exc:  # symbolic tracing raises many types (TraceError, TypeError, ...)
        where = _offending_line(exc)
        raise TraceFailure(
            f"torch.fx.symbolic_trace failed on {type(model).__name__}: {exc}."
            + (f" Offending line: {where}." if where else ""),
            node=None, op="symbolic_trace",
            fix=("in-place item assignment (h[:, 0] = 0) is not traceable by symbolic_trace: use "
                 "frontend='export', or write it out of place (torch.where, masked_fill)"
                 if "item assignment" in str(exc) else
                 "data-dependent Python control flow cannot be traced: use frontend='export', or "
                 "leaf_modules=[TheModuleClass] to keep that module opaque (its spaces are then frozen); "
                 "n2n_fx.trace(..., concrete_args={...}) can also fix a branch")) from exc


def _restore_written_buffers(gm: torch.fx.GraphModule, buffers: dict[str, torch.Tensor]) -> None:
    """A forward that assigns a buffer (`self.seen += 1`) leaves an fx Proxy in its place; the
    graph reads the buffer as it was (and a deep copy of a Proxy would add nodes to the graph)."""
    for name, m in gm.named_modules():
        for attr, value in list(vars(m).items()):
            qual = f"{name}.{attr}".lstrip(".")
            if isinstance(value, torch.fx.Proxy) and qual in buffers:
                delattr(m, attr)
                m.register_buffer(attr, buffers[qual])


def _dynamic(inputs: Inputs, dynamic_shapes: Any) -> Any:
    """torch.export's dynamic_shapes for `inputs`: "auto" is Dim.AUTO on every dim of every tensor
    (keyed like the inputs: by position, or by name for keyword inputs)."""
    if isinstance(dynamic_shapes, str):
        if dynamic_shapes != "auto":
            raise N2NError(f"dynamic_shapes must be None, 'auto' or torch.export's dynamic_shapes, got "
                           f"{dynamic_shapes!r}", op="torch.export",
                           fix="pass dynamic_shapes='auto', or e.g. ({0: Dim.AUTO, 1: Dim.AUTO},) for one input")

        def auto(x: Any) -> Any:
            return {d: torch.export.Dim.AUTO for d in range(x.ndim)} if isinstance(x, torch.Tensor) else None

        return map_inputs(inputs, auto)
    return dynamic_shapes


def _export(model: torch.nn.Module, inputs: Inputs, dynamic_shapes: Any = None) -> torch.fx.GraphModule:
    """torch.export, unlifted: parameters and buffers are get_attr nodes again, as in an fx trace.

    `model` is the private copy: a Hugging Face model's KV cache (an object torch.export cannot
    return) is switched off on it, so the graph computes the outputs proper (logits, hidden states).
    Submodules may hold configs of their own (a T5's decoder stack holds a copy that keeps
    use_cache), so every module's is switched off."""
    for m in model.modules():
        config = getattr(m, "config", None)
        if getattr(config, "use_cache", False):
            config.use_cache = False
    try:
        args, kwargs = ((), inputs) if isinstance(inputs, dict) else (inputs, None)
        exported = torch.export.export(model, args, kwargs, dynamic_shapes=_dynamic(inputs, dynamic_shapes))
    except N2NError:
        raise
    except Exception as exc:  # export raises many types (UserError, GuardOnDataDependentSymNode, ...)
        raise TraceFailure(f"torch.export failed on {type(model).__name__}: {str(exc).splitlines()[0]}"
                           + (" (with dynamic_shapes: a dim marked dynamic may be one the model fixes, or one "
                              "of size 1 in the example, which export specialises)" if dynamic_shapes is not None
                              else ""),
                           node=None, op="torch.export",
                           fix="make the forward exportable (torch.export's error names the line), or use "
                               "frontend='fx' with concrete_args") from exc
    return exported.module()


def propagate_shapes(gm: torch.fx.GraphModule, inputs: Inputs) -> None:
    """Put meta['tensor_meta'] on every node, in eval mode, restoring training flags afterwards.
    Keyword `inputs` (a dict) are bound to the placeholders by name.

    Shapes are computed on the meta device (no arithmetic: a ResNet-50 forward costs more than
    the whole widening); a model with an op that has no meta kernel falls back to a real run.
    """
    flags = {name: m.training for name, m in gm.named_modules()}
    inputs = positional(gm, inputs)  # a dict that does not fit raises its own N2NError
    try:
        _set_training(gm, False)
        with torch.no_grad():
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints the traceback it raises
                    _meta_shape_prop(gm, inputs)
            except Exception:  # no meta kernel, data-dependent shapes, plain tensor attributes...
                # a real run on clones: a forward that writes into a buffer (a counter, a cache)
                # must not write into the teacher's, which the graph may share
                with contextlib.redirect_stderr(io.StringIO()):
                    _shape_prop(gm, inputs, {k: v.clone() for k, v in _named_tensors(gm)})
    except Exception as exc:
        cause = exc
        while cause.__cause__ is not None:  # ShapeProp wraps the op's error in its own, pages long
            cause = cause.__cause__
        text = (str(cause).strip().splitlines() or [""])[0]
        raise N2NError(f"the model does not run on the example inputs: {type(cause).__name__}: {text}", op="forward",
                       fix="pass example_inputs with the shapes and dtypes the model expects") from exc
    finally:
        for name, m in gm.named_modules():
            m.training = flags[name]


def _meta_shape_prop(gm: torch.fx.GraphModule, inputs: tuple) -> None:
    state = {k: torch.empty_like(v, device="meta") for k, v in _named_tensors(gm)}
    _shape_prop(gm, tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs), state)


def _named_tensors(gm: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*gm.named_parameters(), *gm.named_buffers()]


def _shape_prop(gm: torch.fx.GraphModule, inputs: tuple, state: dict[str, torch.Tensor]) -> None:
    """ShapeProp with `state` standing in for the module's parameters and buffers."""
    from torch.nn.utils.stateless import _reparametrize_module

    with _reparametrize_module(gm, state):
        ShapeProp(gm).propagate(*inputs)

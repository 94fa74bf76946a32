"""Grow a checkpoint bigger than memory: plan on the meta device, stream the tensors one at a time.

The model is built and traced on the meta device (no storage: the plan costs memory in proportion
to the graph, not the weights). Each source tensor is then read lazily from its safetensors shard,
remapped by the very maps `widen` uses (`wider.remap_tensor`), and written straight into its place
in a student shard whose header was laid out beforehand from the planned shapes, so peak memory is
a few tensors whatever the model's size. Reads, remaps and writes overlap: a reader thread and a
writer thread hand tensors to and from the remap through bounded queues, and the first failure of
any of the three is raised in the caller. The student is built in `DST.partial/`: each shard is
written as `*.tmp` and renamed when complete, and the directory is renamed to DST only when the
index and config are in; a rerun with the same arguments keeps the complete shards and resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import shutil
import struct
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.fx

from .errors import N2NError
from .frontend import trace
from .inference import Analysis, infer
from .planning import Plan
from .wider import TORCH, TorchArrays, remap_tensor

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# safetensors dtype codes (the format's header spells them this way)
DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}
FROM_CODE = {v: k for k, v in DTYPES.items()}
WIDTH_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf"}


class CheckpointError(N2NError):
    """A checkpoint directory that cannot be read or grown (missing files, unknown family)."""

    code = "checkpoint"


# ---------------------------------------------------------------- reading
@dataclass
class Source:
    """A Hugging Face checkpoint directory: its config and which shard holds each tensor."""

    path: Path
    config: Any
    weight_map: dict[str, str]

    def specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of every tensor, from the shard headers (nothing is loaded)."""
        out = {}
        for file in dict.fromkeys(self.weight_map.values()):
            for name, (shape, dtype, _) in read_header(self.path / file).items():
                out[name] = (shape, dtype)
        return out


def read_header(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype, tuple[int, int]]]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return {k: (tuple(v["shape"]), FROM_CODE[v["dtype"]], tuple(v["data_offsets"])) for k, v in header.items()}


def read_source(src: str | os.PathLike) -> Source:
    path = Path(src)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json", op="grow_checkpoint",
                              fix="pass a directory written by save_pretrained (config.json + safetensors shards)")
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    if (path / INDEX).is_file():
        weight_map = json.loads((path / INDEX).read_text())["weight_map"]
    elif (path / SINGLE).is_file():
        weight_map = {k: SINGLE for k in read_header(path / SINGLE)}
    else:
        raise CheckpointError(f"{path} has no {INDEX} or {SINGLE}", op="grow_checkpoint",
                              fix="save the model with safe_serialization (the default of save_pretrained)")
    return Source(path, config, weight_map)


def model_class(config: Any) -> type:
    import transformers

    names = getattr(config, "architectures", None) or []
    cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None)
    if cls is None:
        raise CheckpointError(f"config.json names no transformers class ({names})", op="grow_checkpoint",
                              fix="save the checkpoint with a transformers model (its config lists architectures)")
    return cls


# ---------------------------------------------------------------- planning on the meta device
def scaled_config(config: Any, factor: float) -> dict[str, int]:
    """The config changes `factor` means for a Hugging Face family: every width field scaled, the
    head size kept (heads grow in number)."""
    alias = getattr(config, "attribute_map", {}) or {}
    changes: dict[str, int] = {}
    for key in WIDTH_FIELDS:
        value = getattr(config, alias.get(key, key), None)
        if type(value) is int and value > 0:
            changes[key] = max(value, math.floor(value * factor + 0.5))
    kv = getattr(config, alias.get("num_key_value_heads", "num_key_value_heads"), None)
    if "num_key_value_heads" in changes and "num_attention_heads" in changes and kv:
        # heads grow by whole kv groups: each kv head keeps its number of query heads
        group = getattr(config, alias.get("num_attention_heads", "num_attention_heads")) // kv
        changes["num_attention_heads"] = changes["num_key_value_heads"] * group
    heads = getattr(config, alias.get("num_attention_heads", "num_attention_heads"), None)
    hidden = getattr(config, alias.get("hidden_size", "hidden_size"), None)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads and hidden else None)
    if head_dim and hasattr(config, "head_dim"):
        changes["head_dim"] = head_dim
    return changes


class _ShapeArrays(TorchArrays):
    """remap_tensor on meta tensors: the gathers give the student's shapes, scales change nothing."""

    @staticmethod
    def take(x: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
        return x.index_select(axis, index.to(x.device))

    @staticmethod
    def scale(x: torch.Tensor, axis: int, factor: torch.Tensor, fresh: bool) -> torch.Tensor:
        return x

    @staticmethod
    def fill(x: torch.Tensor, axis: int, index: torch.Tensor, n: int, new: Any, power: int, ratio: Any) -> torch.Tensor:
        return x.index_select(axis, index.to(x.device))


@dataclass
class StreamPlan:
    """What every student tensor is: from which source tensor, through which maps, zeroed or not."""

    plan: Plan | None
    analysis: Analysis
    config: Any  # the student's config
    entries: list[tuple[str, str, bool]]  # (student name, source name, zero it)
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]  # student name -> (shape, dtype)

    @cached_property
    def _maps(self) -> tuple[dict[str, str], dict[str, list[int]], dict[str, Any]]:
        an = self.analysis
        alias_of = {a: main for main, names in an.aliases.items() for a in names}
        return alias_of, an.axes_by_param(), {g.param: g for g in an.grouped}

    def student_tensor(self, source_name: str, t: torch.Tensor) -> torch.Tensor:
        """The student's tensor computed from the source's (the pass's own remap_tensor; a meta
        tensor gives the student's shape)."""
        alias_of, axes, grouped = self._maps
        main = alias_of.get(source_name, source_name)
        if self.plan is None or not axes.get(main):
            return t
        arrays = _ShapeArrays() if t.is_meta else TORCH
        return remap_tensor(t, main, axes[main], self.plan, arrays, grouped.get(main))


def plan_stream(source: Source, changes: dict[str, Any], *, seed: int = 0, symmetry: str = "none",
                layer_map: Any = "interleave", example_inputs: Any = None, cls: type | None = None) -> StreamPlan:
    """Trace teacher and target on the meta device and lay out every student tensor (`cls`: the
    model class, by default the one config.architectures names)."""
    from .growth import find_stacks, head_growth, new_blocks, plan_target, target_name, target_qk_scales
    from .hf import target_config

    cls = cls or model_class(source.config)
    cfg = target_config(source.config, changes)
    specs = source.specs()
    dtype = next((d for _, d in specs.values() if d.is_floating_point), torch.float32)
    with torch.device("meta"):
        teacher = cls(source.config).to(dtype).eval()
        target = cls(cfg).to(dtype).eval()
    if example_inputs is None:
        vocab = getattr(source.config, "vocab_size", 8) or 8
        example_inputs = (torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(seed)),)
    stacks = find_stacks(teacher, target, layer_map)
    gm = trace(teacher, example_inputs, share_tensors=True)
    an = infer(gm, heads=head_growth(teacher, target, stacks))
    t_state, g_state = teacher.state_dict(), target.state_dict()
    name_of = {n: target_name(n, stacks) for n in t_state}
    plan = plan_target(an, {n: tuple(g_state[tn].shape) for n, tn in name_of.items() if tn in g_state},
                       seed=seed, symmetry=symmetry, qk_scales=target_qk_scales(an, target, example_inputs))
    widened = any(p.new_width != p.width for p in plan.spaces)
    stream = StreamPlan(plan if widened else None, an, cfg, [], {})
    missing = [k for k in source.weight_map if k not in t_state]
    wrong = [f"{k}: stored {specs[k][0]}, config {tuple(t_state[k].shape)}" for k in source.weight_map
             if k in t_state and tuple(t_state[k].shape) != specs[k][0]]
    if wrong:
        raise CheckpointError(f"the checkpoint's tensors disagree with its config.json: {'; '.join(wrong[:3])}",
                              node=wrong[0].split(":")[0], op="grow_checkpoint",
                              fix="repair config.json (or re-save the model with save_pretrained)")
    if missing:
        raise CheckpointError(f"the checkpoint holds {missing[:3]}, which {cls.__name__}(config) does not have",
                              node=missing[0], op="grow_checkpoint", fix="the checkpoint and its config.json disagree")
    params = {n for n, _ in teacher.named_parameters(remove_duplicate=False)}
    copies: dict[str, list[tuple[str, tuple[str, ...]]]] = {}  # source block prefix -> [(new block prefix, zeros)]
    for block in new_blocks(an.gm, stacks, params):
        copies.setdefault(block.source + ".", []).append((block.path + ".", block.zeros))
    for name in source.weight_map:  # the source's keys: a tied head saved once stays saved once
        shape, dt = specs[name]
        new = stream.student_tensor(name, torch.empty(shape, dtype=dt, device="meta"))
        out = name_of.get(name, name)
        stream.entries.append((out, name, False))
        stream.shapes[out] = (tuple(new.shape), dt)
        for prefix, blocks in copies.items():
            if name.startswith(prefix):
                for dst_prefix, zeros in blocks:
                    copy_name = dst_prefix + name[len(prefix):]
                    stream.entries.append((copy_name, name, name in zeros))
                    stream.shapes[copy_name] = (tuple(new.shape), dt)
    wrong = [n for n, (shape, _) in stream.shapes.items() if n in g_state and tuple(g_state[n].shape) != shape]
    if wrong:
        raise CheckpointError(f"{len(wrong)} tensors do not reach the target's shape ({wrong[:3]})", node=wrong[0],
                              op="grow_checkpoint", fix="`n2n-fx explain` shows which spaces are frozen and why")
    return stream


# ---------------------------------------------------------------- writing
def parse_size(size: int | str) -> int:
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    text = str(size).strip().upper()
    try:
        for unit, scale in sorted(units.items(), key=lambda kv: -len(kv[0])):
            if text.endswith(unit):
                value = int(float(text[: -len(unit)]) * scale)
                break
        else:
            value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise CheckpointError(f"max_shard_size {size!r} is not a size", op="grow_checkpoint",
                              fix="e.g. max_shard_size='2GB', '500MB' or a byte count")
    return value


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty(0, dtype=dtype).element_size()


def shard_layout(entries: list[tuple[str, str, bool]], shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 max_shard_size: int) -> list[list[str]]:
    """Student tensors in order, cut into shards of at most max_shard_size bytes (a bigger
    tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, _, _ in entries:
        size = _nbytes(*shapes[name])
        if shards[-1] and used + size > max_shard_size:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def _header(names: list[str], shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        shape, dtype = shapes[name]
        size = _nbytes(shape, dtype)
        header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data to 8 bytes
    return struct.pack("<Q", len(raw)) + raw


def _write_bytes(f: Any, t: torch.Tensor) -> None:
    flat = t.detach().contiguous().reshape(-1)
    if flat.numel():
        f.write(flat.view(torch.uint8).numpy())  # the tensor's own bytes, not a copy of them


class _Progress:
    """tqdm over bytes when it is installed, else a line every few seconds."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled, self.t0, self.last = total, 0, enabled, time.time(), 0.0
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, unit="B", unit_scale=True, desc="grow-checkpoint")
            except ImportError:
                pass

    def update(self, n: int, tensors: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(tensors=tensors, refresh=False)
        elif self.enabled and time.time() - self.last > 5:
            self.last = time.time()
            rate = self.done / max(self.last - self.t0, 1e-9)
            print(f"grow-checkpoint: {tensors} tensors, {self.done / 1e9:.2f} of {self.total / 1e9:.2f} GB, "
                  f"ETA {(self.total - self.done) / max(rate, 1):.0f} s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fingerprint(source: Source, args: dict[str, Any]) -> str:
    """What a partial student was made from: the source's index and sizes, and the arguments."""
    files = sorted(set(source.weight_map.values()))
    text = json.dumps({"weight_map": source.weight_map, "args": args,
                       # a re-saved source of the same shapes has new mtimes: its partial student is stale
                       "files": {f: ((source.path / f).stat().st_size, (source.path / f).stat().st_mtime_ns)
                                 for f in files}},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def grow_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, factor: float | None = None,
                    seed: int = 0, symmetry: str = "none", layer_map: Any = "interleave",
                    max_shard_size: int | str = "2GB", progress: bool = True, overwrite: bool = False,
                    example_inputs: Any = None, **config_changes: Any) -> Path:
    """Grow the Hugging Face checkpoint in `src` into `dst` (loadable with from_pretrained),
    reading and writing one tensor at a time.

    Give `factor` (every width field of the config scaled, head size kept) or config changes
    (`hidden_size=960, num_hidden_layers=32`, ...; new layers start as the identity, as in
    `n2n_fx.grow`). The maps are the ones `n2n_fx.hf.grow` draws for the same seed. Peak memory is a
    few tensors; the output appears at `dst` only when complete, and a rerun resumes."""
    source = read_source(src)
    if factor is not None and config_changes:
        raise CheckpointError("pass factor or config changes, not both", op="grow_checkpoint",
                              fix="grow_checkpoint(src, dst, factor=2.0) or grow_checkpoint(src, dst, hidden_size=...)")
    changes = scaled_config(source.config, factor) if factor is not None else dict(config_changes)
    if not changes:
        raise CheckpointError("nothing to grow: give factor= or config changes", op="grow_checkpoint",
                              fix="e.g. factor=2.0, or hidden_size=..., num_hidden_layers=...")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                               or not math.isfinite(factor) or factor <= 1):
        raise CheckpointError(f"factor must be a number > 1, got {factor!r}", op="grow_checkpoint",
                              fix="e.g. factor=2.0 (growing never shrinks; 1 changes nothing)")
    dst = Path(dst)
    src_path, dst_path = Path(src).resolve(), dst.resolve()
    if dst_path == src_path or src_path in dst_path.parents or dst_path in src_path.parents:
        raise CheckpointError(f"{dst} is {src} or inside it (or holds it): the source would be overwritten",
                              op="grow_checkpoint", fix="write the student to a directory of its own")
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst} exists", op="grow_checkpoint", fix="choose a new directory or pass overwrite=True")
    limit = parse_size(max_shard_size)
    _prefetch(source)  # the disk reads the first shards while the plan is traced
    stream = plan_stream(source, changes, seed=seed, symmetry=symmetry, layer_map=layer_map,
                         example_inputs=example_inputs)
    shards = shard_layout(stream.entries, stream.shapes, limit)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))] \
        if len(shards) > 1 else [SINGLE]
    partial = dst.parent / (dst.name + ".partial")
    stamp = _fingerprint(source, {"changes": changes, "seed": seed, "symmetry": symmetry, "layer_map": layer_map,
                                  "max_shard_size": limit})
    manifest = partial / "n2n_manifest.json"
    if partial.exists() and (not manifest.is_file() or json.loads(manifest.read_text()).get("stamp") != stamp):
        shutil.rmtree(partial)  # left by a run with other arguments: start over
    partial.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"stamp": stamp, "shards": dict(zip(names, shards))}))
    by_name = {out: (src_name, zero) for out, src_name, zero in stream.entries}
    todo = [(file, group) for file, group in zip(names, shards) if not (partial / file).is_file()]
    bar = _Progress(sum(_nbytes(*stream.shapes[n]) for _, g in todo for n in g), progress)
    try:
        _stream_shards(source, stream, by_name, todo, partial, bar)
    finally:
        bar.close()
    weight_map = {n: file for file, group in zip(names, shards) for n in group}
    total = sum(_nbytes(*stream.shapes[n]) for n in weight_map)
    if len(names) > 1:
        (partial / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                indent=2))
    stream.config.save_pretrained(partial)
    for extra in source.path.iterdir():  # tokenizer, generation config, ...: the student's too
        weights = extra.suffix in WEIGHT_SUFFIXES or extra.name.endswith(".index.json")
        if extra.is_file() and not weights and extra.name != "config.json":  # never the teacher's weights
            shutil.copy2(extra, partial / extra.name)
    manifest.unlink()
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(partial, dst)
    return dst


# ---------------------------------------------------------------- the pipeline: read, remap, write at once
QUEUE_TENSORS = 2  # tensors waiting between two stages: peak memory stays a few tensors


class _Stopped(Exception):
    """Another stage failed (or the run was interrupted): this one stops where it is."""


class _Channel:
    """A bounded hand-over between two threads; a put or get gives up once `stop` is set, so a
    failure on either side ends the other instead of leaving it waiting forever."""

    def __init__(self, stop: threading.Event, size: int = QUEUE_TENSORS) -> None:
        self.queue: queue.Queue = queue.Queue(size)
        self.stop = stop

    def put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                return self.queue.put(item, timeout=0.05)
            except queue.Full:
                pass
        raise _Stopped

    def get(self) -> Any:
        while not self.stop.is_set():
            try:
                return self.queue.get(timeout=0.05)
            except queue.Empty:
                pass
        raise _Stopped


class _Stage(threading.Thread):
    """A worker whose exception (any, KeyboardInterrupt included) stops the pipeline and is kept to be
    raised, as it was, in the caller's thread."""

    def __init__(self, work: Any, stop: threading.Event, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.work, self.stop, self.error = work, stop, None

    def run(self) -> None:
        try:
            self.work()
        except _Stopped:
            pass
        except BaseException as exc:  # re-raised by _stream_shards in the caller's thread
            self.error = exc
            self.stop.set()


PREFETCH_BYTES = 2 * 10**9  # source bytes the kernel is asked to read ahead during the planning


def _prefetch(source: Source) -> None:
    """Ask the kernel to start reading the first source shards (up to PREFETCH_BYTES) into its page
    cache, asynchronously: a hint that costs no process memory and changes no result."""
    if not hasattr(os, "posix_fadvise"):  # pragma: no cover - not on Linux
        return
    budget = PREFETCH_BYTES
    for file in dict.fromkeys(source.weight_map.values()):
        if budget <= 0:
            break
        try:
            fd = os.open(source.path / file, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                os.posix_fadvise(fd, 0, min(size, budget), os.POSIX_FADV_WILLNEED)
                budget -= size
            finally:
                os.close(fd)
        except OSError:
            return  # only a hint: a missing shard is named by the reader, a filesystem may refuse hints


def _read_order(todo: list[tuple[str, list[str]]], by_name: dict[str, tuple[str, bool]]) -> list[str]:
    """The source tensors the remaining shards need, in order; a run of copies (new blocks) of one
    source tensor reads it once, zeroed copies not at all."""
    order: list[str] = []
    for _, group in todo:
        for name in group:
            src_name, zero = by_name[name]
            if not zero and (not order or order[-1] != src_name):
                order.append(src_name)
    return order


def _stream_shards(source: Source, stream: StreamPlan, by_name: dict[str, tuple[str, bool]],
                   todo: list[tuple[str, list[str]]], partial: Path, bar: _Progress) -> None:
    """Write the shards in `todo`: a reader thread reads the next source tensors while this thread
    remaps the current one and a writer thread writes the previous ones (each bounded by a
    QUEUE_TENSORS queue). A shard is renamed from *.tmp only when all its tensors are in; the first
    failure of any stage stops all three and is raised here."""
    stop = threading.Event()
    reads, writes = _Channel(stop), _Channel(stop)

    def read() -> None:
        readers = _Readers(source)
        for src_name in _read_order(todo, by_name):
            reads.put((src_name, readers.get(src_name)))

    def write() -> None:
        written = 0
        for file, group in todo:
            tmp = partial / (file + ".tmp")
            with open(tmp, "wb") as f:
                f.write(_header(group, stream.shapes))
                for name in group:
                    got, t = writes.get()
                    assert got == name, (got, name)  # one order for both threads
                    _write_bytes(f, t)
                    written += 1
                    bar.update(_nbytes(*stream.shapes[name]), written)
            os.replace(tmp, partial / file)

    stages = [_Stage(read, stop, "grow-checkpoint-read"), _Stage(write, stop, "grow-checkpoint-write")]
    for stage in stages:
        stage.start()
    threads = torch.get_num_threads()
    # the remap's parallel loops leave a core to the reads and writes (their copies run in the kernel):
    # a loop whose thread shares its core with them waits at every barrier; the bits do not change
    torch.set_num_threads(max(1, threads - 1))
    try:
        current: tuple[str, torch.Tensor] | None = None  # (source name, its student tensor)
        for _, group in todo:
            for name in group:
                src_name, zero = by_name[name]
                shape, dtype = stream.shapes[name]
                if zero:
                    writes.put((name, torch.zeros(shape, dtype=dtype)))
                    continue
                if current is None or current[0] != src_name:
                    got, t = reads.get()
                    assert got == src_name, (got, src_name)  # one order for both threads
                    current = (src_name, stream.student_tensor(src_name, t).to(dtype))
                    del t  # the source tensor is not needed once remapped
                if tuple(current[1].shape) != shape:  # pragma: no cover - planned on meta
                    raise CheckpointError(f"{name}: computed {tuple(current[1].shape)}, planned {shape}",
                                          node=name, op="grow_checkpoint", fix="report this: a bug")
                writes.put((name, current[1]))
        current = None
        stages[1].join()  # the writer ends after the last shard's rename, or on a failure
    except _Stopped:
        pass
    finally:
        stop.set()
        for stage in stages:
            stage.join()
        torch.set_num_threads(threads)
    for stage in stages:
        if stage.error is not None:
            raise stage.error
    if missing := [file for file, _ in todo if not (partial / file).is_file()]:  # never a student with holes
        raise CheckpointError(f"the pipeline stopped before {missing[0]} was complete", op="grow_checkpoint",
                              fix="report this (a bug); rerun to resume")


class _Readers:
    """Reads one tensor at a time with plain file reads at the offsets the shard's header gives (no
    memory map: mapped shard pages would stay resident and count towards the process's memory)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.headers: dict[str, tuple[int, dict[str, Any]]] = {}

    def _header(self, file: str) -> tuple[int, dict[str, Any]]:
        if file not in self.headers:
            with open(self.source.path / file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
            self.headers[file] = (8 + n, read_header(self.source.path / file))
        return self.headers[file]

    def get(self, name: str) -> torch.Tensor:
        file = self.source.weight_map[name]
        start, header = self._header(file)
        shape, dtype, (begin, end) = header[name]
        buf = bytearray(end - begin)
        with open(self.source.path / file, "rb") as f:
            f.seek(start + begin)
            f.readinto(buf)
        if not buf:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def close(self) -> None:
        self.headers.clear()


# ---------------------------------------------------------------- checking without loading
class _Lazy:
    """A parameter the graph reads, by name: loaded from disk at each use, dropped after it."""

    def __init__(self, name: str) -> None:
        self.name = name


class _LazyRun(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, fetch: Any, stored: set[str]) -> None:
        super().__init__(gm)
        self.fetch, self.stored = fetch, stored

    def get_attr(self, target: Any, args: Any, kwargs: Any) -> Any:
        if str(target) in self.stored:  # a weight: read when an op needs it
            return _Lazy(str(target))
        return super().get_attr(target, args, kwargs)  # a submodule of a higher-order op, a constant

    def fetch_args_kwargs_from_env(self, n: torch.fx.Node) -> tuple[Any, Any]:
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        load = lambda v: self.fetch(v.name) if isinstance(v, _Lazy) else v  # noqa: E731
        return torch.fx.node.map_aggregate(args, load), torch.fx.node.map_aggregate(kwargs, load)


@dataclass
class StreamReport:
    """The streamed check: the plan (float64 twins) and the student as it runs (native dtype)."""

    ok: bool
    max_rel_err: float
    rtol: float
    native_rel_err: float
    teacher_native_rel_err: float
    native_rtol: float
    dtype: torch.dtype
    rounding_rel_err: float = 0.0  # measured where eps/4 fails (verification.rounding_rtol)

    def __str__(self) -> str:
        verdict = "preserved" if self.ok else "NOT preserved"
        return (f"{verdict} (streamed): max rel err {self.max_rel_err:.3e} in float64 (rtol {self.rtol:.3g}); in "
                f"{str(self.dtype).removeprefix('torch.')}: student {self.native_rel_err:.3e}, teacher "
                f"{self.teacher_native_rel_err:.3e} (rtol {self.native_rtol:.1e})")


class _Streamed:
    """A checkpoint directory as a traced meta graph whose parameters come from disk."""

    def __init__(self, path: str | os.PathLike, inputs: tuple) -> None:
        self.source = read_source(path)
        cls = model_class(self.source.config)
        specs = self.source.specs()
        self.dtype = next((d for _, d in specs.values() if d.is_floating_point), torch.float32)
        with torch.device("meta"):
            model = cls(self.source.config).to(self.dtype).eval()
        self.gm = trace(model, inputs)
        _to_cpu(self.gm)
        self.alias: dict[str, str] = {}
        groups: dict[int, list[str]] = {}
        for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
            groups.setdefault(id(t), []).append(name)
        for names in groups.values():  # a tied head saved once under one of its names
            saved = next((n for n in names if n in self.source.weight_map), None)
            for n in names:
                if saved is not None:
                    self.alias[n] = saved
        self.extras = self._computed_buffers(model)
        self.readers = _Readers(self.source)

    def _computed_buffers(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Buffers outside the checkpoint (rotary frequencies): the owning module built for real."""
        out = {}
        for mod_name, mod in model.named_modules():
            names = [b for b, v in mod._buffers.items() if v is not None and f"{mod_name}.{b}".lstrip(".")
                     not in self.alias]
            if not names:
                continue
            try:
                real = type(mod)(self.source.config)
            except Exception as exc:
                raise CheckpointError(f"{mod_name} ({type(mod).__name__}) holds buffers the checkpoint does not "
                                      f"({names}) and cannot be rebuilt from the config", node=mod_name,
                                      op="verify_checkpoint", fix="load the model instead") from exc
            for b in names:
                out[f"{mod_name}.{b}".lstrip(".")] = getattr(real, b).to(self.dtype)
        return out

    def run(self, inputs: tuple, dtypes: tuple[torch.dtype, ...], perturb: float = 0.0, seed: int = 0) -> list[torch.Tensor]:
        """The model's output in each of `dtypes` (float64 for the comparison): one interpreter per
        dtype, stepped node by node together, so each weight is read from disk once for all of them.
        perturb: every stored weight times (1 + perturb * u) (verification.perturbed), for the rounding measure."""
        from .verification import perturbed, retarget_dtypes

        graphs = []
        for dtype in dtypes:
            gm = self.gm
            if dtype != self.dtype:
                import copy

                gm = copy.deepcopy(self.gm)
                retarget_dtypes(gm, dtype, self.dtype)
            graphs.append(gm)
        step: dict[str, torch.Tensor] = {}  # the weights the current node reads, as stored

        def fetcher(dtype: torch.dtype) -> Any:
            def fetch(name: str) -> torch.Tensor:
                if name not in step:
                    step[name] = self.extras[name] if name in self.extras else \
                        self.readers.get(self.alias.get(name, name))
                t = step[name]
                if perturb and t.is_floating_point() and name not in self.extras:
                    return perturbed(t, perturb, name, seed).to(dtype)
                return t.to(dtype) if t.is_floating_point() else t

            return fetch

        stored = set(self.alias) | set(self.extras)
        runs = [_LazyRun(gm, fetcher(dtype), stored) for gm, dtype in zip(graphs, dtypes)]
        with torch.no_grad():
            outs = _lockstep(runs, inputs, step)
        return [_first_tensor(out).to(torch.float64) for out in outs]


def _lockstep(runs: list[_LazyRun], inputs: tuple, step: dict[str, torch.Tensor]) -> list[Any]:
    """Interpreter.run for copies of one graph at once (retargeting changes arguments, not nodes):
    node i of every copy runs before node i + 1 of any, and `step` (the weights node i read) is
    emptied in between, so a weight is resident for one node."""
    nodes = [list(run.graph.nodes) for run in runs]
    if len({tuple(n.name for n in ns) for ns in nodes}) != 1:  # pragma: no cover - deepcopy keeps nodes
        raise CheckpointError("the retargeted graph's nodes differ from the original's", op="verify_checkpoint",
                              fix="report this: a bug")
    for run in runs:
        run.env = {}
        run.args_iter = iter(run.graph.process_inputs(*inputs))
    outs: list[Any] = [None] * len(runs)
    for at in zip(*nodes):
        step.clear()
        for i, (run, node) in enumerate(zip(runs, at)):
            run.env[node] = run.run_node(node)
            for dead in run.user_to_last_uses.get(node, []):
                del run.env[dead]
            if node.op == "output":
                outs[i] = run.graph.process_outputs(run.env[node])
    step.clear()
    return outs


def _to_cpu(gm: torch.nn.Module) -> None:
    """A graph exported on the meta device pins it (`_assert_tensor_metadata(device=meta)`, factory
    `device=` arguments): make those the CPU, where the streamed run computes."""
    meta = torch.device("meta")

    def fix(v: Any) -> Any:
        return torch.device("cpu") if isinstance(v, torch.device) and v == meta else v

    for m in gm.modules():
        if isinstance(m, torch.fx.GraphModule):
            for node in m.graph.nodes:
                node.args = torch.fx.node.map_aggregate(node.args, fix)
                node.kwargs = torch.fx.node.map_aggregate(node.kwargs, fix)
            m.recompile()


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    if isinstance(out, (list, tuple)):
        return _first_tensor(out[0])
    return _first_tensor(out.logits)


def _filled(teacher: Any, student: Any) -> bool:
    """The normalised stream (hidden_size) grown by a ratio that is not an integer: it was filled
    (an MLP width at any ratio is replicated, not filled)."""
    key = (getattr(teacher, "attribute_map", {}) or {}).get("hidden_size", "hidden_size")
    a, b = getattr(teacher, key, None), getattr(student, key, None)
    return type(a) is int and type(b) is int and a > 0 and b % a != 0


def verify_checkpoint(teacher_dir: str | os.PathLike, student_dir: str | os.PathLike, example_inputs: Any = None, *,
                      rtol: float | None = None, seed: int = 0) -> StreamReport:
    """Does the student checkpoint compute the teacher checkpoint's function? Both run from disk,
    graph node by graph node, each parameter read when an op needs it and dropped after (neither
    model is resident; the two dtypes run together, so each checkpoint is read once): in float64 (the plan; rtol as verify's: 1e-10 for float64
    checkpoints, else max(1e-5, eps/4)) and in the checkpoints' dtype (the student against
    NATIVE_C times the teacher's own rounding error). A 16-bit student over eps/4 is judged, as by
    verify, against twice the error a typical rounding of every weight makes (one more pass over the
    student, perturbed: verification.rounding_rtol). example_inputs: two sequences of eight token
    ids by default."""
    from .verification import native_rtol, plan_rtol, rounding_rtol

    teacher_cfg = read_source(teacher_dir).config
    if example_inputs is None:
        vocab = getattr(teacher_cfg, "vocab_size", 8) or 8
        example_inputs = (torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(seed)),)
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    vocab = getattr(teacher_cfg, "vocab_size", None)
    for x in inputs:
        if isinstance(x, torch.Tensor) and not x.is_floating_point() and isinstance(vocab, int) and x.numel() \
                and (int(x.min()) < 0 or int(x.max()) >= vocab):
            raise CheckpointError(f"token ids in [{int(x.min())}, {int(x.max())}] for a vocabulary of {vocab}",
                                  op="verify_checkpoint", fix=f"draw ids in [0, {vocab})")
    teacher, student = _Streamed(teacher_dir, inputs), _Streamed(student_dir, inputs)
    native = student.dtype
    filled = _filled(teacher.source.config, student.source.config)
    measure = rtol is None and native.itemsize == 2 and not filled
    if rtol is None:
        rtol = plan_rtol(native, filled=filled)
    dtypes = tuple(dict.fromkeys((torch.float64, native)))  # each checkpoint is read once for both
    t_outs, s_outs = teacher.run(inputs, dtypes), student.run(inputs, dtypes)
    ref, t_native, s_plan, s_native = t_outs[0], t_outs[-1], s_outs[0], s_outs[-1]
    scale = ref.abs().max().clamp_min(1e-300)
    plan_err, s_err, t_err = (float((out - ref).abs().max() / scale) for out in (s_plan, s_native, t_native))
    tol = native_rtol(native, t_err) if native != torch.float64 else rtol
    rounding = 0.0
    if measure and plan_err > rtol:  # as verify: a deep 16-bit student is judged against its own roundings
        (again,) = student.run(inputs, (torch.float64,), perturb=torch.finfo(native).eps / 4, seed=seed)
        rounding = float((again - s_plan).abs().max() / scale)
        rtol = rounding_rtol(rtol, rounding)
    return StreamReport(plan_err <= rtol and s_err <= tol, plan_err, rtol, s_err, t_err, tol, native, rounding)


__all__ = ["CheckpointError", "StreamPlan", "StreamReport", "grow_checkpoint", "plan_stream", "read_source",
           "scaled_config", "verify_checkpoint"]


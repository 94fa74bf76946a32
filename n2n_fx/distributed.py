"""Grow a torch.distributed.checkpoint (DCP) checkpoint across ranks, each rank one row shard.

Every rank of the default process group calls `grow_distributed(src, dst, config, ...)`. The plan is
made on the meta device on each rank (the same seed gives the same maps everywhere). Tensors are
sharded along dim 0 as DTensor's `Shard(0)` does (torch.chunk sizes), the layout FSDP2 uses:

1. each rank loads its own row shard of every source tensor (`dcp.load` into DTensors);
2. student row j of a tensor whose dim 0 is widened copies source row g(j): each rank asks its
   peers for the source rows its student rows copy and receives them point to point;
3. it computes its student rows with the pass's own `remap_tensor` (a row-subset view of axis 0,
   the other axes whole) and `dcp.save`s them as the local shard of the student DTensors.

Per rank, memory is its shards (source and student, 1/N each) plus the rows it receives; reads are
each source byte once across the ranks. The result loads with `dcp.load` into the student's
sharded model (`Shard(0)` DTensors, any world size DCP can reshard to). On GPUs, the same code runs
under NCCL with the mesh on CUDA; FSDP2 (`fully_shard`) state dicts are `Shard(0)` DTensors, so
the checkpoints it saves are this function's input and output as they are.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.distributed as dist

from .checkpoint import CheckpointError, StreamPlan, plan_stream, scaled_config
from .indexmaps import fill_factor
from .wider import TorchArrays, _scale_along


class _DcpSource:
    """What plan_stream needs of a source: its config and the shape and dtype of each tensor."""

    def __init__(self, path: str | os.PathLike, config: Any) -> None:
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.config = config
        meta = FileSystemReader(str(path)).read_metadata().state_dict_metadata
        self._specs = {k: (tuple(v.size), v.properties.dtype) for k, v in meta.items()
                       if isinstance(v, TensorStorageMetadata)}
        self.weight_map = dict.fromkeys(self._specs, "dcp")

    def specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return self._specs


def row_range(rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rows of `rank` under Shard(0): torch.chunk's split (ceil-sized chunks, the last ones short
    or empty)."""
    size = -(-rows // world)
    return min(rank * size, rows), min((rank + 1) * size, rows)


class _RowArrays(TorchArrays):
    """remap_tensor on rows R of a tensor (sorted source rows), producing student rows [a, b):
    axis 0 is gathered from the subset, its scales are read at the rows the subset holds."""

    def __init__(self, rows: torch.Tensor, a: int, b: int) -> None:
        self.rows, self.a, self.b, self.taken = rows, a, b, False

    def take(self, x: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
        if axis != 0:
            return x.index_select(axis, index)
        self.taken = True
        return x.index_select(0, torch.searchsorted(self.rows, index[self.a:self.b]))

    def scale(self, x: torch.Tensor, axis: int, factor: torch.Tensor, fresh: bool) -> torch.Tensor:
        if axis == 0:
            factor = factor[self.a:self.b] if self.taken else factor[self.rows]
        return _scale_along(x, axis, factor, inplace=fresh)

    def fill(self, x: torch.Tensor, axis: int, index: torch.Tensor, n: int, new: Any, power: int,
             ratio: Any) -> torch.Tensor:
        if axis != 0:
            return TorchArrays.fill(x, axis, index, n, new, power, ratio)
        from .fill import NewRows

        if new is NewRows.MEAN:  # the mean of every old row: not in one rank's rows
            raise CheckpointError("a mean-filled (LayerNorm-bound) space sharded along its rows", op="grow_distributed",
                                  fix="grow this checkpoint in one process with grow_checkpoint")
        self.taken = True
        y = x.index_select(0, torch.searchsorted(self.rows, index[self.a:self.b])).double()
        if new is NewRows.ZERO:
            y[max(n - self.a, 0):] = 0
        return (y * float(fill_factor(ratio, power, lambda r: math.sqrt(float(r))))).to(x.dtype)

    @staticmethod
    def per_old_unit(n: int, index: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        # the old width is every unit the map covers (g(j) = j for the old units), not the subset's
        width = int(index.max()) + 1 if index.numel() else n
        return torch.ones(width, dtype=torch.float64).index_copy_(0, index, scale)


def _source_rows(stream: StreamPlan, name: str, a: int, b: int) -> torch.Tensor:
    """The source rows that student rows [a, b) of `name`'s tensor copy (sorted, unique)."""
    an = stream.analysis
    alias_of, _, _ = stream._maps
    main = alias_of.get(name, name)
    if stream.plan is not None and (main, 0) in an.param_layouts:
        index = stream.plan.layout_index(an.param_layouts[(main, 0)])
        if not torch.equal(index, torch.arange(index.numel())):
            return torch.unique(index[a:b])
    return torch.arange(a, b)


def _exchange(local: torch.Tensor, own: tuple[int, int], need: torch.Tensor, rank: int, world: int,
              src_rows: int) -> torch.Tensor:
    """Rows `need` of the source tensor, gathered from the ranks holding them (point to point)."""
    wants: list[Any] = [None] * world
    dist.all_gather_object(wants, need.tolist())
    ops, received = [], {}
    for peer in range(world):
        if peer == rank:
            continue
        lo, hi = row_range(src_rows, rank, world)
        give = [r - lo for r in wants[peer] if lo <= r < hi]
        if give:
            ops.append(dist.P2POp(dist.isend, local[give].contiguous(), peer))
        plo, phi = row_range(src_rows, peer, world)
        take = [r for r in need.tolist() if plo <= r < phi]
        if take:
            buf = torch.empty((len(take), *local.shape[1:]), dtype=local.dtype)
            received[peer] = (take, buf)
            ops.append(dist.P2POp(dist.irecv, buf, peer))
    for work in dist.batch_isend_irecv(ops) if ops else []:
        work.wait()
    out = torch.empty((need.numel(), *local.shape[1:]), dtype=local.dtype)
    position = {r: i for i, r in enumerate(need.tolist())}
    lo, hi = own
    mine = [r for r in need.tolist() if lo <= r < hi]
    if mine:
        out[[position[r] for r in mine]] = local[[r - lo for r in mine]]
    for take, buf in received.values():
        out[[position[r] for r in take]] = buf
    return out


def grow_distributed(src: str | os.PathLike, dst: str | os.PathLike, config: Any, *, factor: float | None = None,
                     seed: int = 0, layer_map: Any = "interleave", example_inputs: Any = None,
                     model_class: type | None = None, **config_changes: Any) -> Any:
    """Grow the DCP checkpoint `src` (a Hugging Face model's state_dict, saved sharded or not)
    into `dst` on every rank of the default process group; returns the student's config (rank 0
    also writes it to dst/config.json). `config` is the teacher's config; `model_class` its
    transformers class (default: the one config.architectures names)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    if not dist.is_initialized():
        raise CheckpointError("grow_distributed needs an initialised process group", op="grow_distributed",
                              fix="call torch.distributed.init_process_group (gloo on CPU, nccl on GPUs) first")
    rank, world = dist.get_rank(), dist.get_world_size()
    changes = scaled_config(config, factor) if factor is not None else dict(config_changes)
    source = _DcpSource(src, config)
    stream = plan_stream(source, changes, seed=seed, layer_map=layer_map, example_inputs=example_inputs,
                         cls=model_class)
    mesh = init_device_mesh("cpu", (world,))

    def sharded(shape: tuple[int, ...], dtype: torch.dtype, local: torch.Tensor | None = None) -> Any:
        if not shape:
            return torch.empty((), dtype=dtype) if local is None else local
        a, b = row_range(shape[0], rank, world)
        local = torch.empty((b - a, *shape[1:]), dtype=dtype) if local is None else local
        stride = torch.empty(shape, device="meta").stride()
        return DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=torch.Size(shape), stride=stride)

    state = {k: sharded(*spec) for k, spec in source.specs().items()}
    dcp.load(state, checkpoint_id=str(src))
    out: dict[str, Any] = {}
    for name, src_name, zero in stream.entries:
        shape, dtype = stream.shapes[name]
        s_shape, _ = source.specs()[src_name]
        value = state[src_name]
        if not shape:
            out[name] = value.clone()
            continue
        a, b = row_range(shape[0], rank, world)
        need = _source_rows(stream, src_name, a, b)
        rows = _exchange(value.to_local(), row_range(s_shape[0], rank, world), need, rank, world, s_shape[0])
        local = _remap_rows(stream, src_name, rows, need, a, b)
        out[name] = sharded(shape, dtype, torch.zeros_like(local) if zero else local.to(dtype).contiguous())
    dcp.save(out, checkpoint_id=str(dst))
    if rank == 0:
        stream.config.save_pretrained(dst)
    dist.barrier()
    return stream.config


def _remap_rows(stream: StreamPlan, name: str, rows: torch.Tensor, need: torch.Tensor, a: int, b: int) -> torch.Tensor:
    from .wider import remap_tensor

    alias_of, axes, grouped = stream._maps
    main = alias_of.get(name, name)
    if main in grouped:
        raise CheckpointError(f"{name} is a grouped conv weight: grow it in one process", node=name,
                              op="grow_distributed", fix="use grow_checkpoint")
    if stream.plan is None or not axes.get(main):
        return rows[torch.searchsorted(need, torch.arange(a, b))]
    arrays = _RowArrays(need, a, b)
    new = remap_tensor(rows, main, axes[main], stream.plan, arrays)
    if not arrays.taken:  # axis 0 is not bound: the rows asked were [a, b) themselves
        new = new[torch.searchsorted(need, torch.arange(a, b))]
    return new


__all__ = ["grow_distributed", "row_range"]

"""grow_distributed: a DCP checkpoint of a row-sharded (Shard(0)) Llama grown by 2 ranks on CPU
(gloo); each rank writes only its student shard; the result loads with DCP and equals the
in-memory hf.grow of the same teacher, bit for bit."""

from __future__ import annotations

import logging
import os
import warnings

import pytest
import torch
import torch.multiprocessing as mp

transformers = pytest.importorskip("transformers")

# hidden 64 -> 96 is not a multiple: the RMSNorm-bound stream grows by zero fill (rows too)
CHANGES = dict(hidden_size=96, intermediate_size=150, num_attention_heads=6, num_key_value_heads=3,
               num_hidden_layers=3)


def _teacher(tied: bool):
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=81, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   tie_word_embeddings=tied, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg).eval()


def _rank(rank: int, world: int, root: str, tied: bool) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from n2n_fx.distributed import grow_distributed

    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        teacher = _teacher(tied)
        state = {k: distribute_tensor(v.detach(), mesh, [Shard(0)]) for k, v in teacher.state_dict().items()}
        dcp.save(state, checkpoint_id=f"{root}/src")
        cfg = grow_distributed(f"{root}/src", f"{root}/dst", teacher.config, model_class=type(teacher), **CHANGES)
        with torch.device("meta"):
            shell = transformers.LlamaForCausalLM(cfg)
        loaded = {k: distribute_tensor(torch.empty(v.shape, dtype=v.dtype), mesh, [Shard(0)])
                  for k, v in shell.state_dict().items() if "rotary" not in k}
        dcp.load(loaded, checkpoint_id=f"{root}/dst")
        full = {k: v.full_tensor() for k, v in loaded.items()}
        if rank == 0:
            torch.save(full, f"{root}/grown.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("tied", [True])  # untied: the same plan_stream, tested streamed in test_checkpoint
def test_two_ranks_grow_a_dcp_checkpoint_like_one_process(tied: bool, tmp_path) -> None:
    from n2n_fx.hf import grow

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(_rank, args=(2, str(tmp_path), tied), nprocs=2, join=True, start_method="spawn")
    grown = torch.load(tmp_path / "grown.pt")
    teacher = _teacher(tied)
    inputs = (torch.randint(0, 81, (2, 8), generator=torch.Generator().manual_seed(0)),)
    want = grow(teacher, example_inputs=inputs, rtol=1e-6, **CHANGES).state_dict()
    assert set(grown) <= set(want) and len(grown) >= len(want) - 2  # the rotary buffers are not state
    for k, v in grown.items():
        assert torch.equal(v, want[k]), k

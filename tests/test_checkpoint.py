"""grow_checkpoint: a sharded safetensors checkpoint grown tensor by tensor, planned on the meta
device; the result loads with from_pretrained, equals the in-memory grow, never looks complete
before it is, and resumes."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch

import n2n_fx
from n2n_fx.checkpoint import CheckpointError, grow_checkpoint, read_header, read_source, scaled_config

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")


def _llama(tied: bool, **kw) -> transformers.LlamaForCausalLM:
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    cfg = dict(vocab_size=80, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, tie_word_embeddings=tied, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**cfg, **kw})).eval()


CHANGES = dict(hidden_size=128, intermediate_size=150, num_attention_heads=8, num_key_value_heads=4,
               num_hidden_layers=3)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _interrupt_at_tensor(monkeypatch, n: int):
    """Make grow_checkpoint stop (as Ctrl-C would) while writing its n-th tensor; returns the real writer."""
    import n2n_fx.checkpoint as ck

    calls, real = {"n": 0}, ck._write_bytes

    def failing(f, t):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        real(f, t)

    monkeypatch.setattr(ck, "_write_bytes", failing)
    return real


@pytest.mark.parametrize("tied", [True, False])
def test_streamed_growth_equals_in_memory_growth_and_reloads(tied: bool, tmp_path) -> None:
    teacher = _llama(tied)
    teacher.save_pretrained(tmp_path / "src", max_shard_size="60KB")
    assert len(read_source(tmp_path / "src").weight_map) > 1
    out = grow_checkpoint(tmp_path / "src", tmp_path / "dst", max_shard_size="100KB", progress=False, **CHANGES)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 2 and not (tmp_path / "dst.partial").exists()
    for f in files:  # each shard within the bound unless one tensor is bigger by itself
        tensors = read_header(out / f)
        size = sum(end - begin for _, _, (begin, end) in tensors.values())
        assert size <= 100_000 or len(tensors) == 1, (f, size)
    student = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    assert student.config.num_hidden_layers == 3 and student.config.tie_word_embeddings == tied
    ids = torch.randint(3, 80, (2, 7))
    report = n2n_fx.verify(teacher, student, (ids,), rtol=1e-6)  # HF RMSNorm computes in float32
    assert report.ok and report.native_ok, report
    from n2n_fx.hf import grow

    inputs = (torch.randint(0, 80, (2, 8), generator=torch.Generator().manual_seed(0)),)
    assert _same_state(grow(teacher, example_inputs=inputs, rtol=1e-6, **CHANGES), student)


def test_factor_scales_every_width_field_and_keeps_the_head_size(tmp_path) -> None:
    teacher = _llama(False).to(torch.bfloat16)
    teacher.save_pretrained(tmp_path / "src")
    assert scaled_config(teacher.config, 2.0) == dict(hidden_size=128, intermediate_size=192, num_attention_heads=8,
                                                      num_key_value_heads=4, head_dim=16)
    out = grow_checkpoint(tmp_path / "src", tmp_path / "dst", factor=2.0, progress=False)
    student = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    assert student.model.embed_tokens.weight.dtype == torch.bfloat16
    report = n2n_fx.verify(teacher, student, (torch.randint(3, 80, (1, 6)),))
    assert report.ok and report.native_ok, report


def test_an_interrupted_run_leaves_nothing_that_looks_complete_and_resumes(tmp_path, monkeypatch) -> None:
    import n2n_fx.checkpoint as ck

    _llama(False).save_pretrained(tmp_path / "src")
    real = _interrupt_at_tensor(monkeypatch, 12)
    with pytest.raises(KeyboardInterrupt):
        grow_checkpoint(tmp_path / "src", tmp_path / "dst", max_shard_size="100KB", progress=False, **CHANGES)
    assert not (tmp_path / "dst").exists()
    done = sorted(p.name for p in (tmp_path / "dst.partial").glob("*.safetensors"))
    assert done and any(p.name.endswith(".tmp") for p in (tmp_path / "dst.partial").iterdir())  # the cut shard
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dst.partial").glob("*.safetensors")}
    monkeypatch.setattr(ck, "_write_bytes", real)
    out = grow_checkpoint(tmp_path / "src", tmp_path / "dst", max_shard_size="100KB", progress=False, **CHANGES)
    assert all((out / name).stat().st_mtime_ns == ns for name, ns in stamps.items())  # kept, not rewritten
    fresh = grow_checkpoint(tmp_path / "src", tmp_path / "again", max_shard_size="100KB", progress=False, **CHANGES)
    a = transformers.LlamaForCausalLM.from_pretrained(out)
    b = transformers.LlamaForCausalLM.from_pretrained(fresh)
    assert _same_state(a, b)


def test_bad_requests_are_typed(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="config.json"):
        grow_checkpoint(tmp_path, tmp_path / "dst", factor=2.0)
    _llama(False).save_pretrained(tmp_path / "src")
    with pytest.raises(CheckpointError, match="nothing to grow"):
        grow_checkpoint(tmp_path / "src", tmp_path / "dst")
    with pytest.raises(n2n_fx.N2NError, match="refuses"):
        grow_checkpoint(tmp_path / "src", tmp_path / "dst", hidden_size=90, progress=False)
    (tmp_path / "dst").mkdir()
    with pytest.raises(CheckpointError, match="exists"):
        grow_checkpoint(tmp_path / "src", tmp_path / "dst", factor=2.0)


def test_the_streamed_check_runs_both_checkpoints_from_disk_and_catches_a_wrong_tensor(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from n2n_fx.checkpoint import verify_checkpoint

    _llama(True).to(torch.bfloat16).save_pretrained(tmp_path / "src", max_shard_size="60KB")
    out = grow_checkpoint(tmp_path / "src", tmp_path / "dst", max_shard_size="100KB", progress=False, **CHANGES)
    report = verify_checkpoint(tmp_path / "src", out)
    assert report.ok and report.dtype == torch.bfloat16, report
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.1.mlp.down_proj.weight"  # a teacher block's, not a new block's zeros
    state = load_file(out / index[name])
    state[name] = state[name] * 1.05
    save_file(state, out / index[name], metadata={"format": "pt"})
    broken = verify_checkpoint(tmp_path / "src", out)
    assert not broken.ok and broken.max_rel_err > report.max_rel_err, broken


def test_the_cli_grows_a_checkpoint_and_checks_it(tmp_path, capsys) -> None:
    from n2n_fx.cli import main

    _llama(False).save_pretrained(tmp_path / "src")
    code = main(["grow-checkpoint", str(tmp_path / "src"), str(tmp_path / "dst"), "--set", "hidden_size=128",
                 "--set", "num_attention_heads=8", "--set", "num_key_value_heads=4", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"] and out["verdict"] == "preserved", out
    assert main(["grow-checkpoint", str(tmp_path / "src"), str(tmp_path / "x"), "--set", "hidden=1"]) == 2
    assert main(["grow-checkpoint", str(tmp_path / "src"), str(tmp_path / "dst"), "--factor", "2"]) == 2  # exists


def test_audit_findings_source_safety_stale_resume_stray_weights_and_typed_errors(tmp_path, monkeypatch) -> None:
    import n2n_fx.checkpoint as ck

    teacher = _llama(False)
    teacher.save_pretrained(tmp_path / "src")
    for dst in (tmp_path / "src", tmp_path / "src" / "sub", tmp_path):  # never over or around the source
        with pytest.raises(CheckpointError, match="overwritten"):
            grow_checkpoint(tmp_path / "src", dst, factor=2.0, overwrite=True, progress=False)
    for factor in (1.0, 0.5):
        with pytest.raises(CheckpointError, match="factor"):
            grow_checkpoint(tmp_path / "src", tmp_path / "dst", factor=factor)
    with pytest.raises(CheckpointError, match="max_shard_size"):
        grow_checkpoint(tmp_path / "src", tmp_path / "dst", factor=2.0, max_shard_size="abc", progress=False)
    # heads grow by whole kv groups: 4 query heads over 2 kv heads stay 2 per group at 1.5x
    assert scaled_config(teacher.config, 1.5)["num_attention_heads"] == 2 * scaled_config(
        teacher.config, 1.5)["num_key_value_heads"]
    # a stray weight file beside the checkpoint stays out of the student
    (tmp_path / "src" / "pytorch_model.bin").write_bytes(b"stale")
    out = grow_checkpoint(tmp_path / "src", tmp_path / "dst", factor=2.0, progress=False)
    assert not (out / "pytorch_model.bin").exists() and (out / "generation_config.json").exists()
    # a source re-saved with new values (same shapes) does not resume a stale partial student
    real = _interrupt_at_tensor(monkeypatch, 12)
    with pytest.raises(KeyboardInterrupt):
        grow_checkpoint(tmp_path / "src", tmp_path / "d2", max_shard_size="100KB", progress=False, **CHANGES)
    monkeypatch.setattr(ck, "_write_bytes", real)
    torch.manual_seed(1)
    retrained = transformers.LlamaForCausalLM(teacher.config).eval()
    retrained.save_pretrained(tmp_path / "src")
    out = grow_checkpoint(tmp_path / "src", tmp_path / "d2", max_shard_size="100KB", progress=False, **CHANGES)
    student = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    assert n2n_fx.verify(retrained, student, (torch.randint(3, 80, (2, 6)),), rtol=1e-6).ok
    # a config that disagrees with the stored tensors is named, not an IndexError
    cfg = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 64}))
    with pytest.raises(CheckpointError, match="disagree"):
        grow_checkpoint(tmp_path / "src", tmp_path / "d3", factor=2.0, progress=False)


def _no_pipeline_threads() -> bool:
    import threading

    return not [t for t in threading.enumerate() if t.name.startswith("grow-checkpoint")]


@pytest.mark.parametrize("stage", ["read", "remap", "write"])
def test_a_failing_pipeline_stage_raises_its_own_error_stops_the_others_and_resumes(stage, tmp_path,
                                                                                   monkeypatch) -> None:
    """Reads, remaps and writes run at once (two threads and the caller's): the first failure, in any
    of them, is raised as it was in the caller, no thread is left behind, nothing looks complete, and a
    rerun keeps the complete shards and gives the fresh run's tensors."""
    import errno

    import n2n_fx.checkpoint as ck

    _llama(False).save_pretrained(tmp_path / "src")
    target = {"read": (ck._Readers, "get"), "remap": (ck.StreamPlan, "student_tensor"),
              "write": (ck, "_write_bytes")}[stage]
    real, calls = getattr(*target), {"n": 0}

    def failing(*args):
        if not (stage == "remap" and args[2].is_meta):  # the plan remaps meta tensors too: count real ones
            calls["n"] += 1
            if calls["n"] == 12:
                raise OSError(errno.ENOSPC, f"no space left ({stage})")
        return real(*args)

    monkeypatch.setattr(*target, failing)
    with pytest.raises(OSError, match=f"no space left \\({stage}\\)"):
        grow_checkpoint(tmp_path / "src", tmp_path / "dst", max_shard_size="100KB", progress=False, **CHANGES)
    assert _no_pipeline_threads() and not (tmp_path / "dst").exists()
    partial = tmp_path / "dst.partial"
    assert not (partial / "config.json").exists() and (partial / "n2n_manifest.json").exists()
    done = {p.name: p.stat().st_mtime_ns for p in partial.glob("*.safetensors")}
    assert done, "shards written before the failure are kept"
    monkeypatch.setattr(*target, real)
    out = grow_checkpoint(tmp_path / "src", tmp_path / "dst", max_shard_size="100KB", progress=False, **CHANGES)
    assert all((out / name).stat().st_mtime_ns == ns for name, ns in done.items())
    fresh = grow_checkpoint(tmp_path / "src", tmp_path / "fresh", max_shard_size="100KB", progress=False, **CHANGES)
    assert _same_state(transformers.LlamaForCausalLM.from_pretrained(out),
                       transformers.LlamaForCausalLM.from_pretrained(fresh))


def test_the_reader_runs_at_most_a_few_tensors_ahead_of_the_writer(tmp_path, monkeypatch) -> None:
    """The queues between the stages are bounded: with a slow disk the reader waits instead of
    holding the checkpoint in memory."""
    import time

    import n2n_fx.checkpoint as ck

    _llama(False).save_pretrained(tmp_path / "src")
    read, write, counts = ck._Readers.get, ck._write_bytes, {"read": 0, "written": 0, "ahead": 0}

    def counted_read(self, name):
        t = read(self, name)
        counts["read"] += 1
        counts["ahead"] = max(counts["ahead"], counts["read"] - counts["written"])
        return t

    def slow_write(f, t):
        time.sleep(0.01)
        write(f, t)
        counts["written"] += 1

    monkeypatch.setattr(ck._Readers, "get", counted_read)
    monkeypatch.setattr(ck, "_write_bytes", slow_write)
    out = grow_checkpoint(tmp_path / "src", tmp_path / "dst", factor=2.0, progress=False)
    n = len(read_source(out).weight_map)
    assert counts["read"] == counts["written"] == n > 4 * ck.QUEUE_TENSORS + 6
    # one tensor in each stage's hands and QUEUE_TENSORS in each queue, at most
    assert 1 <= counts["ahead"] <= 2 * ck.QUEUE_TENSORS + 3, counts


def test_the_streamed_check_reads_each_weight_once_for_both_dtypes_and_equals_separate_runs(tmp_path,
                                                                                          monkeypatch) -> None:
    """The float64 and native runs step through the graph together: each stored tensor is read from
    disk once per checkpoint (not once per dtype), and each output is the one a run of its own gives;
    a float64 checkpoint runs once."""
    from collections import Counter

    import n2n_fx.checkpoint as ck

    _llama(False).to(torch.bfloat16).save_pretrained(tmp_path / "src", max_shard_size="60KB")
    out = grow_checkpoint(tmp_path / "src", tmp_path / "dst", max_shard_size="100KB", progress=False, **CHANGES)
    real, reads = ck._Readers.get, Counter()

    def counted(self, name):
        reads[(self.source.path.name, name)] += 1
        return real(self, name)

    monkeypatch.setattr(ck._Readers, "get", counted)
    report = ck.verify_checkpoint(tmp_path / "src", out)
    assert report.ok, report
    for path in (tmp_path / "src", out):  # untied: every stored tensor is used by one node
        names = read_source(path).weight_map
        assert {n: reads[(path.name, n)] for n in names} == dict.fromkeys(names, 1), path
    ids = (torch.randint(0, 80, (2, 5), generator=torch.Generator().manual_seed(3)),)
    streamed = ck._Streamed(out, ids)
    together = streamed.run(ids, (torch.float64, torch.bfloat16))
    alone = [streamed.run(ids, (dtype,))[0] for dtype in (torch.float64, torch.bfloat16)]
    assert all(torch.equal(a, b) for a, b in zip(together, alone))
    assert not torch.equal(together[0], together[1])  # the two dtypes did run apart
    _llama(False).double().save_pretrained(tmp_path / "f64")
    grown = grow_checkpoint(tmp_path / "f64", tmp_path / "f64x2", factor=2.0, progress=False)
    reads.clear()
    report = ck.verify_checkpoint(tmp_path / "f64", grown, rtol=1e-6)  # HF RMSNorm computes in float32
    assert report.ok and report.native_rel_err == report.max_rel_err < 1e-6, report
    assert max(reads.values()) == 1


def test_the_read_ahead_is_a_hint_that_never_fails(tmp_path, monkeypatch) -> None:
    """The first shards are read ahead while the plan is traced: a filesystem that refuses the hint,
    or a missing shard (named later by the reader), is no error there."""
    import os

    import n2n_fx.checkpoint as ck

    _llama(False).save_pretrained(tmp_path / "src", max_shard_size="60KB")
    source = read_source(tmp_path / "src")
    calls = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, at, n, how: calls.append(n), raising=False)
    monkeypatch.setattr(ck, "PREFETCH_BYTES", 100_000)
    ck._prefetch(source)
    sizes = [(tmp_path / "src" / f).stat().st_size for f in dict.fromkeys(source.weight_map.values())]
    want, left = [], 100_000
    for size in sizes:  # shards in order, the last one cut at the budget
        if left > 0:
            want.append(min(size, left))
            left -= size
    assert calls == want and len(want) < len(sizes), (calls, sizes)  # the budget, not every shard

    def refuse(*args):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse, raising=False)
    ck._prefetch(source)
    (tmp_path / "src" / next(iter(source.weight_map.values()))).unlink()
    ck._prefetch(source)


def test_streamed_check_measures_the_rounding_where_eps_over_4_fails(tmp_path, monkeypatch):
    """verify_checkpoint judges a 16-bit student over eps/4 as verify does: against twice the error a
    typical rounding of every weight makes, measured by one more (perturbed) pass over the student.
    The default bound is lowered here so that a small model takes that path."""
    import n2n_fx.verification as V
    from n2n_fx.checkpoint import verify_checkpoint
    from n2n_fx.hf import grow

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                   num_key_value_heads=2, num_hidden_layers=2)
    teacher = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    grown = grow(teacher, hidden_size=64, intermediate_size=80)  # multiples of the norm width: no fill
    teacher.save_pretrained(tmp_path / "t")
    grown.save_pretrained(tmp_path / "g")
    plain = verify_checkpoint(tmp_path / "t", tmp_path / "g")
    assert plain.ok and plain.rounding_rel_err == 0.0, plain  # under eps/4: nothing measured
    monkeypatch.setattr(V, "plan_rtol", lambda native, filled=False, dtype=torch.float64: plain.max_rel_err / 2)
    measured = verify_checkpoint(tmp_path / "t", tmp_path / "g")
    assert measured.rounding_rel_err > 0 and measured.rtol == max(plain.max_rel_err / 2, 2 * measured.rounding_rel_err)
    assert measured.max_rel_err == plain.max_rel_err and measured.ok == (plain.max_rel_err <= measured.rtol), measured

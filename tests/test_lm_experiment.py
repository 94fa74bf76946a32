"""The LM growth study (issue 17): its data split, its arms' starting points, and the smoke run end to end."""

from __future__ import annotations

import csv
import math

import pytest
import torch

import n2n_fx
from n2n_fx.cli import main
from n2n_fx.paper import lm

transformers = pytest.importorskip("transformers")
pytest.importorskip("tqdm")


def _tiny(layers: int = 1) -> tuple[lm.Config, torch.nn.Module]:
    c = lm.Config.smoke(out=None)  # type: ignore[arg-type]
    torch.manual_seed(0)
    return c, transformers.LlamaForCausalLM(lm.Config(**{**vars(c), "layers": layers}).llama()).eval()


def test_split_is_fixed_by_path_disjoint_and_capped():
    files = lm.stdlib_files()
    assert files and all(rel.endswith(".py") and "site-packages" not in rel for rel, _ in files)
    val = [rel for rel, _ in files if lm.is_validation(rel)]
    assert 0.07 < len(val) / len(files) < 0.13  # one file in ten
    a, b = lm.load_corpus(50_000, 5_000), lm.load_corpus(50_000, 5_000)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert len(a.train) == 50_000 and len(a.val) == 5_000 and a.train.dtype == torch.uint8
    # the validation bytes are the validation files' own: no training file's text appears in them
    first_val = next(p for rel, p in sorted(files, key=lambda f: lm._digest(f[0])) if lm.is_validation(rel))
    assert bytes(a.val[:200].tolist()) == first_val.read_bytes()[:200]


def test_batches_are_next_byte_windows_and_deterministic():
    corpus = lm.load_corpus(20_000, 2_000)
    x = corpus.batch(torch.Generator().manual_seed(1), 3, 16)
    assert x.shape == (3, 17) and x.dtype == torch.long and int(x.max()) < 256
    assert torch.equal(x, corpus.batch(torch.Generator().manual_seed(1), 3, 16))
    w = corpus.val_windows(4, 16)
    assert w.shape == (4, 17) and torch.equal(w, corpus.val_windows(4, 16))


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    m = [lm.lr_multiplier(s, 100, 10, 0.1) for s in range(100)]
    assert m[0] == pytest.approx(0.1) and m[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(m[10:], m[11:])) and m[-1] == pytest.approx(0.1)


def test_random_pad_keeps_the_teachers_weights_in_the_leading_units():
    c, teacher = _tiny()
    padded = lm.random_pad(teacher, c.llama(2, 1), seed=0)
    t, s = teacher.model.layers[0].self_attn.q_proj.weight, padded.model.layers[0].self_attn.q_proj.weight
    assert s.shape == (2 * t.shape[0], 2 * t.shape[1]) and torch.equal(s[: t.shape[0], : t.shape[1]], t)
    assert s.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
    ids = torch.randint(0, 256, (2, 8))
    assert not torch.allclose(teacher(input_ids=ids).logits, padded(input_ids=ids).logits)


def test_carry_optimizer_keeps_moved_parameters_state_and_starts_new_blocks_empty():
    c, teacher = _tiny(layers=2)
    opt = lm.adamw(teacher.parameters(), c)
    corpus = lm.load_corpus(20_000, 2_000)
    lm.train(teacher, opt, corpus, corpus.val_windows(2, c.seq_len), c, steps=2, seed=0)
    grown = lm._deeper(teacher.eval(), lm.Config(**{**vars(c), "layers": 2}), seed=0)  # 2 -> 4 blocks, interleaved
    carried = lm.carry_optimizer(opt, teacher, grown)
    params = dict(grown.named_parameters())
    moved = teacher.model.layers[1].mlp.down_proj.weight  # teacher block 1 lands at block 2
    st = carried.state[params["model.layers.2.mlp.down_proj.weight"]]
    assert torch.equal(st["exp_avg"], opt.state[moved]["exp_avg"]) and int(st["step"]) == 2
    assert st["exp_avg"].data_ptr() != opt.state[moved]["exp_avg"].data_ptr()
    assert params["model.layers.1.mlp.down_proj.weight"] not in carried.state  # a new block: no history
    assert len(carried.param_groups) == len(params) and all(g["lr"] == opt.param_groups[0]["lr"]
                                                            for g in carried.param_groups)


def test_hf_grow_split_is_exact_and_gives_replicas_different_outgoing_weights():
    from n2n_fx import hf

    c, teacher = _tiny()
    teacher = teacher.double()
    ids = (torch.randint(0, 256, (2, 8)),)
    grown = {sym: hf.grow(teacher, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4,
                          num_hidden_layers=2, example_inputs=ids, symmetry=sym) for sym in ("none", "split")}
    for model in grown.values():
        assert n2n_fx.verify(teacher, model, ids, rtol=1e-6).ok  # Llama's RMSNorm computes in float32
    # MLP replicas share incoming weights (up_proj rows); their outgoing ones (down_proj columns) are
    # equal under 'none' (each divided by the count) and differ under 'split'
    for sym, model in grown.items():
        mlp = model.model.layers[0].mlp
        up, down = mlp.up_proj.weight, mlp.down_proj.weight
        pairs = [(i, j) for i in range(len(up)) for j in range(i) if torch.equal(up[i], up[j])]
        assert pairs, sym  # 32 -> 64 units: every teacher unit has a replica
        same = [torch.equal(down[:, i], down[:, j]) for i, j in pairs]
        assert all(same) if sym == "none" else not any(same), sym
    with pytest.raises(n2n_fx.N2NError):
        hf.grow(teacher, hidden_size=32, example_inputs=ids, symmetry="noise")  # not exact: grow refuses it


def test_cuda_without_a_gpu_is_a_usage_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert main(["experiment", "lm", "--device", "cuda", "--quick", "--out", str(tmp_path / "x")]) == 2


def test_smoke_run_end_to_end(tmp_path):
    """`n2n-fx experiment lm --quick`: every arm and seed trains, grown arms start at the teacher,
    scratch starts at the uniform 8 bits/byte, and the files say so."""
    assert main(["experiment", "lm", "--quick", "--out", str(tmp_path)]) == 0
    c = lm.Config.smoke(tmp_path)
    for name in ("lm_curves.csv", "lm_summary.csv", "lm_summary.md", "lm_bpb.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = list(csv.DictReader((tmp_path / "lm_curves.csv").open()))
    teacher = [r for r in rows if r["setting"] == "teacher"]
    assert len(teacher) == c.teacher_steps // c.eval_every + 1
    t_bpb, t_flops = float(teacher[-1]["val_bpb"]), float(teacher[-1]["flops_total"])
    evals = c.student_steps // c.eval_every + 1
    for setting, names in lm.ARMS.items():
        for arm in names:
            for seed in range(c.seeds):
                run = [r for r in rows if (r["setting"], r["arm"], r["seed"]) == (setting, arm, str(seed))]
                assert len(run) == evals, (setting, arm, seed)
                start = float(run[0]["val_bpb"])
                assert all(math.isfinite(float(r["val_bpb"])) for r in run)
                if arm == lm.SCRATCH:
                    assert abs(start - 8) < 0.15 and float(run[0]["flops_total"]) == 0
                else:  # charged the teacher's compute
                    assert float(run[0]["flops_total"]) == t_flops and float(run[-1]["flops_total"]) > t_flops
                    if arm == "random pad":
                        assert abs(start - t_bpb) > 1e-3  # not function preserving
                    else:
                        assert abs(start - t_bpb) <= lm.START_TOL, (setting, arm, seed, start, t_bpb)
    summary = list(csv.DictReader((tmp_path / "lm_summary.csv").open()))
    assert len(summary) == sum(len(v) for v in lm.ARMS.values()) and all(s["seeds"] == str(c.seeds) for s in summary)
    assert "FLOPs saved" in (tmp_path / "lm_summary.md").read_text() and "tokens_saved" in summary[0]
    # the report is rebuilt from the CSV alone: the same table again
    assert lm.summarise(lm.runs_from_csv(tmp_path / "lm_curves.csv")) == lm.write_report(c)


def test_gpu_configuration_builds_and_is_bigger():
    cpu, gpu = lm.Config(out=None), lm.Config.gpu(out=None)  # type: ignore[arg-type]
    assert gpu.device == "cuda" and gpu.settings == cpu.settings
    sizes = {}
    for c in (cpu, gpu):
        for mult in lm.SETTINGS.values():
            sizes[c.device, mult] = lm.flops_per_token(lm._meta_llama(c.llama(*mult)), c.seq_len)
    assert all(sizes["cuda", m] > 10 * sizes["cpu", m] for m in lm.SETTINGS.values())

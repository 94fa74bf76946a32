"""Does growth speed up language-model training? (issue 17) A byte-level Llama on the Python
standard library's own source, grown with the tool's operators, against the big model from scratch.

Data: every `*.py` under `sysconfig.get_paths()["stdlib"]` (site-packages excluded), read as raw
bytes (vocabulary 256: bits per byte is the loss in bits). A file is validation when the first 8
bytes of sha256(its path relative to the stdlib) taken as an integer are 0 mod 10, training
otherwise; files are taken in order of that digest until each split's byte cap (the last one
cut), so the split is fixed by the paths alone and a cap keeps a spread of the library. The
bytes depend on the interpreter's version (recorded in the summary). Nothing downloads.

Models: `LlamaForCausalLM` from a config (pre-norm RMSNorm, rotary, SwiGLU, untied head), random
weights. The teacher has `hidden` x `layers`; the students of each setting:
  wider   2x hidden (heads, MLP), same depth: widen with random and with uniform replication,
          symmetry 'split' (exact; replicas get different outgoing weights), the latter also with
          the teacher's AdamW moments handed over (widen_optimizer); widen with symmetry 'none'
          (exact, but a unit's replicas then get equal gradients forever: the student stays the
          teacher's function class); random pad (the teacher's weights in the leading units, new
          ones freshly drawn: not function preserving); scratch
  deeper  2x layers: new identity blocks interleaved (hf.grow), the same with the teacher's
          optimizer state carried over (new blocks start with none), scratch
  both    2x hidden and 2x layers: hf.grow into the bigger config (split), widen (uniform, split)
          with handed-over optimizer then new blocks, scratch
The exact hand-over (widen_optimizer(exact=True)) needs symmetry 'none', under which the student
provably keeps computing the teacher (its step is the widened teacher step): it is not an arm.
Every student trains the same number of tokens with the same schedule (linear warm-up, cosine to
`min_lr_ratio`) and the same data order for a seed. One teacher (seed 0) serves every seed; the
seeds change the student's data order, replication draws and fresh weights.

Compute: training FLOPs per token 6 N + 6 n_layer n_ctx d_attn (Kaplan et al. 2020), N the
parameters without the input embedding (a lookup); every arm that starts from the teacher (random
pad included) is charged the teacher's training FLOPs and tokens; evaluation is not counted.
Compute saved (per seed): 1 - C_arm / C_scratch, where C is the FLOPs at which validation bits per
byte first reaches that seed's from-scratch final value (linear between evaluations).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import math
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import n2n_fx
from n2n_fx import hf
from n2n_fx.growth import find_stacks, source_name, target_name

from .report import pyplot, write_csv

LN2 = math.log(2)
VOCAB = 256
SETTINGS = {"wider": (2, 1), "deeper": (1, 2), "both": (2, 2)}  # (hidden, layers) multipliers
SCRATCH = "scratch"
ARMS = {  # every setting's arms (scratch last); arms() says how each starts
    "wider": ("widen (random, split)", "widen (uniform, split)", "widen (uniform, split) + optimizer",
              "widen (random, no symmetry breaking)", "random pad", SCRATCH),
    "deeper": ("new blocks", "new blocks + optimizer", SCRATCH),
    "both": ("grow (split)", "widen (uniform, split) + new blocks + optimizer", SCRATCH),
}
START_TOL = 1e-4  # bits per byte: a function-preserving start at float32 over the validation windows


# ---------------------------------------------------------------------- data
def _digest(rel: str) -> bytes:
    return hashlib.sha256(rel.encode()).digest()


def is_validation(rel: str) -> bool:
    """The split is the path's: 1 file in 10, by its sha256 (see the module docstring)."""
    return int.from_bytes(_digest(rel)[:8], "big") % 10 == 0


def stdlib_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """(path relative to the stdlib, path) of every `*.py` file, sorted; installed packages excluded."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if not {"site-packages", "dist-packages"} & set(rel.split("/")) and p.is_file():
            out.append((rel, p))
    return out


@dataclass(frozen=True)
class Corpus:
    train: torch.Tensor  # uint8 bytes, files concatenated
    val: torch.Tensor
    train_files: int
    val_files: int

    def batch(self, gen: torch.Generator, batch: int, seq_len: int) -> torch.Tensor:
        """`batch` random windows of seq_len + 1 training bytes (inputs and next-byte targets)."""
        starts = torch.randint(0, len(self.train) - seq_len - 1, (batch,), generator=gen)
        return self.train[starts[:, None] + torch.arange(seq_len + 1)].long()

    def val_windows(self, n: int, seq_len: int) -> torch.Tensor:
        """n fixed windows spread evenly over the validation bytes."""
        n = max(1, min(n, (len(self.val) - 1) // (seq_len + 1)))
        stride = (len(self.val) - seq_len - 1) // n
        return self.val[torch.arange(n)[:, None] * stride + torch.arange(seq_len + 1)].long()


def load_corpus(train_bytes: int, val_bytes: int, root: Path | None = None) -> Corpus:
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    have = {False: 0, True: 0}
    cap = {False: train_bytes, True: val_bytes}
    for rel, path in sorted(stdlib_files(root), key=lambda f: _digest(f[0])):
        val = is_validation(rel)
        if have[val] >= cap[val]:
            if have[not val] >= cap[not val]:
                break
            continue
        data = path.read_bytes()[: cap[val] - have[val]]
        parts[val].append(data)
        have[val] += len(data)

    def tensor(chunks: list[bytes]) -> torch.Tensor:
        return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)

    return Corpus(tensor(parts[False]), tensor(parts[True]), len(parts[False]), len(parts[True]))


# ---------------------------------------------------------------------- configuration
@dataclass
class Config:
    seeds: int = 3
    hidden: int = 64  # the teacher; heads = hidden / head_dim, MLP = mlp_ratio * hidden
    layers: int = 2
    head_dim: int = 16
    mlp_ratio: int = 2
    seq_len: int = 128
    batch: int = 8
    teacher_steps: int = 120  # the teacher costs a fraction of a student's budget (its FLOPs are charged)
    student_steps: int = 160
    lr: float = 2e-3  # AdamW peak, teacher and every student
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    eval_every: int = 20
    val_windows: int = 48
    train_bytes: int = 8_000_000
    val_bytes: int = 400_000
    settings: tuple[str, ...] = tuple(SETTINGS)
    device: str = "cpu"
    threads: int = 1  # torch CPU threads: on 2 cores shared with other jobs one thread ran a step 3-10x
    # faster than two (OpenMP barriers under contention); a machine of its own may raise it
    out: Path = Path("n2n_experiment")

    @classmethod
    def smoke(cls, out: Path, device: str = "cpu") -> Config:
        """Seconds: every arm and code path, tiny sizes (the numbers mean nothing)."""
        return cls(seeds=1, hidden=16, head_dim=8, seq_len=32, batch=4, teacher_steps=8, student_steps=4, warmup=2,
                   eval_every=2, val_windows=4, train_bytes=200_000, val_bytes=20_000, device=device, out=out)

    @classmethod
    def gpu(cls, out: Path, device: str = "cuda") -> Config:
        """A larger study for one GPU: 16x the teacher's parameters, 4x the context, the whole library."""
        return cls(hidden=256, layers=4, head_dim=32, seq_len=512, batch=32, teacher_steps=3000, student_steps=3000,
                   lr=1e-3, warmup=100, eval_every=100, val_windows=256, train_bytes=10**9, val_bytes=4_000_000,
                   device=device, threads=4, out=out)

    def llama(self, hidden_mult: int = 1, layers_mult: int = 1) -> Any:
        import transformers

        hidden, heads = self.hidden * hidden_mult, self.hidden * hidden_mult // self.head_dim
        return transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=self.mlp_ratio * hidden,
                                        num_hidden_layers=self.layers * layers_mult, num_attention_heads=heads,
                                        num_key_value_heads=heads, head_dim=self.head_dim,
                                        max_position_embeddings=self.seq_len, tie_word_embeddings=False,
                                        use_cache=False)


def flops_per_token(model: nn.Module, seq_len: int) -> int:
    """Training FLOPs per token: 6 N + 6 n_layer n_ctx d_attn (N without the input embedding)."""
    cfg = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    return 6 * n + 6 * cfg.num_hidden_layers * seq_len * cfg.num_attention_heads * cfg.head_dim


def lr_multiplier(step: int, steps: int, warmup: int, floor: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from 1 to `floor` (step counts from 0)."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup - 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def adamw(params: Any, c: Config) -> torch.optim.AdamW:
    opt = torch.optim.AdamW(params, lr=c.lr, betas=(0.9, 0.95), weight_decay=c.weight_decay)
    for g in opt.param_groups:
        g["base_lr"] = c.lr
    return opt


# ---------------------------------------------------------------------- training
@torch.no_grad()
def val_bpb(model: nn.Module, windows: torch.Tensor, batch: int) -> float:
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch):
        x = windows[i:i + batch]
        logits = model(input_ids=x[:, :-1]).logits
        total += float(F.cross_entropy(logits.reshape(-1, VOCAB).float(), x[:, 1:].reshape(-1), reduction="sum"))
    model.train(was)
    return total / (windows.shape[0] * (windows.shape[1] - 1)) / LN2


@dataclass
class Run:
    setting: str
    arm: str
    seed: int
    rows: list[dict]
    start_gap: float | None = None  # start val bpb - teacher's final val bpb (grown arms)

    @property
    def final(self) -> float:
        return self.rows[-1]["val_bpb"]

    def cost_to(self, target: float, key: str = "flops_total") -> float | None:
        """`key` (flops_total or tokens_total, teacher charged) where val bpb first reaches `target`,
        linear between evaluations; None when it never does."""
        prev = None
        for r in self.rows:
            if r["val_bpb"] <= target + 1e-12:
                if prev is None or prev["val_bpb"] == r["val_bpb"]:
                    return r[key]
                t = (prev["val_bpb"] - target) / (prev["val_bpb"] - r["val_bpb"])
                return prev[key] + t * (r[key] - prev[key])
            prev = r
        return None


def train(model: nn.Module, opt: torch.optim.Optimizer, corpus: Corpus, windows: torch.Tensor, c: Config, *,
          steps: int, seed: int, tokens0: int = 0, flops0: float = 0.0, bar: Any = None) -> list[dict]:
    """Train in place; one row per evaluation (step 0 is the starting point). Each optimizer group
    runs at its base_lr times the schedule."""
    gen = torch.Generator().manual_seed(seed)
    per_step = c.batch * c.seq_len
    fpt = flops_per_token(model, c.seq_len)
    rows, losses = [], []

    def record(step: int) -> None:
        rows.append({"step": step, "tokens": step * per_step, "tokens_total": tokens0 + step * per_step,
                     "flops_total": flops0 + step * per_step * fpt,
                     "train_bpb": statistics.fmean(losses) / LN2 if losses else float("nan"),
                     "val_bpb": val_bpb(model, windows, c.batch)})
        losses.clear()

    record(0)
    model.train()
    for step in range(1, steps + 1):
        m = lr_multiplier(step - 1, steps, c.warmup, c.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * m
        x = corpus.batch(gen, c.batch, c.seq_len).to(c.device)
        logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, VOCAB).float(), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
        if step % c.eval_every == 0 or step == steps:
            record(step)
            if bar is not None:
                bar.set_postfix(val_bpb=f"{rows[-1]['val_bpb']:.3f}")
    return rows


# ---------------------------------------------------------------------- arms
@dataclass
class Teacher:
    model: nn.Module  # on the CPU, eval mode: every growth operator reads it here
    optimizer: torch.optim.AdamW  # its state at the end of training, over `model`
    final_lr: float
    rows: list[dict]

    @property
    def tokens(self) -> int:
        return self.rows[-1]["tokens_total"]

    @property
    def flops(self) -> float:
        return self.rows[-1]["flops_total"]

    @property
    def bpb(self) -> float:
        return self.rows[-1]["val_bpb"]


def _rebased(opt: torch.optim.Optimizer, teacher: Teacher, c: Config) -> torch.optim.Optimizer:
    """A handed-over optimizer's groups carry the teacher's final lr (scaled per tensor by an exact
    hand-over): keep those ratios, and run the student's schedule from the student's peak."""
    for g in opt.param_groups:
        g["base_lr"] = g["lr"] / teacher.final_lr * c.lr
    return opt


def carry_optimizer(opt: torch.optim.Optimizer, old: nn.Module, new: nn.Module) -> torch.optim.AdamW:
    """An optimizer over `new` (`old` with blocks added by hf.grow): a parameter that is one of
    `old`'s (moved or not) keeps its state and hyperparameters; a new block's takes those of the
    block it copies and starts with no state. One group per parameter."""
    stacks = find_stacks(old, new, "interleave")
    old_params = dict(old.named_parameters())
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    groups, state = [], {}
    for name, p in new.named_parameters():
        src = source_name(name, stacks)
        q = old_params[src]
        groups.append({**{k: v for k, v in group_of[id(q)].items() if k != "params"}, "params": [p]})
        if target_name(src, stacks) == name and q in opt.state:
            state[p] = {k: v.clone() for k, v in opt.state[q].items()}
    out = torch.optim.AdamW(groups)
    out.state.update(state)
    return out


def random_pad(teacher: nn.Module, config: Any, seed: int) -> nn.Module:
    """The paper's random-pad baseline for a Llama: the bigger model freshly drawn (the family's own
    init), then every teacher tensor copied into its leading slice (leading hidden units, heads,
    MLP units); nothing is divided, so the function changes. The digits study's
    paper.arms.random_pad re-draws new units with PyTorch's defaults (N(0, 1) embeddings), which
    is not what a Llama starts from."""
    import transformers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = transformers.LlamaForCausalLM(config)
    state = student.state_dict()
    with torch.no_grad():
        for name, t in teacher.state_dict().items():
            state[name][tuple(slice(0, n) for n in t.shape)].copy_(t)
    return student


def _example(c: Config) -> tuple[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, VOCAB, (2, min(32, c.seq_len)), generator=gen),)


def _widened(teacher: Teacher, c: Config, seed: int, replication: str, symmetry: str) -> tuple[nn.Module, Any]:
    """widen by 2 (every width field; head size kept) as a LlamaForCausalLM, and its plan."""
    ids = _example(c)
    plan = n2n_fx.plan(teacher.model, ids, factor=2.0, seed=seed, replication=replication, symmetry=symmetry)
    return hf.rebuild(teacher.model, n2n_fx.apply_plan(plan), ids), plan


def _deeper(model: nn.Module, c: Config, seed: int) -> nn.Module:
    return hf.grow(model, num_hidden_layers=2 * c.layers, example_inputs=_example(c), seed=seed)


Made = tuple[nn.Module, "torch.optim.Optimizer | None"]


def arms(setting: str, teacher: Teacher, c: Config) -> list[tuple[str, bool, Callable[[int], Made]]]:
    """(arm, starts from the teacher's function, make(seed) -> (model, handed-over optimizer or None))."""
    wide, deep = SETTINGS[setting]
    big = c.llama(wide, deep)

    def scratch(seed: int) -> Made:
        import transformers

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1000 + seed)
            return transformers.LlamaForCausalLM(big), None

    def widen(replication: str, handover: bool, symmetry: str = "split") -> Callable[[int], Made]:
        def make(seed: int) -> Made:
            student, plan = _widened(teacher, c, seed, replication, symmetry)
            if not handover:
                return student, None
            # exact=True needs symmetry 'none', under which the student stays the teacher (its
            # replicas get equal updates): hand over the moments, keep the teacher's hyperparameters
            opt = n2n_fx.widen_optimizer(plan, teacher.model, teacher.optimizer, student)
            return student, _rebased(opt, teacher, c)
        return make

    def blocks(handover: bool) -> Callable[[int], Made]:
        def make(seed: int) -> Made:
            student = _deeper(teacher.model, c, seed)
            if not handover:
                return student, None
            return student, _rebased(carry_optimizer(teacher.optimizer, teacher.model, student), teacher, c)
        return make

    def grow(seed: int) -> Made:
        cfg = c.llama(2, 1)
        return hf.grow(teacher.model, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
                       num_hidden_layers=2 * c.layers, example_inputs=_example(c), seed=seed, symmetry="split"), None

    def grow_handover(seed: int) -> Made:
        wider, plan = _widened(teacher, c, seed, "uniform", "split")
        opt = n2n_fx.widen_optimizer(plan, teacher.model, teacher.optimizer, wider)
        student = _deeper(wider, c, seed)
        return student, _rebased(carry_optimizer(opt, wider, student), teacher, c)

    table = {
        "wider": [(True, widen("random", False)), (True, widen("uniform", False)), (True, widen("uniform", True)),
                  (True, widen("random", False, "none")),
                  (False, lambda seed: (random_pad(teacher.model, big, seed), None))],
        "deeper": [(True, blocks(False)), (True, blocks(True))],
        "both": [(True, grow), (True, grow_handover)],
    }
    return [(name, exact, make) for name, (exact, make) in zip(ARMS[setting], [*table[setting], (False, scratch)],
                                                                 strict=True)]


# ---------------------------------------------------------------------- the study
def _to_device(model: nn.Module, opt: torch.optim.Optimizer | None, c: Config) -> tuple[nn.Module, Any]:
    model = model.to(c.device)
    if opt is None:
        return model, adamw(model.parameters(), c)
    opt.load_state_dict(opt.state_dict())  # moves the state to the parameters' (new) device
    return model, opt


@dataclass
class Study:
    config: Config
    runs: list[Run] = field(default_factory=list)
    teacher: Teacher | None = None
    corpus: Corpus | None = None

    def run(self) -> None:
        import transformers
        from tqdm.auto import tqdm

        c = self.config
        transformers.logging.set_verbosity_error()
        self.corpus = corpus = load_corpus(c.train_bytes, c.val_bytes)
        windows = corpus.val_windows(c.val_windows, c.seq_len).to(c.device)
        n_arms = sum(len(ARMS[s]) for s in c.settings)
        total = c.teacher_steps + n_arms * c.seeds * c.student_steps
        with tqdm(total=total, desc="teacher", unit="step", mininterval=1 if sys.stderr.isatty() else 30) as bar:
            t0 = time.perf_counter()
            torch.manual_seed(0)
            model = transformers.LlamaForCausalLM(c.llama()).to(c.device)
            opt = adamw(model.parameters(), c)
            rows = train(model, opt, corpus, windows, c, steps=c.teacher_steps, seed=10_000, bar=bar)
            cpu = copy.deepcopy(model).cpu().eval()
            cpu_opt = adamw(cpu.parameters(), c)
            cpu_opt.load_state_dict(opt.state_dict())
            self.teacher = teacher = Teacher(cpu, cpu_opt, opt.param_groups[0]["lr"], rows)
            self.runs.append(Run("teacher", "teacher", 0, rows))
            bar.write(f"teacher: {c.teacher_steps} steps, val {teacher.bpb:.3f} bits/byte, "
                      f"{time.perf_counter() - t0:.0f} s")
            for setting in c.settings:
                for arm, exact, make in arms(setting, teacher, c):
                    for seed in range(c.seeds):
                        t0 = time.perf_counter()
                        bar.set_description(f"{setting}: {arm} seed {seed}")
                        student, opt = _to_device(*make(seed), c)
                        grown = arm != SCRATCH
                        rows = train(student, opt, corpus, windows, c, steps=c.student_steps, seed=seed,
                                     tokens0=teacher.tokens if grown else 0, flops0=teacher.flops if grown else 0.0,
                                     bar=bar)
                        gap = rows[0]["val_bpb"] - teacher.bpb if grown else None
                        if exact and abs(gap) > START_TOL:
                            raise n2n_fx.NotPreservedError(
                                f"{setting}: {arm} (seed {seed}) starts at {rows[0]['val_bpb']:.6f} bits/byte, the "
                                f"teacher is at {teacher.bpb:.6f}", op="experiment lm",
                                fix="this is a bug in n2n_fx: please report it")
                        self.runs.append(Run(setting, arm, seed, rows, gap))
                        bar.write(f"{setting}: {arm} seed {seed}: {rows[0]['val_bpb']:.3f} -> {rows[-1]['val_bpb']:.3f}"
                                  f" bits/byte, {time.perf_counter() - t0:.0f} s")


# ---------------------------------------------------------------------- reporting
def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    return (statistics.fmean(values) if values else None, statistics.stdev(values) if len(values) > 1 else None)


def summarise(runs: list[Run]) -> list[dict]:
    """One row per (setting, arm): start, final, and the FLOPs and tokens saved (teacher charged)
    to reach that setting's scratch final, seed by seed."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        if r.setting != "teacher":
            groups.setdefault((r.setting, r.arm), []).append(r)
    out = []
    for (setting, arm), group in groups.items():
        scratch = {r.seed: r for r in groups[(setting, SCRATCH)]}
        saved: dict[str, list[float]] = {"flops_total": [], "tokens_total": []}
        for r in group:
            s = scratch.get(r.seed)
            for key, values in saved.items():
                cost, base = (r.cost_to(s.final, key), s.cost_to(s.final, key)) if s else (None, None)
                if cost is not None and base:
                    values.append(1 - cost / base)
        gaps = [abs(r.start_gap) for r in group if r.start_gap is not None]
        finals = [r.final for r in group]
        flops, flops_sd = _mean_sd(saved["flops_total"])
        tokens, tokens_sd = _mean_sd(saved["tokens_total"])
        out.append({
            "setting": setting, "arm": arm, "seeds": len(group),
            "start_bpb": statistics.fmean(r.rows[0]["val_bpb"] for r in group),
            "max_start_gap": max(gaps) if gaps else None,
            "final_bpb": statistics.fmean(finals), "final_bpb_sd": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "scratch_final_bpb": statistics.fmean(s.final for s in scratch.values()),
            "reached_scratch_final": len(saved["flops_total"]),
            "compute_saved": flops, "compute_saved_sd": flops_sd, "tokens_saved": tokens, "tokens_saved_sd": tokens_sd,
            "student_flops": group[0].rows[-1]["flops_total"] - group[0].rows[0]["flops_total"],
            "charged_flops": group[0].rows[0]["flops_total"],
        })
    return out


def _saved(s: dict, key: str) -> str:
    if s["arm"] == SCRATCH:
        return "(baseline)"
    n, k = s["seeds"], s["reached_scratch_final"]
    if k == 0:
        return f"not reached (0/{n} seeds)"
    sd = f" ± {100 * s[key + '_sd']:.0f}" if s[key + "_sd"] is not None else ""
    return f"{100 * s[key]:.0f}%{sd}" + (f" (reached in {k}/{n} seeds only)" if k < n else "")


def markdown(summary: list[dict], c: Config, teacher: Run, corpus: Corpus) -> str:
    lines = ["| setting | arm | start bpb | start - teacher (max abs) | final bpb (mean ± sd) | "
             "FLOPs saved to scratch's final (mean ± sd) | tokens saved to scratch's final |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        gap = f"{s['max_start_gap']:.1e}" if s["max_start_gap"] is not None else "-"
        lines.append(f"| {s['setting']} | {s['arm']} | {s['start_bpb']:.3f} | {gap} | "
                     f"{s['final_bpb']:.3f} ± {s['final_bpb_sd']:.3f} | {_saved(s, 'compute_saved')} | "
                     f"{_saved(s, 'tokens_saved')} |")
    big = {k: flops_per_token(_meta_llama(c.llama(*SETTINGS[k])), c.seq_len) for k in c.settings}
    t = teacher.rows[-1]
    return "\n".join(lines) + (
        f"\n\nTeacher: Llama hidden {c.hidden}, {c.layers} layers, head size {c.head_dim}, MLP {c.mlp_ratio}x; "
        f"{c.teacher_steps} steps ({t['tokens_total']:,} tokens), val {t['val_bpb']:.3f} bits/byte, "
        f"{t['flops_total']:.2e} FLOPs (charged to every arm that starts from it, random pad included). Students: "
        f"{c.student_steps} steps of {c.batch} x {c.seq_len} bytes, AdamW peak lr {c.lr:g} (warm-up {c.warmup}, "
        f"cosine to {c.min_lr_ratio:g}x), {c.seeds} seeds; training FLOPs per token "
        + ", ".join(f"{k} {v:.2e}" for k, v in big.items()) + f". Data: Python {sys.version.split()[0]} standard "
        f"library, {corpus.train_files} training files ({len(corpus.train):,} bytes), {corpus.val_files} validation "
        f"files ({len(corpus.val):,} bytes; {c.val_windows} windows evaluated). Device {c.device}, "
        f"{c.threads} CPU thread(s).\n")


def runs_from_csv(path: Path) -> list[Run]:
    """The runs of an lm_curves.csv (re-summarise or re-plot a study without training again)."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            key = (row.pop("setting"), row.pop("arm"), int(row.pop("seed")))
            groups.setdefault(key, []).append({k: int(v) if k in ("step", "tokens", "tokens_total") else float(v)
                                               for k, v in row.items()})
    teacher = next(rows for (s, _, _), rows in groups.items() if s == "teacher")[-1]["val_bpb"]
    return [Run(s, arm, seed, rows, rows[0]["val_bpb"] - teacher if s != "teacher" and arm != SCRATCH else None)
            for (s, arm, seed), rows in groups.items()]


def write_report(c: Config, wall: float | None = None) -> list[dict]:
    """lm_summary.csv, lm_summary.md and lm_bpb.png from config.out's lm_curves.csv."""
    out = c.out
    runs = runs_from_csv(out / "lm_curves.csv")
    summary = summarise(runs)
    write_csv(out / "lm_summary.csv", summary)
    teacher = next(r for r in runs if r.setting == "teacher")
    table = markdown(summary, c, teacher, load_corpus(c.train_bytes, c.val_bytes))
    table += f"Wall time {wall:.0f} s.\n" if wall is not None else ""
    (out / "lm_summary.md").write_text("# Growth vs scratch for a byte-level Llama: summary "
                                       f"(written by `n2n-fx experiment lm`)\n\n{table}")
    plots = plot(runs, c.settings, out)
    print("\n" + table)
    print(f"wrote {out / 'lm_curves.csv'}, {out / 'lm_summary.csv'}, {out / 'lm_summary.md'}"
          + "".join(f", {p}" for p in plots))
    return summary


def _meta_llama(config: Any) -> nn.Module:
    import transformers

    with torch.device("meta"):
        return transformers.LlamaForCausalLM(config)


def plot(runs: list[Run], settings: tuple[str, ...], out: Path) -> list[Path]:
    plt = pyplot()
    if plt is None:
        return []
    teacher = next(r for r in runs if r.setting == "teacher")
    fig, axes = plt.subplots(len(settings), 2, figsize=(12, 3.6 * len(settings)), squeeze=False)
    for row, setting in zip(axes, settings):
        group = [r for r in runs if r.setting == setting]
        for ax, key, label in zip(row, ("tokens_total", "flops_total"), ("training tokens", "training FLOPs")):
            ax.plot([r[key] for r in teacher.rows], [r["val_bpb"] for r in teacher.rows], color="k", lw=1.2,
                    label="teacher")
            for k, arm in enumerate(dict.fromkeys(r.arm for r in group)):
                curves = [r for r in group if r.arm == arm]
                xs = [r[key] for r in curves[0].rows]
                ys = torch.tensor([[r["val_bpb"] for r in c.rows] for c in curves])
                ax.plot(xs, ys.mean(0), color=f"C{k}", lw=1.5, label=arm)
                ax.fill_between(xs, ys.min(0).values, ys.max(0).values, color=f"C{k}", alpha=0.15, lw=0)
            lo = min(min(r["val_bpb"] for r in c.rows) for c in [*group, teacher])
            ax.set_ylim(lo - 0.05, lo + 2.5)  # scratch starts at 8 bits/byte, off the top
            ax.set_xlabel(f"{label} (teacher's included for arms that start from it)")
            ax.set_ylabel("validation bits per byte")
            ax.set_title(f"{setting}: {label}")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.suptitle("Byte-level Llama on the Python standard library: growth vs scratch (mean and range over seeds)")
    fig.tight_layout()
    path = out / "lm_bpb.png"
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return [path]


def run_lm_study(config: Config) -> list[dict]:
    """Run the study; write lm_curves.csv, lm_summary.csv, lm_summary.md and lm_bpb.png into config.out."""
    unknown = [s for s in config.settings if s not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown LM settings {unknown}; choose from {tuple(SETTINGS)}")
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, config.threads))
    try:
        study = Study(config)
        study.run()
    finally:
        torch.set_num_threads(threads)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "lm_curves.csv", [{"setting": r.setting, "arm": r.arm, "seed": r.seed, **row}
                                      for r in study.runs for row in r.rows])
    return write_report(config, time.perf_counter() - t0)


__all__ = ["Config", "Corpus", "Run", "Study", "load_corpus", "run_lm_study", "runs_from_csv", "write_report"]

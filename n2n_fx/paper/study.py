"""The study: teachers, the arms of each setting, seeds, metrics, CSVs, plots and a summary.

Settings (the paper's section 4 at digits scale):
  wider    the x0.3 teacher grown to standard width: Net2WiderNet (none / split / noise), random
           pad, random init of the same architecture
  deeper   the standard teacher with an identity 3x3 conv + ReLU in every module: Net2DeeperNet
           against random init of the same architecture
  explore  the x0.3 teacher grown wider and deeper at once against its random-init twin
  sweep    the wider setting's main arms over student learning rates (seed 0)
Students train at 1/10 of the teacher's initial learning rate, as the paper advises; random-init
arms at the teacher's own rate (they start from scratch).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import n2n_fx

from .arms import random_pad, reinit, target_widths
from .data import Digits, load_digits
from .nets import DEEPEN_AT, DigitsInception
from .report import pyplot, write_csv
from .train import accuracy, train

SETTINGS = ("wider", "deeper", "explore", "sweep")
EXACT = {"net2wider (none)", "net2wider (split)", "net2deeper", "net2net (wider+deeper)"}


@dataclass
class Config:
    seeds: int = 3
    teacher_steps: int = 600
    student_steps: int = 300
    teacher_lr: float = 0.1
    student_lr: float = 0.01  # 1/10 of the teacher's initial rate
    sweep_lrs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
    eval_every: int = 20
    shift: int = 1  # training augmentation: random translation (pixels) and pixel noise (std, in
    noise: float = 0.5  # standardised units); without it the x0.3 teacher memorises digits (100%)
    out: Path = Path("n2n_experiment")  # docs/paper holds the repo's own results: tox -e paper writes there
    batch: int = 64
    data_limit: int | None = None  # keep the first N training and N validation images (smoke runs)

    @classmethod
    def quick(cls, out: Path) -> Config:
        """A smoke-sized study (tests, `n2n-fx experiment --quick`): the same code paths in seconds
        (one seed, one sweep rate: the numbers mean nothing)."""
        return cls(seeds=1, teacher_steps=4, student_steps=2, sweep_lrs=(0.1,), eval_every=2, batch=16,
                   data_limit=64, out=out)


@dataclass
class Run:
    setting: str
    arm: str
    lr: float
    seed: int
    rows: list[dict]
    teacher_acc: float  # the validation accuracy of the teacher this run grew from (or competes with)
    max_rel_err: float | None = None  # float64 check of the starting point, for the exact arms

    @property
    def acc0(self) -> float:
        return self.rows[0]["val_acc"]

    @property
    def final(self) -> float:  # mean of the last three evaluations: one validation example is 0.2%
        return statistics.fmean(r["val_acc"] for r in self.rows[-3:])

    def steps_to(self, target: float) -> int | None:
        return next((r["step"] for r in self.rows if r["val_acc"] >= target - 1e-12), None)


@dataclass
class Study:
    config: Config
    data: Digits = field(default_factory=load_digits)
    runs: list[Run] = field(default_factory=list)
    teachers: dict[str, tuple[nn.Module, float]] = field(default_factory=dict)
    _count: int = 0
    _total: int = 0

    def __post_init__(self) -> None:
        n = self.config.data_limit
        if n is not None:
            d = self.data
            self.data = Digits(d.x_train[:n], d.y_train[:n], d.x_val[:n], d.y_val[:n])

    @property
    def x(self) -> torch.Tensor:  # example inputs for tracing and verification
        return self.data.x_train[:8]

    def label(self, text: str) -> str:
        self._count += 1
        return f"[{self._count}/{self._total}] {text}"

    def teacher(self, name: str) -> tuple[nn.Module, float]:
        if name not in self.teachers:
            c = self.config
            torch.manual_seed(0)
            model = DigitsInception(0.3 if name == "teacher x0.3" else 1.0)
            rows = train(model, self.data, steps=c.teacher_steps, lr=c.teacher_lr, seed=0, cosine=True, batch=c.batch,
                         eval_every=c.eval_every, label=self.label(name), shift=c.shift, noise=c.noise)
            model.eval()
            acc = accuracy(model, self.data.x_val, self.data.y_val)
            self.runs.append(Run("teachers", name, c.teacher_lr, 0, rows, acc))
            self.teachers[name] = (model, acc)
        return self.teachers[name]

    def arm(self, setting: str, arm: str, make: Callable[[int], nn.Module], teacher: tuple[nn.Module, float],
            lr: float, seeds: range) -> None:
        for seed in seeds:
            model = make(seed)
            rel = None
            if arm in EXACT:  # the starting point must be the teacher's function: check it in float64
                report = n2n_fx.verify(teacher[0], model, self.x, n_random=1)
                if not report.ok:
                    raise n2n_fx.NotPreservedError(f"{arm} (seed {seed}) does not start at the teacher: {report}",
                                                   op=setting, fix="this is a bug in n2n_fx: please report it")
                rel = report.max_rel_err
            c = self.config
            rows = train(model, self.data, steps=c.student_steps, lr=lr, seed=seed, eval_every=c.eval_every, batch=c.batch,
                         label=self.label(f"{setting}: {arm} lr {lr:g} seed {seed}"), shift=c.shift, noise=c.noise)
            self.runs.append(Run(setting, arm, lr, seed, rows, teacher[1], rel))

    # ------------------------------------------------------------------ settings
    def wider_arms(self, lrs: dict[str, float]) -> list[tuple[str, Callable[[int], nn.Module], float]]:
        teacher, _ = self.teacher("teacher x0.3")
        widths = target_widths(teacher, DigitsInception(1.0), self.x)
        x = self.x

        def grown(symmetry: str) -> Callable[[int], nn.Module]:
            return lambda seed: n2n_fx.widen(teacher, x, widths=widths, seed=seed, symmetry=symmetry)

        return [("net2wider (none)", grown("none"), lrs["student"]),
                ("net2wider (split)", grown("split"), lrs["student"]),
                ("net2wider (noise)", grown("noise"), lrs["student"]),
                ("random pad", lambda seed: random_pad(teacher, x, widths, seed), lrs["student"]),
                ("random init", lambda seed: reinit(n2n_fx.widen(teacher, x, widths=widths), seed), lrs["scratch"])]

    def run(self, settings: list[str]) -> None:
        c = self.config
        per_seed = {"wider": 5 * c.seeds, "deeper": 2 * c.seeds, "explore": 2 * c.seeds, "sweep": 3 * len(c.sweep_lrs)}
        self._total = sum(per_seed[s] for s in settings) + 1 + ("deeper" in settings)
        lrs = {"student": c.student_lr, "scratch": c.teacher_lr}
        seeds = range(c.seeds)
        if "wider" in settings:
            narrow = self.teacher("teacher x0.3")
            for arm, make, lr in self.wider_arms(lrs):
                self.arm("wider", arm, make, narrow, lr, seeds)
        if "deeper" in settings:
            standard = self.teacher("teacher x1")
            deeper = n2n_fx.deepen(standard[0], self.x, after=DEEPEN_AT)
            self.arm("deeper", "net2deeper", lambda seed: n2n_fx.deepen(standard[0], self.x, after=DEEPEN_AT),
                     standard, c.student_lr, seeds)
            self.arm("deeper", "random init", lambda seed: reinit(deeper, seed), standard, c.teacher_lr, seeds)
        if "explore" in settings:
            narrow = self.teacher("teacher x0.3")
            widths = target_widths(narrow[0], DigitsInception(1.0), self.x)

            def both(seed: int) -> nn.Module:
                wide = n2n_fx.widen(narrow[0], self.x, widths=widths, seed=seed, symmetry="split")
                return n2n_fx.deepen(wide, self.x, after=DEEPEN_AT)

            self.arm("explore", "net2net (wider+deeper)", both, narrow, c.student_lr, seeds)
            self.arm("explore", "random init", lambda seed: reinit(both(0), seed), narrow, c.teacher_lr, seeds)
        if "sweep" in settings:
            narrow = self.teacher("teacher x0.3")
            for lr in c.sweep_lrs:
                for arm, make, _ in self.wider_arms(lrs):
                    if arm in ("net2wider (split)", "random pad", "random init"):
                        self.arm("sweep", arm, make, narrow, lr, range(1))


# ---------------------------------------------------------------------- reporting
def summarise(runs: list[Run]) -> list[dict]:
    """One row per (setting, arm, lr): means over seeds."""
    groups: dict[tuple[str, str, float], list[Run]] = {}
    for r in runs:
        if r.setting != "teachers":
            groups.setdefault((r.setting, r.arm, r.lr), []).append(r)
    scratch = {s: statistics.fmean(r.final for r in g) for (s, arm, _), g in groups.items() if arm == "random init"
               and s != "sweep"}
    out = []
    for (setting, arm, lr), group in groups.items():
        teacher_acc = group[0].teacher_acc
        target = scratch.get(setting)
        to_teacher = [r.steps_to(teacher_acc) for r in group]
        to_target = [r.steps_to(target) for r in group] if target is not None else []
        rels = [r.max_rel_err for r in group if r.max_rel_err is not None]
        out.append({
            "setting": setting, "arm": arm, "lr": lr, "seeds": len(group), "teacher_acc": teacher_acc,
            "acc0": statistics.fmean(r.acc0 for r in group),
            "acc0_equals_teacher": all(abs(r.acc0 - teacher_acc) < 1e-12 for r in group),
            "steps_to_teacher": _mean_steps(to_teacher), "reached_teacher": sum(s is not None for s in to_teacher),
            "scratch_final": target, "steps_to_scratch_final": _mean_steps(to_target),
            "reached_scratch_final": sum(s is not None for s in to_target),
            "final": statistics.fmean(r.final for r in group),
            "final_std": statistics.pstdev([r.final for r in group]),
            "max_rel_err": max(rels) if rels else None,
        })
    return out


def _mean_steps(steps: list[int | None]) -> float | None:
    hit = [s for s in steps if s is not None]
    return statistics.fmean(hit) if hit and len(hit) == len(steps) else None


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _steps(v: float | None, reached: int, n: int) -> str:
    if v is not None:
        return f"{v:.0f}"
    return f"not in all seeds ({reached}/{n})" if n else "-"


def markdown(summary: list[dict], config: Config) -> str:
    lines = ["| setting | arm | lr | step-0 val acc | teacher val acc | steps to teacher acc | "
             "steps to scratch's final acc | final val acc (mean ± sd) | start max rel err (float64) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        exact = " (= teacher)" if s["acc0_equals_teacher"] else ""
        lines.append(
            f"| {s['setting']} | {s['arm']} | {s['lr']:g} | {_pct(s['acc0'])}{exact} | {_pct(s['teacher_acc'])} | "
            f"{_steps(s['steps_to_teacher'], s['reached_teacher'], s['seeds'])} | "
            f"{_steps(s['steps_to_scratch_final'], s['reached_scratch_final'], s['seeds'] if s['scratch_final'] else 0)} | "
            f"{_pct(s['final'])} ± {100 * s['final_std']:.1f} | "
            + (f"{s['max_rel_err']:.1e}" if s["max_rel_err"] is not None else "-") + " |")
    return "\n".join(lines) + (f"\n\n{config.seeds} seeds per arm (sweep: seed 0); students {config.student_steps} "
                               f"steps, teachers {config.teacher_steps} (cosine); evaluated every "
                               f"{config.eval_every} steps; batch {config.batch}, SGD momentum 0.9, weight decay 5e-4; training batches "
                               f"shifted by up to {config.shift} px with pixel noise of std {config.noise} "
                               f"(validation and training accuracy on clean images).\n")


def plot(runs: list[Run], summary: list[dict], out: Path) -> list[Path]:
    plt = pyplot()
    if plt is None:
        return []
    written = []
    titles = {"wider": "Net2WiderNet: x0.3 teacher grown to standard width",
              "deeper": "Net2DeeperNet: an identity conv layer added in every module",
              "explore": "Wider and deeper at once, from the x0.3 teacher"}
    for setting, title in titles.items():
        group = [r for r in runs if r.setting == setting]
        if not group:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for key, ax in zip(("val_acc", "train_acc"), axes):
            for k, arm in enumerate(dict.fromkeys(r.arm for r in group)):
                curves = [r for r in group if r.arm == arm]
                steps = [row["step"] for row in curves[0].rows]
                ys = torch.tensor([[row[key] for row in r.rows] for r in curves])
                ax.plot(steps, ys.mean(0), label=arm, color=f"C{k}", lw=1.6)
                ax.fill_between(steps, ys.min(0).values, ys.max(0).values, color=f"C{k}", alpha=0.15, lw=0)
            ax.axhline(group[0].teacher_acc, color="k", ls="--", lw=1, label="teacher (val)")
            ax.set_xlabel("training steps of the student")
            ax.set_title("validation accuracy" if key == "val_acc" else "training accuracy (450 fixed examples)")
            ax.set_ylim(0.8, 1.0)  # random init climbs into view; its first steps are off the chart
            ax.grid(alpha=0.3)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
        fig.suptitle(f"{title} (mean and range over seeds)")
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        path = out / f"{setting}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    sweep = [s for s in summary if s["setting"] == "sweep"]
    if sweep:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, arm in enumerate(dict.fromkeys(s["arm"] for s in sweep)):
            pts = sorted((s["lr"], s["final"]) for s in sweep if s["arm"] == arm)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{k}", label=arm)
        ax.axhline(sweep[0]["teacher_acc"], color="k", ls="--", lw=1, label="teacher")
        ax.set_xscale("log")
        ax.set_xlabel("student learning rate")
        ax.set_ylabel("final validation accuracy")
        ax.set_title("Wider setting: learning-rate sweep (seed 0)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "sweep.png", dpi=110)
        plt.close(fig)
        written.append(out / "sweep.png")
    return written


def run_study(settings: list[str], config: Config) -> list[dict]:
    """Run the settings, write curves.csv, summary.csv, summary.md and the plots into config.out."""
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown settings {unknown}; choose from {SETTINGS}")
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    study = Study(config)
    study.run(settings)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "curves.csv", [{"setting": r.setting, "arm": r.arm, "lr": r.lr, "seed": r.seed, **row}
                                   for r in study.runs for row in r.rows])
    summary = summarise(study.runs)
    write_csv(out / "summary.csv", summary)
    table = markdown(summary, config)
    (out / "summary.md").write_text(f"# Net2Net on digits: summary (written by `n2n-fx experiment`)\n\n{table}")
    plots = plot(study.runs, summary, out)
    print("\n" + table)
    print(f"wrote {out / 'curves.csv'}, {out / 'summary.csv'}, {out / 'summary.md'}"
          + "".join(f", {p}" for p in plots) + f" in {time.perf_counter() - t0:.0f} s")
    return summary

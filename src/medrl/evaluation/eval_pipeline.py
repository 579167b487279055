"""`medrl eval` end to end: rows -> generations (resumable) -> scores -> summaries -> figures -> report."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from medrl.evaluation import plots
from medrl.evaluation.evaluate import EvalOptions, paired_comparison, score_rows, summarise, write_scores
from medrl.evaluation.generate import GenerationLog, generate_rows, make_generator, vllm_available
from medrl.evaluation.report import build_report, write_report
from medrl.evaluation.rows import read_rows, original_image


@dataclass
class RunConfig:
    """Settings of one `medrl eval` invocation."""

    data: str
    out: str
    reward: Any = None
    resume: bool = False
    batch_size: int = 8
    max_new_tokens: int = 256
    limit: int | None = None
    backend: str = "auto"
    temperature: float = 0.0
    credit_no_finding: bool = False
    box_convention: str | None = None
    n_examples: int = 3
    n_overlays: int = 4
    progress: bool = True


def model_names(paths: Sequence[str]) -> list[str]:
    """Short unique labels for model paths (folder names, numbered when they repeat)."""
    base = [re.sub(r"[^A-Za-z0-9._-]+", "_", Path(p).resolve().name) or "model" for p in paths]
    return [b if base.count(b) == 1 else f"{b}-{i + 1}" for i, b in enumerate(base)]


def run_eval(model_paths: Sequence[str], cfg: RunConfig, generator_factory=None) -> dict:
    """Evaluate one model (or compare several) on `cfg.data`; returns the report dict."""
    rows = read_rows(cfg.data, cfg.limit)
    if not rows:
        raise ValueError(f"{cfg.data}: no rows to evaluate")
    out = Path(cfg.out)
    names = model_names(model_paths)
    opts = EvalOptions(cfg.reward, cfg.box_convention, cfg.credit_no_finding)
    backend = cfg.backend if cfg.backend != "auto" else ("vllm" if vllm_available() else "transformers")
    factory = generator_factory or (lambda path: make_generator(
        path, backend, cfg.temperature, max(len(r.images) for r in rows)))
    models, results, records = [], {}, {}
    for name, path in zip(names, model_paths):
        mdir = out if len(model_paths) == 1 else out / "models" / name
        log = GenerationLog(mdir / "generations.jsonl")
        meta = {"model": str(Path(path).resolve()), "data": str(Path(cfg.data).resolve()),
                "data_bytes": Path(cfg.data).stat().st_size,
                "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "backend": backend}
        done = log.read() if cfg.resume else {}
        if cfg.resume and all(r.key in done for r in rows):
            log.start(meta, resume=True)  # still checks the settings match
            gens = done
        else:
            gens = generate_rows(rows, log, factory(path), meta, cfg.batch_size, cfg.max_new_tokens,
                                 cfg.resume, cfg.progress)
        recs = score_rows(rows, {k: v["text"] for k, v in gens.items()}, opts)
        write_scores(mdir / "scores.jsonl", recs)
        secs = [gens[r.key].get("seconds") for r in rows if gens[r.key].get("seconds") is not None]
        models.append({"name": name, "path": str(path), "backend": backend, "max_new_tokens": cfg.max_new_tokens,
                       "seconds_per_row": sum(secs) / len(secs) if secs else None})
        results[name] = summarise(recs, cfg.n_examples)
        records[name] = recs
    paired = paired_comparison(records[names[0]], records[names[1]]) if len(names) == 2 else None
    figures = make_figures(out, rows, records, results, cfg.n_overlays)
    used = sorted({r["box_convention"] for recs in records.values() for r in recs if "box_convention" in r})
    report = build_report(cfg.data, len(rows), cfg.reward if cfg.reward is not None else "default routes",
                          ", ".join(used) or cfg.box_convention, cfg.credit_no_finding, models, results, paired,
                          figures)
    write_report(out, report)
    return report


def make_figures(out: Path, rows, records: dict[str, list[dict]], results: dict[str, dict],
                 n_overlays: int) -> list[dict]:
    """Draw the report's PNGs under out/plots; returns [{title, path relative to out}]."""
    pdir = out / "plots"
    figs: list[dict] = []

    def add(title: str, path: Path | None) -> None:
        if path is not None:
            figs.append({"title": title, "path": str(path.relative_to(out))})

    add("Reward histogram", plots.reward_histogram(records, pdir / "reward_hist.png"))
    add("IoU distribution", plots.iou_distribution(records, pdir / "iou_hist.png"))
    add("Mean reward per category", plots.category_bars(results, pdir / "by_category.png", "by_category"))
    add("Mean reward per data source", plots.category_bars(results, pdir / "by_data_source.png", "by_data_source"))
    by_index = {r.index: r for r in rows}
    for name, recs in records.items():
        ground = sorted((r for r in recs if r["task"] == "grounding" and r["image"] is not None),
                        key=lambda r: (r["score"], r["index"]))
        # The worst and the best grounding rows: where the model fails and where it works.
        picks = ground[: (n_overlays + 1) // 2] + ground[len(ground) - n_overlays // 2:] if ground else []
        seen = set()
        for r in picks:
            if r["index"] in seen:
                continue
            seen.add(r["index"])
            img = original_image(by_index[r["index"]].images[0])
            add(f"{name}: row {r['index']} (score {r['score']:.2f}; green truth, red model)",
                plots.box_overlay(img, r, pdir / f"overlay_{name}_row{r['index']}.png"))
    return figs

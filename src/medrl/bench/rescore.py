"""Score a learning-bench run's start and final models again on new images: the same table, tighter.

The bench scores final models on its 300 validation images, where a paired change has a standard
error of about 0.02 acc@0.5: too wide to tell a plateau (one more SFT budget adds under 0.01) or a
lead of +0.03. Scoring the same models on 1,200 new images halves it. Training curves are not
re-scored. Used by `benchmarks/bench_learning.py --test N` and `benchmarks/rescore_learning.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from medrl.atomic import atomic_open
from medrl.bench.generated_sets import NEW_IMAGES_SEED, new_images
from medrl.bench.learning_table import final_eval_dir, table
from medrl.bench.progress import log
from medrl.training import learning
from medrl.training.recipes import REPO_ROOT

SPEC = REPO_ROOT / "recipes" / "rewards" / "grounding.yaml"  # the shipped grounding spec: every model is scored by it


def start_for(starts: list[str] | None, seed: int) -> Path | None:
    """The --start model of `seed`: the one given for every seed, or the seed's own (None: warm up)."""
    if not starts:
        return None
    return Path(starts[0] if len(starts) == 1 else starts[seed]).resolve()


def final_model(run: Path, seed: int, arm: str, res: dict, starts: list[str] | None) -> Path:
    """The HF folder bench_learning scored as an arm's final model (the start's for "start")."""
    seed_dir = run / f"seed{seed}"
    if arm == "start":
        return start_for(starts, seed) or seed_dir / "warmup" / "merged"
    if arm == "sft":
        return seed_dir / "sft" / f"merged_{res['sft']['final']['step']}"
    return seed_dir / arm / "merged"


def rescore(run: Path, saved: dict, root: Path, val: Path) -> dict[int, dict]:
    """Each seed's start and arms' final models of `run` (its results.json: `saved`) scored on `val` into the
    bench's layout under `root`; returns results as the bench keeps them (new scores, training time kept)."""
    starts = saved["args"].get("start")
    if isinstance(starts, str):  # results written before --start took one model per seed
        starts = [starts]
    out: dict[int, dict] = {}
    for key, res in saved["seeds"].items():
        seed = int(key)
        out[seed] = {}
        for arm in res:
            was = res[arm] if arm == "start" else res[arm]["final"]
            model = final_model(run, seed, arm, res, starts)
            log(f"seed {seed}: {arm} ({model})")
            got = learning.evaluate(model, val, final_eval_dir(root, seed, arm, res), str(SPEC), was["step"],
                                    was["train_s"]).__dict__
            out[seed][arm] = got if arm == "start" else {"curve": [], "final": got, "s_step": res[arm].get("s_step")}
    return out


def rescore_run(run: Path, n: int, seed: int = NEW_IMAGES_SEED, command: str = "") -> tuple[Path, str]:
    """Score `run`'s start and final models on `n` new images (generator `seed`); writes and returns the table."""
    saved = json.loads((run / "results.json").read_text())
    root = run / f"rescored_n{n}"
    results = rescore(run, saved, root, new_images(root, saved["args"].get("data", "one"), n, seed))
    arms = [a for a in next(iter(results.values())) if a != "start"]
    text = table(results, arms, root)
    with atomic_open(root / "table.txt", encoding="utf-8") as fh:
        fh.write(f"# {command or 'rescore_learning.py'}: {n} new images, generator seed {seed}; "
                 f"train min and s/step are the run's own\n{text}\n")
    return root / "table.txt", text

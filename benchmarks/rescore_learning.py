"""Score a bench_learning run's start and final models again on new validation images: the same table, tighter.

bench_learning scores every final model on its 300 validation images, where a paired change has a
standard error of about 0.02 acc@0.5: too wide to tell a plateau (issue 23 item 4: one more SFT
budget adds under 0.01) or a lead of +0.03. This reads a finished run (--run, bench_learning's
--out), generates --n new images of the same data set (generator --seed; the bench's training
images are seed 1, its validation images seed 2), scores each seed's start and each arm's final
model on them with `medrl eval` (greedy, the shipped grounding spec) and prints bench_learning's
table from those scores: figures over seeds, paired changes, issue 23's targets and the
GRPO-against-SFT lines. Training curves are not re-scored. Writes <run>/rescored_n<N>/table.txt.

    python benchmarks/rescore_learning.py --run runs/bench_beyond --n 1200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medrl.atomic import atomic_open
from medrl.bench.learning_table import final_eval_dir, table
from medrl.training import learning

from bench_learning import SPEC, generate, log, start_for

NEW_IMAGES_SEED = 3  # the generator seed of the new images: the bench's training images are seed 1, its validation 2


def final_model(run: Path, seed: int, arm: str, res: dict, starts: list[str] | None) -> Path:
    """The HF folder bench_learning scored as an arm's final model (the start's for "start")."""
    seed_dir = run / f"seed{seed}"
    if arm == "start":
        return start_for(starts, seed) or seed_dir / "warmup" / "merged"
    if arm == "sft":
        return seed_dir / "sft" / f"merged_{res['sft']['final']['step']}"
    return seed_dir / arm / "merged"


def new_images(root: Path, mix: str, n: int, seed: int) -> Path:
    """`n` generated images of the `mix` data set (generator `seed`), converted as the bench converts them."""
    data = root / "data" / "val.parquet"
    if not data.is_file():
        generate(root / "source", data.parent, "val", n, seed, mix)
    return data


def rescore(run: Path, root: Path, val: Path) -> dict[int, dict]:
    """Each seed's start and arms' final models scored on `val` into bench_learning's layout under `root`;
    returns results as bench_learning keeps them (final figures from the new scores, training time kept)."""
    saved = json.loads((run / "results.json").read_text())
    starts = saved["args"].get("start")
    if isinstance(starts, str):  # results written before --start took one model per seed
        starts = [starts]
    out: dict[int, dict] = {}
    for key, res in saved["seeds"].items():
        seed = int(key)
        out[seed] = {}
        for arm in res:
            was = res[arm] if arm == "start" else res[arm]["final"]
            eval_dir = final_eval_dir(root, seed, arm, res)
            model = final_model(run, seed, arm, res, starts)
            log(f"seed {seed}: {arm} ({model})")
            got = learning.evaluate(model, val, eval_dir, str(SPEC), was["step"], was["train_s"]).__dict__
            out[seed][arm] = got if arm == "start" else {"curve": [], "final": got, "s_step": res[arm].get("s_step")}
    return out


def rescore_run(run: Path, n: int, seed: int = NEW_IMAGES_SEED, command: str = "") -> tuple[Path, str]:
    """Score `run`'s start and final models on `n` new images (generator `seed`); writes and returns the table."""
    mix = json.loads((run / "results.json").read_text())["args"].get("data", "one")
    root = run / f"rescored_n{n}"
    results = rescore(run, root, new_images(root, mix, n, seed))
    arms = [a for a in next(iter(results.values())) if a != "start"]
    text = table(results, arms, root)
    with atomic_open(root / "table.txt", encoding="utf-8") as fh:
        fh.write(f"# {command or 'rescore_learning.py'}: {n} new images, generator seed {seed}; "
                 f"train min and s/step are the run's own\n{text}\n")
    return root / "table.txt", text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished bench_learning run (its --out)")
    ap.add_argument("--n", type=int, default=1200, help="new validation images")
    ap.add_argument("--seed", type=int, default=NEW_IMAGES_SEED, help="their generator seed (the bench uses 1 and 2)")
    args = ap.parse_args()
    run = Path(args.run).resolve()
    if not (run / "results.json").is_file():
        ap.error(f"{run / 'results.json'} not found: --run takes a finished bench_learning --out")
    _, text = rescore_run(run, args.n, args.seed, " ".join(["rescore_learning.py", *sys.argv[1:]]))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Score a bench_learning run's start and final models again on new validation images: the same table, tighter.

bench_learning scores every final model on its 300 validation images, where a paired change has a
standard error of about 0.02 acc@0.5: too wide to tell a plateau (issue 23 item 4: one more SFT
budget adds under 0.01) or a lead of +0.03. This reads a finished run (--run, bench_learning's
--out), generates --n new images of the same data set (generator --seed; the bench's training
images are seed 1, its validation images seed 2), scores each seed's start and each arm's final
model on them with `medrl eval` (greedy, the shipped grounding spec) and prints bench_learning's
table from those scores: figures over seeds, paired changes, issue 23's targets and the
GRPO-against-SFT lines. Training curves are not re-scored. Writes <run>/rescored_n<N>/table.txt.
The work is `medrl.bench.rescore`, which `bench_learning.py --test N` calls too.

    python benchmarks/rescore_learning.py --run runs/bench_beyond --n 1200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medrl.bench.generated_sets import NEW_IMAGES_SEED, SPLIT_SEEDS
from medrl.bench.rescore import rescore_run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished bench_learning run (its --out)")
    ap.add_argument("--n", type=int, default=1200, help="new validation images")
    ap.add_argument("--seed", type=int, default=NEW_IMAGES_SEED, help=f"their generator seed (the bench's splits use {SPLIT_SEEDS})")
    args = ap.parse_args()
    run = Path(args.run).resolve()
    if not (run / "results.json").is_file():
        ap.error(f"{run / 'results.json'} not found: --run takes a finished bench_learning --out")
    _, text = rescore_run(run, args.n, args.seed, " ".join(["rescore_learning.py", *sys.argv[1:]]))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The learning bench's generated grounding sets: training, validation and new images to score again on.

Images come from `medrl prepare sample --grounding` (a generator seed per split: training 1,
validation 2, new images 3) and are converted by `medrl prepare grounding`, as a user's data is.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DATA_SETS = ("one", "vindr")  # one finding per image; a VinDr-like mix (about half no finding, the others 1-3)
SPLIT_SEEDS = {"train": 1, "val": 2}
NEW_IMAGES_SEED = 3  # images neither split has seen, for scoring the final models again


def generate(src: Path, data: Path, split: str, n: int, seed: int, mix: str, sft: bool = False) -> None:
    """`n` generated grounding images (generator `seed`, findings per image: `mix`) into `src`, converted by
    `medrl prepare` into `data`/<split>.parquet (and the SFT rows, with `sft`)."""
    subprocess.run([sys.executable, "-m", "medrl.cli", "prepare", "sample", "--grounding", "--answer", "short",
                    "--mix", mix, "--n", str(n), "--seed", str(seed), "--out", str(src)], check=True)
    subprocess.run([sys.executable, "-m", "medrl.cli", "prepare", "grounding", str(src / "grounding.json"),
                    "--split_name", split, *(["--sft"] if sft else []), "--no-instruction", "--output_dir",
                    str(data), "--no_progress"], check=True, stdout=subprocess.DEVNULL)


def data_files(out: Path) -> dict[str, str]:
    """The bench's four parquet files under `out`/data: {"train", "val", "sft_train", "sft_val": path}."""
    return {k: str(out / "data" / f"{k}.parquet") for k in ("train", "val", "sft_train", "sft_val")}


def prepare_data(out: Path, n_train: int, n_val: int, mix: str = "one") -> dict[str, str]:
    """Generated train/val grounding sets under `out`/data (made once; a folder holding another mix is refused)."""
    data = out / "data"
    files = data_files(out)
    marker = data / "mix.txt"
    if all(Path(f).is_file() for f in files.values()):
        made = marker.read_text().strip() if marker.is_file() else "one"
        if made != mix:
            raise ValueError(f"{data} holds the {made!r} data set, not {mix!r}: use another --out")
        return files
    for split, n in (("train", n_train), ("val", n_val)):
        generate(out / "source" / split, data, split, n, SPLIT_SEEDS[split], mix, sft=True)
    marker.write_text(mix + "\n")
    return files


def new_images(root: Path, mix: str, n: int, seed: int = NEW_IMAGES_SEED) -> Path:
    """`n` generated images of the `mix` data set (generator `seed`) as `root`/data/val.parquet, made once."""
    data = root / "data" / "val.parquet"
    if not data.is_file():
        generate(root / "source", data.parent, "val", n, seed, mix)
    return data

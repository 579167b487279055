"""Helpers for the seed-format tests: load a parquet through verl's RLHFDataset and `medrl check`."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def load_with_verl(parquet: str | Path, model_dir: str | Path) -> list[dict]:
    """Every item of `parquet` as verl's RLHFDataset returns it (tiny model's processor)."""
    from omegaconf import OmegaConf
    from transformers import AutoProcessor
    from verl.utils.dataset.rl_dataset import RLHFDataset

    proc = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
    with tempfile.TemporaryDirectory() as cache:
        config = OmegaConf.create({"prompt_key": "prompt", "image_key": "images", "cache_dir": cache,
                                   "max_prompt_length": 8192, "filter_overlong_prompts": False,
                                   "return_raw_chat": True})
        ds = RLHFDataset(data_files=[str(parquet)], tokenizer=proc.tokenizer, config=config, processor=proc)
        return [ds[i] for i in range(len(ds))]


def n_images(item: dict) -> int:
    """Image entries in an RLHFDataset item's raw_prompt."""
    return sum(1 for m in item["raw_prompt"] if isinstance(m.get("content"), list)
               for c in m["content"] if isinstance(c, dict) and c.get("type") == "image")


def check_clean(parquet: str | Path, model_dir: str | Path, spec=None) -> dict:
    """`medrl check` with the processor; asserts no problem and returns the report."""
    from medrl.data.check import check_file

    report = check_file(parquet, processor=str(model_dir), max_prompt_length=4096, reward_spec=spec, progress=False)
    assert report["problems"] == {}, report["problems"]
    return report


def prepare_parser() -> argparse.ArgumentParser:
    """A `medrl prepare` parser carrying only the seed-format sub-commands."""
    from medrl.data.prepare_formats import register_formats

    parser = argparse.ArgumentParser(prog="medrl prepare")
    register_formats(parser.add_subparsers(dest="prepare_task", required=True))
    return parser


def run_cli(*argv: str) -> int:
    """Run one `medrl prepare <format> ...` through the sub-commands' own functions."""
    args = prepare_parser().parse_args([str(a) for a in argv])
    return args.func(args)

"""A generated LEVIR-CC-like change sample: before/after scenes with a new building, some pairs unchanged.

`write_sample(out)` writes a `datasets.DatasetDict` (train/test) with `image`, `image2`,
`caption` and `bbox`, the columns `medrl prepare change` reads (`examples/change/`).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def _scene(rng, size: int):
    import numpy as np

    base = np.zeros((size, size, 3), np.float32)
    base[...] = (70, 95, 60)  # vegetation
    base += rng.normal(0, 8, (size, size, 1))
    road = int(rng.integers(size // 4, 3 * size // 4))
    base[road:road + 4, :, :] = (120, 120, 115)
    return base


def _where(box, size: int) -> str:
    cx, cy = (box[0] + box[2]) / 2 / size, (box[1] + box[3]) / 2 / size
    v = "top" if cy < 0.4 else "bottom" if cy > 0.6 else "middle"
    hpos = "left" if cx < 0.4 else "right" if cx > 0.6 else "centre"
    return f"{v} {hpos}" if v != "middle" else ("centre" if hpos == "centre" else f"middle {hpos}")


def write_sample(out_dir: str | Path, n_train: int = 12, n_test: int = 4, seed: int = 0, size: int = 64) -> Path:
    """Write a LEVIR-CC-like DatasetDict (train/test) of generated before/after pairs; returns its folder."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    cols: dict[str, dict[str, list]] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        if n <= 0:
            continue  # an empty split cannot be loaded back
        c = cols.setdefault(split, {"image": [], "image2": [], "caption": [], "bbox": []})
        for i in range(n):
            before = _scene(rng, size)
            after = before + rng.normal(0, 3, before.shape)
            if i % 4 == 3:
                bbox: list[int] = []
                caption = ["the scene is unchanged", "no change"]
            else:
                bw, bh = (int(v) for v in rng.integers(8, 24, 2))
                x1, y1 = int(rng.integers(0, size - bw)), int(rng.integers(0, size - bh))
                after[y1:y1 + bh, x1:x1 + bw] = (190, 185, 180)  # a new roof
                after[y1:y1 + bh, x1:x1 + 2] = (90, 90, 90)  # its shaded wall
                bbox = [x1, y1, x1 + bw, y1 + bh]
                caption = [f"a building has been built at the {_where(bbox, size)}",
                           f"a new house appears in the {_where(bbox, size)}"]
            c["image"].append(Image.fromarray(np.clip(before, 0, 255).astype(np.uint8)))
            c["image2"].append(Image.fromarray(np.clip(after, 0, 255).astype(np.uint8)))
            c["caption"].append(caption)
            c["bbox"].append(bbox)
    features = datasets.Features({"image": datasets.Image(), "image2": datasets.Image(),
                                  "caption": datasets.Sequence(datasets.Value("string")),
                                  "bbox": datasets.Sequence(datasets.Value("int32"))})
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict(c, features=features) for s, c in cols.items()})
    out = Path(out_dir) / "levir_cc_like"
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dd.save_to_disk(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # a folder: written beside, then renamed into place
    return out

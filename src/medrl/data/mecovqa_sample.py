"""A generated MeCoVQA-like sample: SA-Med2D-like CT slices and lesion masks, with Complex, Region and Grounding records.

`write_sample(out)` writes images/, masks/ and MeCoVQA-{Complex,Region,Grounding}.json,
the files `medrl prepare mecovqa` reads (`examples/mecovqa/`).
"""

from __future__ import annotations

import json
from pathlib import Path


def _organ(rng, size: int):
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size]
    img = np.full((size, size), 30.0)
    body = ((xx - size / 2) / (0.45 * size)) ** 2 + ((yy - size / 2) / (0.4 * size)) ** 2 <= 1
    img[body] = 90
    img += rng.normal(0, 4, img.shape)
    return img, yy, xx


def write_sample(out_dir: str | Path, n: int = 4, seed: int = 0, size: int = 64) -> list[Path]:
    """Write SA-Med2D-like images/ and masks/ plus MeCoVQA-{Complex,Region,Grounding}.json under out_dir."""
    import numpy as np
    from PIL import Image

    from medrl.atomic import atomic_open, atomic_path

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    files: dict[str, list] = {"Complex": [], "Region": [], "Grounding": []}

    def save(rel: str, arr) -> None:
        with atomic_path(out_dir / rel) as tmp:
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L").save(tmp, format="PNG", optimize=True)

    for i in range(3 * n):
        img, yy, xx = _organ(rng, size)
        mask = np.zeros((size, size), np.uint8)
        n_lesions = 1 + (i % 3 == 2)
        for _ in range(n_lesions):
            r = int(rng.integers(4, 8))
            cx = int(rng.integers(size // 4, 3 * size // 4))
            cy = int(rng.integers(size // 4, 3 * size // 4))
            blob = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            img[blob] = 170
            mask[blob] = 255
        mask[2:4, 2:4] = 255  # a 4-pixel speck: below the minimum area, never a box
        stem = f"ct_00--MeCoSample--case_{i:03d}--x_0001"
        save(f"images/{stem}.png", img)
        mrel = f"masks/{stem}--0000_000.png"
        save(mrel, mask)
        kind = ("Complex", "Region", "Grounding")[i % 3]
        image_ref = f"images/{stem}" if i == 2 else f"images/{stem}.png"  # one path without ".png", as in SA-Med2D
        if kind == "Complex":
            conv = [("human", "<image>\nWhat imaging modality is this and what abnormality is visible?"),
                    ("gpt", "This is a CT slice of the abdomen showing a round hyperdense lesion.")]
        elif kind == "Region":
            conv = [("human", f"<image>\nWhat does the region <region>{mrel}</region> show?"),
                    ("gpt", "It shows a round hyperdense lesion.")]
        else:
            conv = [("human", "<image>\nPlease segment the hyperdense lesion in this CT image."),
                    ("gpt", f"Sure, it is [SEG]. <mask>{mrel}</mask>")]
        files[kind].append({"id": f"meco-{kind.lower()}-{i:03d}", "image": image_ref,
                            "conversations": [{"from": a, "value": b} for a, b in conv]})
    paths = []
    for kind, recs in files.items():
        p = out_dir / f"MeCoVQA-{kind}.json"
        with atomic_open(p, "w", encoding="utf-8") as fh:
            json.dump(recs, fh, indent=1)
            fh.write("\n")
        paths.append(p)
    return paths

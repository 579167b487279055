"""A generated UniMedVL-shaped sample: report, VQA, text-only and image-output records over drawn chest X-rays.

`write_sample(out)` writes unimedvl.jsonl and images/, the files `medrl prepare unimedvl`
reads (`examples/unimedvl/`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path


REPORT_PROMPT = ("<image>\n\nYou are an experienced radiologist. Write the findings of this chest X-ray.")
VQA_PROMPT = "<image>\n\nIs there a focal opacity in the {side} lung? Answer yes or no."


def write_sample(out_dir: str | Path, n: int = 12, seed: int = 0) -> Path:
    """Write a UniMedVL-shaped JSONL (+ images/): report, VQA, text-only and image-output records."""
    import numpy as np
    from PIL import Image

    from medrl.atomic import atomic_open, atomic_path
    from medrl.data.sample import draw_chest, report_text

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    lines = []
    for i in range(n):
        kind = ("image_understanding", "vqa", "image_understanding", "image_to_image", "text_only",
                "image_understanding")[i % 6]
        drawn = draw_chest(rng, int(prng.random() < 0.6), size=(96, 96))
        rel = f"images/uni_{i:03d}.png"
        if kind != "text_only":
            with atomic_path(out_dir / rel) as tmp:
                Image.fromarray(drawn.pixels, mode="L").save(tmp, format="PNG", optimize=True)
        img = [{"path": rel, "height": 96, "width": 96}]
        rec: dict = {"id": f"uni-{i:03d}", "main_task_type": kind}
        if kind == "image_understanding":
            rec["input_img"] = img
            rec["message"] = [{"from": "human", "value": REPORT_PROMPT},
                              {"from": "gpt", "value": report_text(drawn.findings)}]
        elif kind == "vqa":
            side = drawn.findings[0][2].split()[0] if drawn.findings else prng.choice(["left", "right"])
            rec["input_img"] = img
            rec["message"] = [{"from": "human", "value": VQA_PROMPT.format(side=side)},
                              {"from": "gpt", "value": "Yes." if drawn.findings else "No."}]
        elif kind == "image_to_image":
            rec["input_img"] = img
            rec["output_img"] = [{"path": f"images/uni_{i:03d}_out.png", "height": 96, "width": 96}]
            rec["message"] = [{"from": "human", "value": "<image>\n\nShow this chest X-ray after the opacity resolves."},
                              {"from": "gpt", "value": "Here is the predicted follow-up image. <image>"}]
        else:
            rec["message"] = [{"from": "human", "value": "What are common symptoms of pneumonia?"},
                              {"from": "gpt", "value": "Cough, fever and shortness of breath."}]
        lines.append(json.dumps(rec, ensure_ascii=False))
    path = out_dir / "unimedvl.jsonl"
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path

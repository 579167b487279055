"""Generator of the bundled sample: chest X-ray look-alikes with bright findings, in RadVLM's LLaVA format.

Nothing here is real data. Each image is a grayscale 128x128 drawing of a chest
(body, two darker lung fields, a brighter spine) with zero to two bright blobs in
the lungs; the grounding answers give each blob's box in [0, 1], written the way
RadVLM writes them, so a small model can learn to find the blob.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medrl.atomic import atomic_open, atomic_path

Box = tuple[float, float, float, float]

FINDINGS = ("nodule", "mass", "consolidation", "lung opacity", "infiltration")
GROUNDING_QUESTIONS = (
    "<image>\nPlease locate the {f} in this chest X-ray.",
    "<image>\nWhere is the {f} in this image? Give its bounding box.",
    "<image>\nFind the {f} on this radiograph.",
)
OPEN_QUESTIONS = (
    "<image>\nLocate any abnormality or lesion in this chest X-ray.",
    "<image>\nAre there any abnormalities in this image? If so, locate them.",
)
NO_FINDING = "No abnormalities or lesions are detected on this Chest X-ray."
REPORT_QUESTIONS = (
    "<image>\nWrite the findings section of the radiology report for this chest X-ray.",
    "<image>\nDescribe the findings in this chest radiograph.",
)


@dataclass
class Drawn:
    """One generated image and the findings drawn in it."""

    pixels: np.ndarray  # uint8, (height, width)
    findings: list[tuple[str, Box, str]]  # (name, box in [0,1], "left"/"right" + zone)


def _fmt(box: Box) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


def draw_chest(rng: np.random.Generator, n_findings: int, size: tuple[int, int] = (128, 128)) -> Drawn:
    """Draw a chest look-alike with `n_findings` bright blobs, returning the image and each blob's box."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = w / 2 + rng.uniform(-3, 3)
    img = np.full((h, w), 18.0, np.float32)
    body = ((xx - cx) / (0.47 * w)) ** 2 + ((yy - 0.55 * h) / (0.52 * h)) ** 2 <= 1
    img[body] = 105
    lungs = []
    for side in (-1, 1):
        lx, ly = cx + side * 0.2 * w, 0.47 * h
        ax, ay = 0.15 * w, 0.3 * h
        lungs.append((lx, ly, ax, ay, "right" if side < 0 else "left"))  # patient's right is image left
        inside = ((xx - lx) / ax) ** 2 + ((yy - ly) / ay) ** 2 <= 1
        img[inside] = 55
    img[np.abs(xx - cx) < 0.045 * w] = 150  # spine / mediastinum
    for k in range(5):  # faint ribs
        ry = 0.25 * h + k * 0.11 * h
        img[(np.abs(yy - ry - 0.04 * h * np.cos((xx - cx) / w * 3)) < 1.0) & body] += 14
    findings = []
    for _ in range(n_findings):
        for _try in range(50):  # blobs must not touch, or two boxes would describe one shape
            lx, ly, ax, ay, side = lungs[rng.integers(0, 2)]
            rx, ry = rng.uniform(0.05, 0.11) * w, rng.uniform(0.05, 0.11) * h
            bx = rng.uniform(lx - 0.5 * ax, lx + 0.5 * ax)
            by = rng.uniform(ly - 0.55 * ay, ly + 0.55 * ay)
            near = any(bx + rx + 2 > b[0] * w and bx - rx - 2 < b[2] * w and by + ry + 2 > b[1] * h
                       and by - ry - 2 < b[3] * h for _, b, _ in findings)
            if not near:
                break
        blob = ((xx - bx) / rx) ** 2 + ((yy - by) / ry) ** 2 <= 1
        img[blob] = 215
        ys, xs = np.nonzero(blob)
        box = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
        zone = "upper" if by < ly - ay / 3 else ("lower" if by > ly + ay / 3 else "middle")
        findings.append((str(rng.choice(FINDINGS)), tuple(round(v, 2) for v in box), f"{side} {zone}"))
    img += rng.normal(0, 2.5, img.shape).astype(np.float32)
    return Drawn(np.clip(img, 0, 255).astype(np.uint8), findings)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def grounding_answer(findings: list[tuple[str, Box, str]], rng: random.Random) -> str:
    """RadVLM-style answer: boxes joined with ', '/' and ', findings with '; ', or the no-finding line."""
    if not findings:
        return NO_FINDING
    by_name: dict[str, list[Box]] = {}
    for name, box, _ in findings:
        by_name.setdefault(name, []).append(box)
    parts = []
    for name, boxes in by_name.items():
        joined = " and ".join(_fmt(b) for b in boxes)
        if rng.random() < 0.5:
            parts.append(f"There is {_article(name)} {name} located at the coordinates {joined}")
        else:
            parts.append(f"The image shows {_article(name)} {name} located at the coordinates {joined}")
    return "; ".join(parts) + "."


# Ways real reports phrase the same content, so the report rows exercise the findings reward
# (laterality, "cardiac silhouette", negation lists, uncertainty, "no acute cardiopulmonary process").
# Each says only what was drawn: blobs in the lungs, nothing else.
NORMAL_REPORTS = (
    "The lungs are clear. There is no focal consolidation, pleural effusion or pneumothorax. "
    "The cardiomediastinal silhouette is normal.",
    "No pneumothorax. No pleural effusion. The cardiac silhouette is not enlarged. "
    "No acute cardiopulmonary process.",
    "Heart size is normal. The lungs are clear without focal consolidation. No acute cardiopulmonary process.",
)
FINDING_SENTENCES = (
    "There is {a} {name} in the {level} zone of the {side} lung.",
    "{Side}-sided {name} in the {level} zone.",
    "{Side} {level} zone {name}.",
)
REPORT_TAILS = (
    " No pleural effusion or pneumothorax. The heart size is normal.",
    " No pneumothorax. No pleural effusion. The cardiac silhouette is not enlarged.",
    " The heart size is normal. There is no pleural effusion or pneumothorax.",
)


def report_text(findings: list[tuple[str, Box, str]], variant: int = 0) -> str:
    """A short findings paragraph matching what was drawn, in one of three phrasings (`variant` mod 3)."""
    v = variant % 3
    if not findings:
        return NORMAL_REPORTS[v]
    parts = []
    for name, _, zone in findings:
        side, level = zone.split()
        text = FINDING_SENTENCES[v].format(a=_article(name), name=name, level=level, side=side,
                                           Side=side.capitalize())
        if v and name in ("lung opacity", "infiltration"):
            text += " Possible consolidation."  # an opacity the reader hedges on
        parts.append(text)
    return " ".join(parts) + REPORT_TAILS[v]


def make_records(n: int, out_dir: Path, seed: int = 0) -> list[dict]:
    """Draw `n` images into out_dir/images and return their LLaVA records (all four kinds mixed)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    plan = []
    for i in range(n):
        u = i % 16
        kind = ("grounding" if u < 8 else "nofinding" if u < 10 else "multiturn" if u == 10
                else "report" if u < 14 else "vqa")
        plan.append(kind)
    records = []
    for i, kind in enumerate(plan):
        n_find = {"grounding": 1 + int(prng.random() < 0.2), "nofinding": 0, "multiturn": 2,
                  "report": int(prng.random() < 0.6), "vqa": int(prng.random() < 0.5)}[kind]
        drawn = draw_chest(rng, n_find)
        rel = f"images/cxr_{i:04d}.png"
        with atomic_path(out_dir / rel) as tmp:
            Image.fromarray(drawn.pixels, mode="L").save(tmp, format="PNG", optimize=True)
        rec = {"id": f"sample-{i:04d}", "image": rel}
        f = drawn.findings
        if kind == "grounding":
            same = len({x[0] for x in f}) == 1
            q = prng.choice(GROUNDING_QUESTIONS).format(f=f[0][0]) if same else prng.choice(OPEN_QUESTIONS)
            conv = [("human", q), ("gpt", grounding_answer(f, prng))]
            rec["dataset"] = "vindr-cxr" if len(f) == 1 else "chest-imagenome"
        elif kind == "nofinding":
            conv = [("human", prng.choice(OPEN_QUESTIONS)), ("gpt", NO_FINDING)]
            rec["dataset"] = "vindr-cxr"
        elif kind == "multiturn":
            conv = [("human", GROUNDING_QUESTIONS[0].format(f=f[0][0])),
                    ("gpt", f"This finding is located at {_fmt(f[0][1])} in the image."),
                    ("human", f"Is there another {f[1][0]}? Locate it." if f[1][0] == f[0][0]
                              else f"Now locate the {f[1][0]}."),
                    ("gpt", f"This finding is located at {_fmt(f[1][1])} in the image.")]
            rec["dataset"] = "vindr-cxr"
        elif kind == "report":
            conv = [("human", prng.choice(REPORT_QUESTIONS)), ("gpt", report_text(f, i))]
            if i % 3 == 0:
                conv += [("human", "Give the impression in one sentence."),
                         ("gpt", "Focal lung lesion." if f else "No acute cardiopulmonary process.")]
            rec["dataset"] = "mimic-cxr"
        else:
            side = f[0][2].split()[0] if f else prng.choice(["left", "right"])
            conv = [("human", f"<image>\nIs there a focal opacity in the {side} lung? Answer yes or no."),
                    ("gpt", "Yes." if f else "No.")]
            rec["dataset"] = "mimic-cxr-vqa"
        rec["conversations"] = [{"from": a, "value": b} for a, b in conv]
        records.append(rec)
    return records


ANSWER_STYLES = ("short", "radvlm")
# How many findings each image of a grounding set has: "one" (exactly one), or "vindr", a VinDr-CXR-like
# mix: about half the images without a finding, the others with 1, 2 or 3 (equally likely).
MIXES = ("one", "vindr")


def findings_count(mix: str, prng: random.Random) -> int:
    """The number of findings of the next image of a grounding set of this mix."""
    if mix == "one":
        return 1
    return 0 if prng.random() < 0.5 else prng.randint(1, 3)


def grounding_set_answer(findings: list[tuple[str, Box, str]], answer: str, prng: random.Random) -> str:
    """A grounding set's answer: the boxes alone (short, ' and ' between them) or RadVLM's sentences; the no-finding line."""
    if not findings:
        return NO_FINDING
    if answer == "short":
        return " and ".join(_fmt(box) for _, box, _ in findings)
    return grounding_answer(findings, prng)


def grounding_set_records(n: int, out_dir: Path, seed: int = 0, answer: str = "short", mix: str = "one") -> list[dict]:
    """Draw `n` grounding images into out_dir/images (findings per image: `mix`); return grounding records.

    `answer="short"` answers with the boxes alone (`[0.12, 0.34, 0.56, 0.78]`, about 20 tokens of the
    tiny tokenizer per box), `"radvlm"` with RadVLM's sentence around them (about 50). With
    `mix="one"` every image has one finding and the question names it; with `mix="vindr"` about half
    have none (answer: the no-finding line) and the question never presupposes a finding.
    """
    from PIL import Image

    if answer not in ANSWER_STYLES:
        raise ValueError(f"answer style must be one of {ANSWER_STYLES}, got {answer!r}")
    if mix not in MIXES:
        raise ValueError(f"grounding set mix must be one of {MIXES}, got {mix!r}")
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        drawn = draw_chest(rng, findings_count(mix, prng))
        rel = f"images/g{seed}_{i:05d}.png"
        with atomic_path(out_dir / rel) as tmp:
            Image.fromarray(drawn.pixels, mode="L").save(tmp, format="PNG", optimize=True)
        text = grounding_set_answer(drawn.findings, answer, prng)
        if mix == "one":
            question = prng.choice(GROUNDING_QUESTIONS).format(f=drawn.findings[0][0])
        else:
            question = prng.choice(OPEN_QUESTIONS)
        conv = [("human", question), ("gpt", text)]
        records.append({"id": f"g{seed}-{i:05d}", "image": rel, "dataset": "vindr-cxr",
                        "conversations": [{"from": a, "value": b} for a, b in conv]})
    return records


def write_grounding_set(out_dir: str | Path, n: int, seed: int = 0, answer: str = "short", mix: str = "one") -> Path:
    """Write images/ and grounding.json (`n` grounding records, findings per image: `mix`) under out_dir; returns the JSON path."""
    out_dir = Path(out_dir)
    records = grounding_set_records(n, out_dir, seed, answer, mix)
    path = out_dir / "grounding.json"
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(records, fh, indent=1)
        fh.write("\n")
    return path


def write_sample(out_dir: str | Path, n: int = 64, seed: int = 0) -> Path:
    """Write images/ and sample.json (a RadVLM-like LLaVA array) under out_dir; returns the JSON path."""
    out_dir = Path(out_dir)
    records = make_records(n, out_dir, seed)
    path = out_dir / "sample.json"
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(records, fh, indent=1)
        fh.write("\n")
    return path

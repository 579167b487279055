"""Verification of a merged folder against the FSDP shards it came from, independently of the merge code.

1. The shards are read again with `torch.load` and each tensor is reassembled here from
   its DTensor pieces (global shape + placement, torch.chunk layout), not with verl's merger.
2. The folder is loaded the way users load it (transformers `from_pretrained`; peft for an
   adapter), and every tensor is compared with the shards within the dtype's tolerance:
   plain weights as copies, LoRA targets as W + (alpha / r) * B @ A. Extra or missing
   tensors, a wrong dtype, or a wrong `lora_alpha` are errors naming the tensor.
3. The model generates a few tokens for one sample (a parquet row or a plain image prompt)
   with its own processor and chat template; non-finite logits or no new token is an error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medrl.export.merge import MergeError, MergePlan, hf_key, lora_target, torch_dtype

# (rtol, atol) per dtype, as torch.testing uses.
TOLERANCE = {"float32": (1.3e-6, 1e-5), "bfloat16": (1.6e-2, 1e-5), "float16": (1e-3, 1e-5)}


def assemble(key: str, parts: list) -> Any:
    """One full tensor from the per-rank entries of `key` (DTensor pieces or replicated tensors)."""
    import torch
    from torch.distributed.tensor import DTensor

    if not isinstance(parts[0], DTensor):
        for r, p in enumerate(parts[1:], start=1):
            if p.shape != parts[0].shape or not torch.equal(p, parts[0]):
                raise MergeError(f"tensor {key}: rank {r} holds a different copy than rank 0")
        return parts[0].float() if parts[0].is_floating_point() else parts[0]
    shards = [p.placements[-1] for p in parts]  # the last mesh dim is the FSDP one
    if not all(s.is_shard() for s in shards) and not all(s.is_replicate() for s in shards):
        raise MergeError(f"tensor {key}: unsupported placements {parts[0].placements}")
    shape = tuple(parts[0].shape)
    if shards[0].is_replicate():
        return parts[0]._local_tensor.float()
    dim = shards[0].dim
    full = torch.zeros(shape, dtype=torch.float32)
    n = len(parts)
    chunk = math.ceil(shape[dim] / n)  # torch.chunk layout, which FSDP2 uses
    for r, p in enumerate(parts):
        start, stop = min(r * chunk, shape[dim]), min((r + 1) * chunk, shape[dim])
        local = p._local_tensor
        if local.shape[dim] != stop - start:
            raise MergeError(f"tensor {key}: rank {r} holds {local.shape[dim]} rows of dim {dim}, "
                             f"expected {stop - start} of {shape[dim]}")
        full.narrow(dim, start, stop - start).copy_(local.float())
    return full


def read_shards(ckpt_dir: Path, world_size: int) -> dict[str, Any]:
    """Every tensor of the checkpoint as a full float32 tensor, under the shard keys."""
    import torch

    states = [torch.load(ckpt_dir / f"model_world_size_{world_size}_rank_{r}.pt", map_location="cpu",
                         weights_only=False) for r in range(world_size)]
    keys = list(states[0])
    for r, sd in enumerate(states[1:], start=1):
        if set(sd) != set(keys):
            raise MergeError(f"{ckpt_dir}: rank {r} has other tensors than rank 0: "
                             f"{sorted(set(sd) ^ set(keys))[:5]}")
    return {k: assemble(k, [sd[k] for sd in states]) for k in keys}


def expected_weights(shards: dict, lora_alpha: float | None, r: int | None,
                     base: dict | None = None) -> tuple[dict, dict]:
    """(expected merged weights by HF key, LoRA tensors by shard key): W + alpha / r * B @ A where LoRA applies."""
    base = dict(base or {hf_key(k): v for k, v in shards.items() if not lora_target(k)})
    lora = {k: v for k, v in shards.items() if lora_target(k)}
    targets = sorted({lora_target(k) for k in lora})
    for t in targets:
        a = next(v for k, v in lora.items() if lora_target(k) == t and ".lora_A." in k)
        b = next(v for k, v in lora.items() if lora_target(k) == t and ".lora_B." in k)
        w = hf_key(t) + ".weight"
        base[w] = base[w] + (lora_alpha / (r or a.shape[0])) * (b @ a)
    return base, lora


def compare(name: str, got: Any, want: Any, dtype_name: str) -> None:
    """Raise MergeError naming the tensor when `got` (the loaded model) is not `want` (the shards)."""
    import torch

    if tuple(got.shape) != tuple(want.shape):
        raise MergeError(f"tensor {name}: shape {tuple(got.shape)} in the merged model, {tuple(want.shape)} in the shards")
    if got.is_floating_point() and str(got.dtype).removeprefix("torch.") != dtype_name:
        raise MergeError(f"tensor {name}: dtype {got.dtype} in the merged model, {dtype_name} requested")
    rtol, atol = TOLERANCE.get(dtype_name, (1e-5, 1e-6))
    g, w = got.float(), want.to(got.dtype).float() if got.is_floating_point() else want
    if not torch.allclose(g, w, rtol=rtol, atol=atol):
        diff = (g - w).abs().max().item()
        raise MergeError(f"tensor {name}: differs from the FSDP shards by up to {diff:.3g} "
                         f"(tolerance rtol {rtol}, atol {atol} for {dtype_name})")


def verify(plan: MergePlan, out: Path, sample: Any = None, log=print) -> dict:
    """Check the folder `out` against the shards of `plan.ckpt_dir`; returns figures, raises MergeError."""
    import json

    import torch

    from medrl.export.merge import auto_model_class, base_state, build_model, lora_meta

    dtype = torch_dtype(plan.dtype)
    dtype_name = str(dtype).removeprefix("torch.")
    shards = read_shards(plan.ckpt_dir, plan.world_size)
    has_lora = any(lora_target(k) for k in shards)
    meta = lora_meta(plan.ckpt_dir, plan.lora_alpha) if has_lora else {}
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(out if not plan.lora_adapter_only else plan.hf_dir)
    # A LoRA-only save has no base tensors: the base is --base-model (read here on its own, in float32).
    base_weights = base_state(plan, {hf_key(k): v for k, v in shards.items() if not lora_target(k)})
    if has_lora and plan.lora_adapter_only:
        adapter_cfg = json.loads((out / "adapter_config.json").read_text())
        if float(adapter_cfg.get("lora_alpha") or 0) != float(meta["lora_alpha"]):
            raise MergeError(f"adapter_config.json: lora_alpha {adapter_cfg.get('lora_alpha')} but the run used "
                             f"{meta['lora_alpha']}")
        from peft import PeftModel

        # Cloned: build_model assigns the tensors and merge_and_unload adds into them in place.
        base = build_model(plan.hf_dir, {k: v.clone() for k, v in base_weights.items()})
        model = PeftModel.from_pretrained(base, out).merge_and_unload()  # what a user of the adapter gets
        r = int(adapter_cfg["r"])
    else:
        check_file_dtypes(out, dtype_name)
        model = auto_model_class(config).from_pretrained(out, dtype="auto")  # the dtype the folder states
        r = int(meta.get("r") or 0) or None
        if str(model.config.dtype).removeprefix("torch.") != dtype_name:
            raise MergeError(f"{out}/config.json: dtype {model.config.dtype}, {dtype_name} requested")
    want, _ = expected_weights(shards, meta.get("lora_alpha"), r, base_weights)
    got = model.state_dict()
    missing = sorted(set(want) - set(got))
    if missing:
        raise MergeError(f"tensor {missing[0]} of the checkpoint is missing from the merged model "
                         f"({len(missing)} missing)")
    checked = 0
    compare_dtype = dtype_name if not plan.lora_adapter_only else "float32"
    for name in sorted(want):
        compare(name, got[name], want[name], compare_dtype)
        checked += 1
    extra = [k for k in got if k not in want]
    tied = _tied_ok(model, extra)
    if set(extra) - tied:
        raise MergeError(f"tensor {sorted(set(extra) - tied)[0]} of the merged model has no counterpart in the shards")
    log(f"verified {checked} tensors against {plan.world_size} shard(s) ({dtype_name}"
        + (f", LoRA r={r} alpha={meta['lora_alpha']}" if has_lora else "") + ")")
    text = generate_sample(out if not plan.lora_adapter_only else plan.hf_dir, model, sample)
    log(f"sample generation: {text!r}")
    return {"tensors_verified": checked, "sample_output": text}


def check_file_dtypes(out: Path, dtype_name: str) -> None:
    """Every floating tensor stored in the folder's safetensors files has the requested dtype."""
    from safetensors import safe_open

    names = {"bfloat16": "BF16", "float32": "F32", "float16": "F16"}
    files = sorted(out.glob("*.safetensors"))
    if not files:
        raise MergeError(f"{out}: no .safetensors weights were written")
    for f in files:
        with safe_open(f, "np" if dtype_name != "bfloat16" else "pt") as fh:
            for k in fh.keys():
                stored = fh.get_slice(k).get_dtype()
                if stored.startswith(("F", "BF")) and stored != names[dtype_name]:
                    raise MergeError(f"tensor {k} is stored as {stored} in {f.name}, {dtype_name} requested")


def _tied_ok(model, extra: list[str]) -> set[str]:
    """Extra keys that are tied to a checked tensor (e.g. lm_head with tie_word_embeddings)."""
    ok = set()
    sd = model.state_dict()
    ptrs = {}
    for k, v in sd.items():
        ptrs.setdefault(v.data_ptr(), []).append(k)
    for k in extra:
        if any(o not in extra for o in ptrs.get(sd[k].data_ptr(), [])):
            ok.add(k)
    return ok


def generate_sample(processor_dir: Path, model, sample: Any = None, max_new_tokens: int = 8) -> str:
    """Greedy answer of `model` to one sample (EvalRow, or a gray image with a question); checks the logits."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor

    from medrl.export.rows import EvalRow, load_image

    processor = AutoProcessor.from_pretrained(processor_dir)
    if isinstance(sample, EvalRow):
        messages, images = sample.messages, [load_image(im) for im in sample.images]
    else:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
        images = [Image.new("RGB", (112, 112), (90, 90, 90))]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=images or None, return_tensors="pt")
    model = model.eval()
    with torch.inference_mode():
        logits = model(**inputs).logits
        if not torch.isfinite(logits).all():
            raise MergeError("the merged model produces non-finite logits on the sample")
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    if new.numel() == 0:
        raise MergeError("the merged model generated no token on the sample")
    tok = getattr(processor, "tokenizer", processor)
    return tok.decode(new, skip_special_tokens=True)

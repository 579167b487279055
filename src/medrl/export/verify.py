"""Verification of a merged folder against the FSDP shards it came from, independently of the merge code.

Nothing here comes from `medrl.export.merge` but the error type: a bug in the merge's
key mapping, dtype handling or LoRA arithmetic cannot pass its own check.

1. The shards are read again with `torch.load` and each tensor is reassembled here from
   its DTensor pieces (global shape + placement, torch.chunk layout), not with verl's merger.
2. Shard keys are mapped to the names transformers gives the loaded model by this
   module's own rule (`hf_name`), and the folder is loaded the way users load it
   (transformers `from_pretrained`; peft for an adapter). Every tensor is compared with
   the shards within the dtype's tolerance: plain weights as copies, LoRA targets as
   W + (alpha / r) * B @ A. Extra or missing tensors, a wrong dtype, or a wrong
   `lora_alpha` are errors naming the tensor.
3. The model generates a few tokens for one sample (a parquet row or a plain image prompt)
   with its own processor and chat template; non-finite logits or no new token is an error.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from medrl.export.errors import MergeError

# (rtol, atol) per dtype, as torch.testing uses.
TOLERANCE = {"float32": (1.3e-6, 1e-5), "bfloat16": (1.6e-2, 1e-5), "float16": (1e-3, 1e-5)}
DTYPE_NAMES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}  # `medrl merge --dtype` values
_PEFT_PREFIX = "base_model.model."
_LORA_RE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def hf_name(shard_key: str) -> str:
    """The name transformers gives a (peft-wrapped) shard tensor in the loaded model.

    peft wraps the model (`base_model.model.` in front) and each LoRA target (`.base_layer`
    before the weight); the plain model has neither.
    """
    name = shard_key[len(_PEFT_PREFIX):] if shard_key.startswith(_PEFT_PREFIX) else shard_key
    return ".".join(part for part in name.split(".") if part != "base_layer")


def lora_part(shard_key: str) -> tuple[str, str] | None:
    """(module path in the plain model, "A" or "B") of a LoRA tensor, else None."""
    m = _LORA_RE.match(shard_key)
    return (hf_name(m.group("module")), m.group("ab")) if m else None


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


def lora_settings(ckpt_dir: Path, alpha: float | None) -> dict:
    """r / lora_alpha of the run, from verl's lora_train_meta.json with `alpha` overriding; a missing alpha is an error."""
    path = ckpt_dir / "lora_train_meta.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    if alpha is not None:
        meta["lora_alpha"] = alpha
    if not meta.get("lora_alpha"):
        raise MergeError(f"{ckpt_dir}: LoRA checkpoint without a usable lora_alpha; pass --lora-alpha")
    return meta


def expected_weights(shards: dict, lora_alpha: float | None, r: int | None,
                     base: dict | None = None) -> dict:
    """Expected weights of the merged model by HF name: the base, plus alpha / r * B @ A on each LoRA target."""
    want = dict(base or {hf_name(k): v for k, v in shards.items() if lora_part(k) is None})
    pieces: dict[str, dict[str, Any]] = {}
    for k, v in shards.items():
        part = lora_part(k)
        if part is not None:
            pieces.setdefault(part[0], {})[part[1]] = v
    for module, ab in sorted(pieces.items()):
        if set(ab) != {"A", "B"}:
            raise MergeError(f"LoRA module {module}: the shards hold only lora_{next(iter(ab))}")
        weight = module + ".weight"
        if weight not in want:
            raise MergeError(f"LoRA module {module}: no base weight {weight} in the shards or the base model")
        want[weight] = want[weight] + (lora_alpha / (r or ab["A"].shape[0])) * (ab["B"] @ ab["A"])
    return want


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


def model_class(config: Any):
    """The transformers class the folder's config names (what `from_pretrained` users pick)."""
    import transformers

    arch = (getattr(config, "architectures", None) or [""])[0]
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise MergeError(f"config names architecture {arch!r}, which transformers {transformers.__version__} lacks")
    return cls


def model_with_weights(config_dir: Path, weights: dict):
    """The architecture of `config_dir` holding `weights` (float32, assigned without a random init)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(config_dir)
    with init_empty_weights():
        model = model_class(config)(config)
    result = model.load_state_dict(weights, strict=False, assign=True)
    model.tie_weights()
    empty = [n for n, p in model.named_parameters() if p.is_meta]
    if result.unexpected_keys or empty:
        raise MergeError(f"base weights do not fit {config.architectures}: tensor "
                         f"{(result.unexpected_keys or empty)[0]} is {'extra' if result.unexpected_keys else 'missing'}")
    return model


def base_weights(shards: dict, base_model: str | None, ckpt_dir: Path) -> dict:
    """Base weights by HF name: from the shards, or from --base-model when the run saved only the adapter."""
    base = {hf_name(k): v for k, v in shards.items() if lora_part(k) is None}
    if base:
        return base
    if not base_model:
        raise MergeError(f"{ckpt_dir}: the shards hold only LoRA tensors; pass --base-model")
    from transformers import AutoConfig

    model = model_class(AutoConfig.from_pretrained(base_model)).from_pretrained(base_model, dtype="float32")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def verify(ckpt_dir: Path, out: Path, dtype: str, world_size: int, lora_alpha: float | None = None,
           adapter_only: bool = False, base_model: str | None = None, sample: Any = None, log=print) -> dict:
    """Check the folder `out` against the shards in `ckpt_dir`; returns figures, raises MergeError.

    `dtype` is what the merge was asked to write (bf16 | fp32 | fp16); `lora_alpha` overrides
    lora_train_meta.json; `adapter_only`: `out` is a PEFT adapter onto `base_model` (or the shards' base).
    """
    from transformers import AutoConfig

    ckpt_dir, out = Path(ckpt_dir), Path(out)
    if dtype not in DTYPE_NAMES:
        raise MergeError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPE_NAMES)}")
    dtype_name = DTYPE_NAMES[dtype]
    shards = read_shards(ckpt_dir, world_size)
    has_lora = any(lora_part(k) for k in shards)
    meta = lora_settings(ckpt_dir, lora_alpha) if has_lora else {}
    base = base_weights(shards, base_model, ckpt_dir)
    hf_dir = ckpt_dir / "huggingface"
    if has_lora and adapter_only:
        adapter_cfg = json.loads((out / "adapter_config.json").read_text())
        if float(adapter_cfg.get("lora_alpha") or 0) != float(meta["lora_alpha"]):
            raise MergeError(f"adapter_config.json: lora_alpha {adapter_cfg.get('lora_alpha')} but the run used "
                             f"{meta['lora_alpha']}")
        from peft import PeftModel

        # Cloned: the model takes the tensors and merge_and_unload adds into them in place.
        user_base = model_with_weights(hf_dir, {k: v.clone() for k, v in base.items()})
        model = PeftModel.from_pretrained(user_base, out).merge_and_unload()  # what a user of the adapter gets
        r = int(adapter_cfg["r"])
    else:
        check_file_dtypes(out, dtype_name)
        model = model_class(AutoConfig.from_pretrained(out)).from_pretrained(out, dtype="auto")  # the stated dtype
        r = int(meta.get("r") or 0) or None
        if str(model.config.dtype).removeprefix("torch.") != dtype_name:
            raise MergeError(f"{out}/config.json: dtype {model.config.dtype}, {dtype_name} requested")
    want = expected_weights(shards, meta.get("lora_alpha"), r, base)
    got = model.state_dict()
    missing = sorted(set(want) - set(got))
    if missing:
        raise MergeError(f"tensor {missing[0]} of the checkpoint is missing from the merged model "
                         f"({len(missing)} missing)")
    checked = 0
    compare_dtype = dtype_name if not adapter_only else "float32"
    for name in sorted(want):
        compare(name, got[name], want[name], compare_dtype)
        checked += 1
    extra = [k for k in got if k not in want]
    tied = _tied_ok(model, extra)
    if set(extra) - tied:
        raise MergeError(f"tensor {sorted(set(extra) - tied)[0]} of the merged model has no counterpart in the shards")
    log(f"verified {checked} tensors against {world_size} shard(s) ({dtype_name}"
        + (f", LoRA r={r} alpha={meta['lora_alpha']}" if has_lora else "") + ")")
    text = generate_sample(out if not adapter_only else hf_dir, model, sample)
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

    from medrl.evaluation.rows import EvalRow, load_image

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

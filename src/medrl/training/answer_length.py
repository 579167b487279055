"""Do the rows' reference answers fit in the response length a stage lets the model write?

verl cuts every rollout at `data.max_response_length` tokens. A grounding row whose reference
answer is longer (two or three boxes at about 20 tokens each) cannot be answered in full: its
rollouts lose their last boxes, earn less than a right answer would, and RL learns from cut
answers. Nothing fails; the run just learns less. Measured on the VinDr-like mix: a third of the
training rows (2-3 boxes, 40-66 tokens) against cpu_tiny's 32-token limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from medrl.training.recipes import Recipe
from medrl.training.verl_keys import verl_default


@dataclass(frozen=True)
class AnswerFit:
    """How many reference answers exceed a response-length limit, in tokens (end token included)."""

    rows: int
    over: int
    longest: int
    limit: int
    example: str = ""

    def warning(self, where: str) -> str:
        """One plain line for a user, empty when every answer fits."""
        if not self.over:
            return ""
        return (f"{where}: {self.over} of {self.rows} rows have a reference answer longer than "
                f"data.max_response_length={self.limit} tokens (longest {self.longest}, e.g. {self.example[:60]!r}); "
                f"verl cuts those rollouts, so they cannot earn a full answer's reward. "
                f"Set data.max_response_length to at least {self.longest}.")


def answer_fit(answers: Iterable[str], count_tokens: Callable[[str], int], limit: int) -> AnswerFit:
    """Count the answers whose token count plus the end token exceeds `limit` (empty answers skipped)."""
    rows = over = longest = 0
    example = ""
    for text in answers:
        if not text:
            continue
        rows += 1
        n = count_tokens(text) + 1  # the end-of-turn token verl's rollout writes too
        if n > longest:
            longest = n
        if n > limit:
            over += 1
            example = example or text
    return AnswerFit(rows, over, longest, limit, example)


def reference_answers(rows: Sequence[dict]) -> list[str]:
    """The reference answer text of verl rows (`extra_info.answer`, written by `medrl prepare`)."""
    return [str((r.get("extra_info") or {}).get("answer") or "") for r in rows]


def parquet_answer_fit(path: str, tokenizer_dir: str, limit: int, max_rows: int = 50_000) -> AnswerFit:
    """`answer_fit` over a verl parquet's reference answers (the first `max_rows`), counted with the model's tokenizer."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    pf = pq.ParquetFile(path)
    rows: list[dict] = []
    for batch in pf.iter_batches(batch_size=8192, columns=["extra_info"]):
        rows += batch.to_pylist()
        if len(rows) >= max_rows:
            break
    answers = reference_answers(rows[:max_rows])
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    # One batched call: a fast tokenizer counts 50,000 short answers in about a second.
    lengths = dict(zip(answers, (len(ids) for ids in tok(answers, add_special_tokens=False)["input_ids"])))
    return answer_fit(answers, lengths.__getitem__, limit)


def warn_cut_answers(recipe: Recipe, model: str, echo: Callable[[str], None] = print) -> list[str]:
    """Print (and return) one warning per PPO stage and split whose reference answers exceed its response length.

    Never fails a run: a tokenizer or file it cannot read is skipped with a note.
    """
    warnings = []
    for st in (s for s in recipe.stages if s.trainer == "ppo"):
        limit = int(st.overrides.get("data.max_response_length", verl_default("ppo", "data.max_response_length")))
        for split in ("train", "val"):
            path = recipe.data.get(split)
            if not isinstance(path, str) or not Path(path).is_file():
                continue
            try:
                fit = parquet_answer_fit(path, model, limit)
            except Exception as exc:  # a check that cannot run must not stop the run it checks
                echo(f"[{st.name}] note: reference answer lengths not checked ({type(exc).__name__}: {exc})")
                continue
            if fit.over:
                warnings.append(fit.warning(f"{st.name} {split} ({Path(path).name})"))
                echo(f"[{st.name}] warning: {warnings[-1]}")
    return warnings

"""Export and evaluation: verified HuggingFace checkpoints from verl runs, and evaluation reports.

Modules: `rows` (reading verl RL parquet rows), `generate` (HF / vLLM generation with a
resumable JSONL log), `metrics` (IoU, mAP@0.5 as RadVLM computes it, BLEU, ROUGE-L),
`evaluate` (score with the training rewards, summarise), `eval_pipeline` (`medrl eval`
end to end), `report` and `plots` (JSON, Markdown, PNG), `merge` (FSDP checkpoint -> HF
folder) and `verify` (checks that folder against the shards; it shares only `errors`
with the merge), `commands` (`medrl merge`, `medrl eval`).
"""

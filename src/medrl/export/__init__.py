"""Export and evaluation: verified HuggingFace checkpoints from verl runs, and evaluation reports.

Modules: `rows` (reading verl RL parquet rows), `generate` (HF / vLLM generation with a
resumable JSONL log), `metrics` (IoU, mAP@0.5 as RadVLM computes it, BLEU, ROUGE-L),
`evaluate` (score with the training rewards, summarise), `report` and `plots` (JSON,
Markdown, PNG), `merge` and `verify` (FSDP checkpoint -> HF folder, checked against the
shards), `commands` (`medrl merge`, `medrl eval`).
"""

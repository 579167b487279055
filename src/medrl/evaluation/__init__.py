"""Evaluation: generate answers on verl RL rows, score them with the training rewards, report.

Modules: `rows` (reading verl RL parquet rows), `generate` (HF / vLLM generation with a
resumable JSONL log), `metrics` (IoU, mAP@0.5 as RadVLM computes it, BLEU, ROUGE-L),
`evaluate` (score with the training rewards, summarise), `eval_pipeline` (`medrl eval`
end to end), `report` and `plots` (JSON, Markdown, PNG), `commands` (`medrl eval`).
"""

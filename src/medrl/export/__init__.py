"""Export: verified HuggingFace checkpoints from verl runs.

Modules: `merge` (FSDP checkpoint -> HF folder), `verify` (checks that folder against the
shards; it shares only `errors` with the merge), `commands` (`medrl merge`). Evaluation of the
merged folder is `medrl.evaluation`.
"""

"""Rewards for medical VLM post-training, each a plain function with verl's `compute_score` signature.

Modules: `answer` (reply parts), `iou`, `bleu`, `findings`, `learned` (optional RadGraph /
CheXbert F1), `format`, `vqa`, `enhanced`, `judge`, `change`, `compose` (routing by
data_source), `commands` (`medrl reward`). The files under `custom_reward/` are the doors
verl loads by path; they only import from here. Rules shared with the converters live below
this package: `medrl.boxes` (reading boxes), `medrl.no_finding` (what states no finding),
`medrl.change_action`.
"""

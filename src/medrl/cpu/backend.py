"""Imported by verl itself (`VERL_USE_EXTERNAL_MODULES`): registers medrl's CPU platform and HF rollout.

`import verl` imports every module named in `VERL_USE_EXTERNAL_MODULES`, in the driver, in
each Ray worker and in each torchrun child, because they all inherit the environment that
`medrl.training.env.run_env` builds. Nothing in site-packages is modified.
"""

from __future__ import annotations

from medrl.cpu import hf_rollout, verl_platform

verl_platform.register()
hf_rollout.register()

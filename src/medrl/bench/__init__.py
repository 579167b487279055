"""Code only the benchmarks use (benchmarks/), kept out of the core packages.

It lives in the package, not beside the scripts, because verl imports it by name inside its
own processes: `budget_trainer` (a trainer mode, through `VERL_USE_EXTERNAL_MODULES` in Ray
workers) and `shuffled_reward` (a reward file verl loads by path in its reward workers). What two
scripts share (`generated_sets`, `rescore`, `progress`) lives here too, so neither script imports
the other.
"""

"""Seed-compatible door into medrl's converter (logic: medrl.data.convert).

    python examples/data_preprocess/mimic_mm.py DATA.json --local_dir DIR [--image_root DIR]
"""

import sys

from medrl.data.seed_scripts import seed_script_main

if __name__ == "__main__":
    sys.exit(seed_script_main("mimic_mm"))

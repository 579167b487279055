"""Seed-compatible door into medrl's converter (logic: medrl.data.convert).

    python examples/data_preprocess/mimic_mm.py DATA.json --local_dir DIR [--image_root DIR]
"""

import sys

from medrl.data.doors import door_main

if __name__ == "__main__":
    sys.exit(door_main("mimic_mm"))

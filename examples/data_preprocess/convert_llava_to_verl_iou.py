"""Seed-compatible door into medrl's converter (logic: medrl.data.convert).

    python examples/data_preprocess/convert_llava_to_verl_iou.py DATA.parquet --output_dir DIR --split_name train [--image_root DIR]
"""

import sys

from medrl.data.seed_scripts import seed_script_main

if __name__ == "__main__":
    sys.exit(seed_script_main("convert_llava_to_verl_iou"))

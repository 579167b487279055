"""Seed-compatible door into medrl's converter (logic: medrl.data.convert).

    python examples/data_preprocess/llava_json_to_verl_iou_fast.py DATA.json --local_dir DIR [--dataset_filter vindr-cxr ...] [--batch_size N] [--fast] [--image_root DIR]
"""

import sys

from medrl.data.seed_scripts import seed_script_main

if __name__ == "__main__":
    sys.exit(seed_script_main("llava_json_to_verl_iou_fast"))

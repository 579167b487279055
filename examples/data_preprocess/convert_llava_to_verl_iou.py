"""Seed-compatible door into medrl's converter (logic: medrl.data.convert).

    python examples/data_preprocess/convert_llava_to_verl_iou.py DATA.parquet --output_dir DIR --split_name train [--image_root DIR]
"""

import sys

from medrl.data.doors import door_main

if __name__ == "__main__":
    sys.exit(door_main("convert_llava_to_verl_iou"))

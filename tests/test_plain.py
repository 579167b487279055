"""Plain Python values (medrl.plain): what the box reader, the reward spec and the eval rows all use."""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from medrl.plain import plain


def test_arrays_hydra_and_tuples_become_lists_and_dicts():
    rows = np.array([np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.5, 0.5, 0.6, 0.6])], dtype=object)
    assert plain(rows) == [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.6, 0.6]]
    cfg = OmegaConf.create({"routes": {"medrl/grounding": [{"name": "iou", "weight": 1.0}]}})
    assert plain(cfg) == {"routes": {"medrl/grounding": [{"name": "iou", "weight": 1.0}]}}
    assert type(plain(cfg)["routes"]["medrl/grounding"]) is list
    assert plain({1: (b"png", "text", np.int64(3))}) == {"1": [b"png", "text", 3]}


def test_readers_use_it():
    """A numpy ground truth reads as boxes; a Hydra spec loads; a parquet row's arrays become lists."""
    from medrl.boxes import read_truth_boxes
    from medrl.evaluation.rows import row_from_record
    from medrl.rewards import compose

    assert read_truth_boxes(np.array([np.array([0.1, 0.2, 0.5, 0.6])], dtype=object)) == [(0.1, 0.2, 0.5, 0.6)]
    spec = OmegaConf.create({"routes": {"x": [{"name": "iou", "weight": 1.0}]}})
    assert compose.route_names(compose.load_spec(spec)) == ["x"]
    row = row_from_record({"prompt": np.array([{"role": "user", "content": "<image>Where?"}], dtype=object),
                           "images": np.array([{"bytes": b"png"}], dtype=object), "data_source": "medrl/grounding",
                           "reward_model": {"ground_truth": np.array([np.array([0.1, 0.2, 0.5, 0.6])],
                                                                     dtype=object)},
                           "extra_info": {"index": np.int64(4)}}, 0, "f.parquet")
    assert row.ground_truth == [[0.1, 0.2, 0.5, 0.6]] and row.key == "0:4" and row.images == [{"bytes": b"png"}]

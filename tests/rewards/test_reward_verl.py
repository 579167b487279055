"""Every file under custom_reward/ loaded and run by verl's own reward code (path/name config), on CPU."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from medrl.rewards import bleu, change, compose, enhanced, format as fmt, iou, vqa

import verl.trainer.ppo.reward as verl_reward  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.workers.reward_manager.batch import BatchRewardManager  # noqa: E402

from test_judge import FakeJudgeServer  # noqa: E402

GT_BOX = np.array([np.array([0.1, 0.2, 0.5, 0.6])], dtype=object)  # parquet hands nested lists back like this
ROWS = [
    ("medrl/grounding", "<think>The right lung.</think><answer>Nodule at [0.1, 0.2, 0.5, 0.6]</answer>", GT_BOX,
     {"width": 1000, "height": 800}),
    ("medrl/grounding", "<think>ok</think><answer>Nodule at [0.3, 0.2, 0.5, 0.6] and [0.7, 0.7, 0.9, 0.9]</answer>",
     "[[0.1,0.2,0.5,0.6]]", {"width": 1000, "height": 800}),
    ("medrl/grounding", "<answer>No abnormalities or lesions are detected.</answer>", "[]", {}),
    ("medrl/report", "<think>look</think><answer>Small left pleural effusion. No pneumothorax.</answer>",
     "Small left pleural effusion. No pneumothorax.", {}),
    ("medrl/report", "The heart is enlarged.", "Small left pleural effusion.", {}),
    ("medrl/vqa", "<think>a</think><answer>Yes.</answer>", "yes", {}),
    ("medrl/vqa", "B) effusion", "A", {}),
]
GROUNDING = [r for r in ROWS if r[0] == "medrl/grounding"]
CHANGE = [
    ("medrl/change_action", "<answer>[0.30, 0.40, 0.20]</answer>", "[0.3, 0.4, 0.2]", {}),
    ("medrl/change_action", "<answer>[0.90, 0.90, 0.05]</answer>", "[0.3, 0.4, 0.2]", {}),
    ("medrl/change_grounding", "<answer>[0.2, 0.3, 0.4, 0.5]</answer>", "[[0.2,0.3,0.4,0.5]]", {}),
]
REPORT = [r for r in ROWS if r[0] == "medrl/report"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from medrl.training.tiny_model import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def make_batch(rows, tokenizer) -> DataProto:
    """A DataProto as verl's trainer hands it to the reward manager (left-padded prompts, right-padded responses)."""
    pad = tokenizer.pad_token_id
    resp = [tokenizer.encode(r[1]) for r in rows]
    r_len = max(len(x) for x in resp)
    p_len = 4
    responses = torch.full((len(rows), r_len), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), p_len + r_len), dtype=torch.long)
    for i, ids in enumerate(resp):
        responses[i, :len(ids)] = torch.tensor(ids)
        attn[i, :p_len + len(ids)] = 1
    prompts = torch.full((len(rows), p_len), 3, dtype=torch.long)
    return DataProto.from_dict(
        tensors={"prompts": prompts, "responses": responses, "attention_mask": attn,
                 "input_ids": torch.cat([prompts, responses], 1)},
        non_tensors={
            "data_source": np.array([r[0] for r in rows], dtype=object),
            "reward_model": np.array([{"style": "rule", "ground_truth": r[2]} for r in rows], dtype=object),
            "extra_info": np.array([dict(r[3]) for r in rows], dtype=object),
        },
    )


def verl_config(path: str, name: str, manager: str = "naive", **reward_kwargs):
    return OmegaConf.create({"reward": {
        "custom_reward_function": {"path": path, "name": name, "reward_kwargs": reward_kwargs},
        "reward_manager": {"source": "register", "name": manager, "module": {"path": None, "name": "x"}},
        "sandbox_fusion": None,
    }})


def run_reward_loop(config, rows, tokenizer):
    """verl's reward-loop path: load_reward_manager, then run_single per sample on the manager's own loop."""
    manager = verl_reward.load_reward_manager(config, tokenizer)
    data = make_batch(rows, tokenizer)

    async def all_rows():
        return await asyncio.gather(*[manager.run_single(data[i:i + 1]) for i in range(len(data))])

    outs = manager.loop.run_until_complete(all_rows())
    rm_scores = manager.assemble_rm_scores(data, [o["reward_score"] for o in outs])
    return outs, rm_scores


def expected(fn, rows, **kw):
    return [fn(ds, sol, gt, dict(info), **kw) for ds, sol, gt, info in rows]


def check(outs, rm_scores, want):
    assert [o["reward_score"] for o in outs] == pytest.approx([w["score"] for w in want])
    key_sets = {tuple(o["reward_extra_info"]) for o in outs}
    assert len(key_sets) == 1, f"reward keys differ between samples: {key_sets}"
    for o, w in zip(outs, want):
        for k, v in w.items():
            assert o["reward_extra_info"][k] == pytest.approx(v, nan_ok=True), k
    assert rm_scores.sum(dim=1).tolist() == pytest.approx([w["score"] for w in want])


@pytest.mark.parametrize("fname,module,rows", [
    ("iou_reward.py", iou, GROUNDING),
    ("enhanced_medical_reward.py", enhanced, GROUNDING),
    ("bleu_reward.py", bleu, REPORT),
    ("format_reward.py", fmt, ROWS),
    ("change_reward.py", change, CHANGE),
])
def test_single_reward_files(repo_root, tokenizer, fname, module, rows):
    outs, rm = run_reward_loop(verl_config(str(repo_root / "custom_reward" / fname), "compute_score"), rows, tokenizer)
    want = expected(module.compute_score, rows)
    check(outs, rm, want)
    assert len({w["score"] for w in want}) > 1  # the rows tell good from bad answers


def test_iou_file_scores(repo_root, tokenizer):
    outs, _ = run_reward_loop(verl_config(str(repo_root / "custom_reward/iou_reward.py"), "compute_score"),
                              GROUNDING, tokenizer)
    assert [o["reward_score"] for o in outs] == pytest.approx([1.0, 0.5 / 2, 0.8])  # IoU 0.5 shared with a false box; no finding


@pytest.mark.parametrize("fname", ["medrl_reward.py", "reward_config.py"])
@pytest.mark.parametrize("name", ["compute_score", "compute_score_async"])
def test_composed_reward_files_route_mixed_batch(repo_root, tokenizer, fname, name):
    path = repo_root / "custom_reward" / fname
    spec = {"routes": {"medrl/grounding": {"iou": 0.9, "format": 0.1}, "medrl/report": {"bleu": 1.0},
                       "medrl/vq*": {"vqa": 1.0}}}
    outs, rm = run_reward_loop(verl_config(str(path), name, spec=json.dumps(spec)), ROWS, tokenizer)
    check(outs, rm, expected(compose.compute_score, ROWS, spec=spec))
    outs, rm = run_reward_loop(verl_config(str(path), name), ROWS + CHANGE, tokenizer)  # default routes
    check(outs, rm, expected(compose.compute_score, ROWS + CHANGE))
    by_source = {r[0]: [] for r in ROWS}
    for r, o in zip(ROWS, outs):
        by_source[r[0]].append(o["reward_score"])
    assert by_source["medrl/vqa"] == [1.0, 0.0]
    assert by_source["medrl/report"][0] == 1.0


def test_composed_reward_with_spec_file_and_unknown_source(repo_root, tokenizer, tmp_path):
    spec = tmp_path / "rewards.yaml"
    spec.write_text("routes:\n  medrl/grounding: {enhanced: 1.0}\n")
    path = str(repo_root / "custom_reward/medrl_reward.py")
    outs, rm = run_reward_loop(verl_config(path, "compute_score", spec=str(spec)), GROUNDING, tokenizer)
    check(outs, rm, expected(compose.compute_score, GROUNDING, spec=str(spec)))
    with pytest.raises(ValueError, match=r"medrl/report.*routes in the spec: \['medrl/grounding'\]"):
        run_reward_loop(verl_config(path, "compute_score", spec=str(spec)), REPORT, tokenizer)


def test_batch_reward_manager_runs_compute_score_batch(repo_root, tokenizer):
    config = verl_config(str(repo_root / "custom_reward/medrl_reward.py"), "compute_score_batch")
    manager = BatchRewardManager(tokenizer, num_examine=0, compute_score=verl_reward.get_custom_reward_fn(config))
    out = manager(make_batch(ROWS, tokenizer), return_dict=True)
    want = expected(compose.compute_score, ROWS)
    assert out["reward_tensor"].sum(dim=1).tolist() == pytest.approx([w["score"] for w in want])
    assert out["reward_extra_info"]["vqa"] == [w["vqa"] for w in want]


@pytest.mark.parametrize("name", ["compute_score", "compute_score_async"])
def test_judge_file_through_reward_loop(repo_root, tokenizer, name, monkeypatch):
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    with FakeJudgeServer() as srv:
        config = verl_config(str(repo_root / "custom_reward/judge_reward.py"), name, base_url=srv.url, retries=0)
        outs, rm = run_reward_loop(config, REPORT, tokenizer)
        assert [o["reward_score"] for o in outs] == [0.8, 0.8]
        assert len(srv.requests) == 2
        config = verl_config(str(repo_root / "custom_reward/judge_reward.py"), "compute_score_batch",
                             base_url=srv.url, retries=0)
        manager = BatchRewardManager(tokenizer, num_examine=0, compute_score=verl_reward.get_custom_reward_fn(config))
        out = manager(make_batch(REPORT, tokenizer), return_dict=True)
        assert out["reward_extra_info"]["judge_parsed"] == [1.0, 1.0]


def test_every_reward_file_is_a_door_verl_can_run(repo_root, tokenizer):
    """Each file under custom_reward/, found on disk: verl loads it by path and runs it through its reward loop;
    it scores every kind of row exactly as the medrl reward it re-exports, and its scores follow the answers."""
    import importlib.util

    files = sorted((repo_root / "custom_reward").glob("*.py"))
    rows = ROWS + CHANGE + [("medrl/report", "<answer>GARBLE</answer>", "Small left pleural effusion.", {})]
    with FakeJudgeServer() as srv:
        for path in files:
            spec = importlib.util.spec_from_file_location(f"door_{path.stem}", path)
            door = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(door)
            medrl_fn = door.compute_score
            assert medrl_fn.__module__.startswith("medrl.rewards."), f"{path.name} holds reward logic of its own"
            kwargs = {"base_url": srv.url, "retries": 0} if medrl_fn.__module__ == "medrl.rewards.judge" else {}
            outs, rm = run_reward_loop(verl_config(str(path), "compute_score", **kwargs), rows, tokenizer)
            check(outs, rm, expected(medrl_fn, rows, **kwargs))
            scores = [o["reward_score"] for o in outs]
            assert all(0.0 <= v <= 1.0 for v in scores) and len(set(scores)) > 1, (path.name, scores)

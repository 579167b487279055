"""medrl's HF-generate rollout server: batching, log-probs equal to a plain forward, weight loading."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from PIL import Image

import verl  # noqa: E402,F401  (a broken install fails here, never skips)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from verl.workers.config import HFModelConfig, RolloutConfig

    from medrl.cpu.hf_rollout import HFRolloutServer

    config = RolloutConfig(name="hf", response_length=12, prompt_length=256, tensor_model_parallel_size=1)
    return HFRolloutServer(config, HFModelConfig(path=str(tiny_model_dir)))


@pytest.fixture(scope="module")
def prompts(tiny_model_dir):
    """Three image prompts of different lengths, tokenised the way verl's agent loop does."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    out = []
    for i in range(3):
        img = Image.fromarray((np.random.default_rng(i).random((112, 112, 3)) * 255).astype("uint8"))
        msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where?" + " please" * i}]}]
        text = proc.apply_chat_template(msg, add_generation_prompt=True, tokenize=False)
        ids = proc(text=[text], images=[img], return_tensors="pt")["input_ids"][0].tolist()
        out.append((ids, img))
    return proc, out


def _generate(server, prompts, **sampling):
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True, **sampling}

    async def run():
        return await asyncio.gather(
            *[server.generate(prompt_ids=ids, sampling_params=dict(params), image_data=[img]) for ids, img in prompts]
        )

    return asyncio.run(run())


def _forward_logprobs(model, proc, ids, img, tokens, with_mm_types=True):
    """Log-probs of `tokens` after prompt `ids` from one unpadded forward pass (what verl's actor does)."""
    full = ids + tokens
    vision = proc.image_processor(images=[img], return_tensors="pt")
    kwargs = dict(input_ids=torch.tensor([full]), pixel_values=vision["pixel_values"],
                  image_grid_thw=vision["image_grid_thw"])
    if with_mm_types:
        kwargs["mm_token_type_ids"] = torch.tensor(proc.create_mm_token_type_ids([full]))
    with torch.no_grad():
        logits = model(**kwargs).logits[0, len(ids) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def test_concurrent_requests_share_one_generate_and_logprobs_match_forward(server, prompts):
    proc, items = prompts
    before = server.batches
    outs = _generate(server, items)
    assert server.batches == before + 1  # three concurrent requests, one generate() call
    for (ids, img), out in zip(items, outs):
        assert 1 <= len(out.token_ids) <= 12
        assert len(out.log_probs) == len(out.token_ids)
        ref = _forward_logprobs(server.model, proc, ids, img, out.token_ids)
        assert torch.allclose(ref, torch.tensor(out.log_probs), atol=1e-5)


def test_positions_without_mm_token_type_ids_disagree(server, prompts):
    """The 3D (image-aware) rotary positions matter: dropping mm_token_type_ids changes log-probs."""
    proc, items = prompts
    ids, img = items[2]
    out = _generate(server, [items[2]])[0]
    with_types = _forward_logprobs(server.model, proc, ids, img, out.token_ids)
    without = _forward_logprobs(server.model, proc, ids, img, out.token_ids, with_mm_types=False)
    # A random-init model is barely position-sensitive, yet the 1D fallback is still off by
    # far more than the rollout's own error (measured ~5e-7 against ~8e-4).
    assert (with_types - without).abs().max() > 1e-4
    assert torch.allclose(with_types, torch.tensor(out.log_probs), atol=1e-5)


def test_vision_placeholders_are_never_sampled(server, prompts):
    _, items = prompts
    cfg = server.model.config
    banned = {cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id}
    for _ in range(3):
        for out in _generate(server, items, temperature=2.0):
            assert not banned & set(out.token_ids)


def test_greedy_is_deterministic(server, prompts):
    _, items = prompts
    a = _generate(server, items, temperature=0.0)
    b = _generate(server, items, temperature=0.0)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]


def test_load_weights_by_name(server, prompts):
    _, items = prompts
    state = {k: v.clone() for k, v in server.model.state_dict().items()}
    greedy = _generate(server, items[:1], temperature=0.0)[0]
    try:
        scaled = {k: v * 0.0 if k.endswith("lm_head.weight") else v for k, v in state.items()}
        assert server.load_weights(scaled, global_steps=7) == len(state)
        out = _generate(server, items[:1], temperature=0.0)[0]
        assert out.extra_fields["global_steps"] == 7
        # all-zero logits: every token equally likely
        assert np.allclose(out.log_probs, -np.log(server.model.config.text_config.vocab_size), atol=1e-4)
        with pytest.raises(KeyError, match="not in the rollout model"):
            server.load_weights({"no.such.weight": torch.zeros(1)})
    finally:
        server.load_weights(state)
    assert _generate(server, items[:1], temperature=0.0)[0].token_ids == greedy.token_ids

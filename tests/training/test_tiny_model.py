"""The offline tiny Qwen2.5-VL loads through transformers and verl and generates with an image."""

from __future__ import annotations

import json

import torch
from PIL import Image


def test_tiny_model_loads_and_generates(tiny_model_dir):
    from transformers import AutoModelForImageTextToText
    from verl.utils import hf_processor, hf_tokenizer

    processor = hf_processor(str(tiny_model_dir))
    tokenizer = hf_tokenizer(str(tiny_model_dir))
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    for tok in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|box_start|>"):
        assert tokenizer.convert_tokens_to_ids(tok) != tokenizer.unk_token_id
        assert len(tokenizer.tokenize(tok)) == 1, tok

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    meta = json.loads((tiny_model_dir / "medrl_tiny_model.json").read_text())
    assert meta["parameters"] == sum(p.numel() for p in model.parameters()) < 1_000_000

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Locate the nodule."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.count("<|image_pad|>") == 1 and text.endswith("<|im_start|>assistant\n")
    image = Image.new("RGB", (128, 128), (40, 40, 40))
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    # 128x128 -> smart_resize within 112*112 pixels -> 8x8 patches -> 16 merged tokens.
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]

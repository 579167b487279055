"""A tiny random-init Qwen2.5-VL built offline: model, tokenizer, chat template, processor.

No model hub is needed: the tokenizer is a byte-level BPE trained here on a small
radiology-flavoured corpus with every Qwen special token, and the image processor
uses small min/max pixels so a 128x128 image becomes 16 vision tokens. The folder
loads with the same code paths a real checkpoint does (AutoProcessor,
AutoModelForImageTextToText, verl's hf_processor / hf_tokenizer).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Qwen2-VL's chat template (system default, one vision block per image entry).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2/2.5 special tokens, in Qwen's id order after the BPE vocabulary.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

_CORPUS = [
    "You are a helpful assistant. system user assistant",
    "<think> The image shows the chest. I look at the lungs, heart and pleura. </think>",
    "<answer> [0.12, 0.34, 0.56, 0.78] </answer>",
    "Please locate the abnormality and give the bounding box coordinates [x1, y1, x2, y2].",
    "There is a nodule located at the coordinates [0.25, 0.40, 0.45, 0.62] and [0.61, 0.18, 0.80, 0.39].",
    "This finding is located at [0.05, 0.90, 0.33, 0.99] in the image.",
    "No abnormalities or lesions are detected on this Chest X-ray.",
    "Findings: cardiomegaly, pleural effusion, pneumothorax, consolidation, atelectasis, opacity, mass.",
    "The lungs are clear. The heart size is normal. No pleural effusion or pneumothorax.",
    "Impression: no acute cardiopulmonary process. Left lower lobe right upper lobe.",
    "Is there an abnormality in this image? yes no. Which region? A B C D.",
    "0123456789 .,;:()[]{}<>/-_'\" bbox_2d",
]


def build_tokenizer(out_dir: Path, vocab_size: int = 512):
    """Train a byte-level BPE tokenizer with Qwen's special tokens and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.add_special_tokens(QWEN_SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | os.PathLike, seed: int = 0, image_pixels: int = 112 * 112) -> Path:
    """Write a random-init tiny Qwen2.5-VL folder to `out_dir` and return its path."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    # Exactly the tokenizer's size: verl's vLLM rollout masks ids past it (the "out-of-vocabulary
    # tail"), which a random-init model would give real probability, so rollout and actor would
    # disagree on every token by the mass of that tail.
    vocab = len(tokenizer)

    # Attention heads are 32 wide: vLLM's CPU attention accepts head sizes 32, 64, 80, ... only
    # (vllm/v1/attention/backends/cpu_attn.py), and the rehearsal rolls out with vLLM.
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            # mrope sections sum to head_dim / 2 (128 / 4 / 2 = 16).
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=128,
            fullatt_block_indexes=[1],
            window_size=112,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
    )
    model.save_pretrained(out)

    pixels = dict(min_pixels=28 * 28 * 4, max_pixels=image_pixels)
    image_processor = Qwen2VLImageProcessor(**pixels)
    video_processor = Qwen2VLVideoProcessor(**pixels)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "medrl_tiny_model.json").write_text(
        json.dumps({"seed": seed, "parameters": sum(p.numel() for p in model.parameters())}, indent=2)
    )
    return out

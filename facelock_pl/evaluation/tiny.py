"""Tiny, randomly initialised InstructPix2Pix and CLIP, built locally without downloads.

For tests and benchmarks only: they exercise every code path of `edit` and `evaluate` (8-channel UNet,
CLIP text encoder and tokenizer, VAE, Euler-ancestral scheduler, CLIP image/text towers) in seconds.
The tokenizer is a byte-level one with no merges: every character is a token.
"""

from __future__ import annotations

import torch


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE (GPT-2, CLIP) uses for bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def tiny_tokenizer():
    """A CLIP tokenizer with no merges: one token per byte-level character (and its word-final form)."""
    from transformers import CLIPTokenizer

    chars = _byte_level_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({f"{c}</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32)


def tiny_instruct_pix2pix(seed: int = 0):
    """A StableDiffusionInstructPix2PixPipeline of tiny random parts (latent stride 2, 8-channel UNet)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    return StableDiffusionInstructPix2PixPipeline(**_tiny_parts(seed, unet_in=8), safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)


def tiny_img2img(seed: int = 0):
    """A StableDiffusionImg2ImgPipeline of tiny random parts (latent stride 2, 4-channel UNet)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    return StableDiffusionImg2ImgPipeline(**_tiny_parts(seed, unet_in=4), safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)


def _tiny_parts(seed: int, unet_in: int) -> dict:
    """UNet (`unet_in` input channels), VAE, CLIP text encoder, tokenizer and Euler-ancestral scheduler, tiny and random."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=unet_in, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    scheduler = EulerAncestralDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                                beta_start=0.00085, beta_end=0.012)
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}


def tiny_clip(seed: int = 0):
    """A CLIPModel of tiny random towers (32 px images) and a CLIPProcessor with the tiny tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = CLIPConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=8),
            projection_dim=16,
        )
        model = CLIPModel(config).eval()
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=images, tokenizer=tokenizer)

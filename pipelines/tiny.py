"""Tiny random-weight Stable Diffusion components for ``--demo``, the tests and the CPU benchmark.

Shapes follow diffusers' own pipeline tests (tiny UNet/VAE/CLIP) but keep the real CLIP tokenizer and an
8x VAE so that sizes, latents and metadata behave exactly as with real checkpoints. Weights are seeded, so
the same call always builds the same model.
"""

from __future__ import annotations

from typing import Any

SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}


def tiny_unet(cross_attention_dim: int = 32, in_channels: int = 4, seed: int = 0, **extra: Any):
    """A two-level UNet (one cross-attention level) with SD's original block layout."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    config: dict[str, Any] = dict(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    config.update(extra)
    return UNet2DConditionModel(**config)


def tiny_vae(seed: int = 0):
    """A four-level VAE: 8x down-sampling and 4 latent channels, like SD's, with tiny widths."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )


def tiny_text_encoder(hidden_size: int = 32, num_layers: int = 2, seed: int = 0, with_projection: bool = False,
                      hidden_act: str = "quick_gelu"):
    """A small CLIP text model over the real 49,408-token vocabulary."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_attention_heads=4,
        num_hidden_layers=num_layers,
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=hidden_size,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def tiny_sd15_components(seed: int = 0) -> dict[str, Any]:
    """Components for ``StableDiffusionPipeline(**components)``: a tiny SD 1.x model with random weights."""
    from diffusers import PNDMScheduler

    from .tokenizers import clip_tokenizer

    return {
        "unet": tiny_unet(cross_attention_dim=32, seed=seed),
        "vae": tiny_vae(seed=seed),
        "text_encoder": tiny_text_encoder(hidden_size=32, seed=seed),
        "tokenizer": clip_tokenizer(),
        "scheduler": PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_sd15_pipeline(seed: int = 0):
    """A ready ``StableDiffusionPipeline`` built from ``tiny_sd15_components`` (fp32, CPU)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**tiny_sd15_components(seed), requires_safety_checker=False)

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


def tiny_vae(seed: int = 0, levels: int = 4, scaling_factor: float = 0.18215):
    """A VAE with 4 latent channels and tiny widths: four levels = SD's 8x down-sampling, three = the x4's 4x."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16)[:levels],
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def tiny_autoencoder_tiny(seed: int = 0):
    """A tiny random TAESD (diffusers' ``AutoencoderTiny``): four stages (SD's 8x) of 8 channels, one block each."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    model = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)
    return model.eval()


def taesd_decoder_state(model: Any) -> dict[str, Any]:
    """An ``AutoencoderTiny``'s decoder as the taesd repository's ``taesd_decoder.pth`` holds it: its own
    ``nn.Sequential`` indices (diffusers' ``decoder.layers.i`` is taesd's ``i + 1``: taesd's layer 0 is the clamp)."""
    out = {}
    for key, tensor in model.decoder.state_dict().items():
        index, _, rest = key.removeprefix("layers.").partition(".")
        out[f"{int(index) + 1}.{rest}"] = tensor.detach().clone().contiguous()
    return out


def write_taesd_decoder(model: Any, path: Any) -> Any:
    """Save ``model``'s decoder in taesd's layout as ``path`` (``.pth``: a ``torch.save``d state dict, as the taesd
    repository ships it; ``.safetensors``: the same tensors); a folder path without suffix: a diffusers
    ``AutoencoderTiny`` folder (``save_pretrained``). Returns the path."""
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(taesd_decoder_state(model), str(path))
    elif path.suffix in (".pth", ".pt"):
        torch.save(taesd_decoder_state(model), path)
    else:
        model.save_pretrained(str(path), safe_serialization=True)
    return path


def tiny_text_encoder(hidden_size: int = 32, num_layers: int = 2, seed: int = 0, with_projection: bool = False,
                      hidden_act: str = "quick_gelu", intermediate_size: int | None = None,
                      projection_dim: int | None = None):
    """A small CLIP text model over the real 49,408-token vocabulary."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_attention_heads=4,
        num_hidden_layers=num_layers,
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=projection_dim or hidden_size,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def tiny_sd15_components(seed: int = 0) -> dict[str, Any]:
    """Components for ``StableDiffusionPipeline(**components)``: a tiny SD 1.x model with random weights."""
    return _sd15_components(tiny_unet(cross_attention_dim=32, seed=seed), tiny_vae(seed=seed), seed)


def _sd15_components(unet: Any, vae: Any, seed: int) -> dict[str, Any]:
    """An SD 1.x component dict around ``unet`` and ``vae``: tiny text encoder, real tokenizer, PNDM scheduler."""
    from diffusers import PNDMScheduler

    from .tokenizers import clip_tokenizer

    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": tiny_text_encoder(hidden_size=32, seed=seed),
        "tokenizer": clip_tokenizer(),
        "scheduler": PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_sd15_inpaint_components(seed: int = 0) -> dict[str, Any]:
    """A tiny SD 1.x inpainting checkpoint: a 9-channel UNet (latents + mask + masked-picture latents)."""
    return _sd15_components(tiny_unet(cross_attention_dim=32, in_channels=9, seed=seed), tiny_vae(seed=seed), seed)


def tiny_depth_components(seed: int = 0) -> dict[str, Any]:
    """SD 2's depth-to-image interface at tiny size: a 5-channel UNet (latents + depth) beside the tiny SD 1.x text
    encoder (the family is the registry's to say; real files are detected by their 1024-wide cross-attention)."""
    return _sd15_components(tiny_unet(cross_attention_dim=32, in_channels=5, seed=seed), tiny_vae(seed=seed), seed)


def tiny_dpt(seed: int = 0, image_size: int = 32) -> tuple[Any, Any]:
    """A tiny random DPT depth estimator and its image processor (transformers' own test sizes): ``(model,
    processor)``, to be saved as a ``models/depth/`` folder with ``save_pretrained``."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    config = DPTConfig(
        image_size=image_size, patch_size=16, num_channels=3, hidden_size=32, num_hidden_layers=4,
        backbone_out_indices=[0, 1, 2, 3], num_attention_heads=4, intermediate_size=37,
        neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5],
        head_in_index=-1, is_hybrid=False,
    )
    processor = DPTImageProcessor(size={"height": image_size, "width": image_size}, keep_aspect_ratio=False,
                                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return DPTForDepthEstimation(config).eval(), processor


def write_tiny_dpt(folder: Any, seed: int = 0) -> Any:
    """``tiny_dpt`` saved as a DPT folder (config.json, weights, preprocessor_config.json); returns the folder."""
    from pathlib import Path

    model, processor = tiny_dpt(seed)
    folder = Path(folder)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def demo_unet(seed: int = 0):
    """The ``--demo`` UNet: SD 1.x's interface (4 latent channels, 32-wide cross-attention) at a tiny cost per pixel.

    Four levels of 4-16 channels and attention only in the middle block, at 1/8 of the latent size (32x32 tokens
    for a 2048x2048 image; ``tiny_unet`` attends over all 65k latent pixels there). On a 2-core CPU one step of a
    2048x2048 image then takes well under a second. Measured, not guessed: two levels with cross-attention at
    half size were 20x slower (CPU attention over 16k tokens), and the per-op overhead of small tensors makes
    fewer, wider levels no faster.
    """
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(4, 8, 8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 4,
        up_block_types=("UpBlock2D",) * 4,
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=4,
    )


def demo_vae(seed: int = 0, scaling_factor: float = 0.18215):
    """The ``--demo`` VAE: SD's 8x down-sampling (four levels) with 4 channels, one decoder resnet per level (none
    in the encoder: ``layers_per_block=0``) and no mid-block attention (which would attend over every latent pixel:
    65k tokens at 2048x2048). Decoding is still about a third of a 512x512 demo image's time."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(4, 4, 4, 4),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=0,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling_factor,
        mid_block_add_attention=False,
    )


def demo_sd15_components(seed: int = 0) -> dict[str, Any]:
    """Components of the ``--demo`` checkpoint: an SD 1.x model cheap enough for requests at the validation
    limits on a CPU (``demo_unet``, ``demo_vae``, the tiny CLIP text encoder), random weights."""
    return _sd15_components(demo_unet(seed=seed), demo_vae(seed=seed), seed)


def tiny_sd15_pipeline(seed: int = 0):
    """A ready ``StableDiffusionPipeline`` built from ``tiny_sd15_components`` (fp32, CPU)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**tiny_sd15_components(seed), requires_safety_checker=False)


SD2V_SCHEDULER_CONFIG: dict[str, Any] = {
    **SD15_SCHEDULER_CONFIG,
    "_class_name": "DDIMScheduler",
    "prediction_type": "v_prediction",
}
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    **SD15_SCHEDULER_CONFIG,
    "_class_name": "EulerDiscreteScheduler",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}
X4_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
X4_LOW_RES_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "num_train_timesteps": 1000,
}


def tiny_sd2v_components(seed: int = 0) -> dict[str, Any]:
    """A tiny SD 2.x v-prediction model: cross-attention and OpenCLIP-style text encoder 1024 wide.

    1024 is what family detection (and diffusers) keys on for SD 2.x, so it cannot shrink; one text layer with a
    narrow MLP keeps the model at ~55 M parameters, nearly all of them the token embedding.
    """
    from diffusers import DDIMScheduler

    from .tokenizers import OPENCLIP_PAD, clip_tokenizer

    return {
        "unet": tiny_unet(cross_attention_dim=1024, seed=seed, use_linear_projection=True),
        "vae": tiny_vae(seed=seed),
        "text_encoder": tiny_text_encoder(hidden_size=1024, num_layers=1, seed=seed, hidden_act="gelu",
                                          intermediate_size=64),
        "tokenizer": clip_tokenizer(OPENCLIP_PAD),
        "scheduler": DDIMScheduler.from_config(SD2V_SCHEDULER_CONFIG),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_sdxl_components(seed: int = 0) -> dict[str, Any]:
    """A tiny SDXL base model (diffusers' SDXL test sizes).

    The second text encoder has 10 layers so that the sentinel key
    ``conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias`` exists in the original layout, and it
    is wider (64) than the first (32): diffusers tells the two apart by width when loading a single file.
    Cross-attention width = 32 + 64; added condition = 6 time ids x 8 + pooled projection 32 = 80.
    """
    from diffusers import EulerDiscreteScheduler

    from .tokenizers import OPENCLIP_PAD, clip_tokenizer

    unet = tiny_unet(
        cross_attention_dim=96,
        seed=seed,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
    )
    return {
        "unet": unet,
        "vae": tiny_vae(seed=seed, scaling_factor=0.13025),
        "text_encoder": tiny_text_encoder(hidden_size=32, seed=seed),
        "text_encoder_2": tiny_text_encoder(hidden_size=64, num_layers=10, seed=seed + 1, with_projection=True,
                                            hidden_act="gelu", intermediate_size=32, projection_dim=32),
        "tokenizer": clip_tokenizer(),
        "tokenizer_2": clip_tokenizer(OPENCLIP_PAD),
        "scheduler": EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_x4_components(seed: int = 0) -> dict[str, Any]:
    """A tiny SD x4 upscaler (diffusers' ``test_stable_diffusion_upscale.py`` shapes).

    7 UNet input channels (4 latent + 3 low-res RGB), a 3-level VAE (the pipeline's ``vae_scale_factor`` is
    ``2 ** (levels - 1)`` = 4) with the real scaling 0.08333, a DDPM ``low_res_scheduler`` and 1000 noise-level
    class embeddings like the real model (``max_noise_level`` is 350).
    """
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel

    from .tokenizers import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        use_linear_projection=True,
        only_cross_attention=(True, True, False),
        num_class_embeds=1000,
    )
    return {
        "unet": unet,
        "vae": tiny_vae(seed=seed, levels=3, scaling_factor=0.08333),
        "text_encoder": tiny_text_encoder(hidden_size=32, seed=seed, hidden_act="gelu"),
        "tokenizer": clip_tokenizer(),
        "scheduler": DDIMScheduler.from_config(X4_SCHEDULER_CONFIG),
        "low_res_scheduler": DDPMScheduler.from_config(X4_LOW_RES_SCHEDULER_CONFIG),
    }


def tiny_x4_pipeline(seed: int = 0):
    """A ready ``StableDiffusionUpscalePipeline`` built from ``tiny_x4_components`` (fp32, CPU)."""
    from diffusers import StableDiffusionUpscalePipeline

    return StableDiffusionUpscalePipeline(**tiny_x4_components(seed), max_noise_level=350)

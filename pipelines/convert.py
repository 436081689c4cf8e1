"""Diffusers -> original Stable Diffusion key layout ("LDM" layout), as model sites ship single files.

The pip package of diffusers only converts the other way (``loaders/single_file_utils.py``); this module follows
the mapping of diffusers' repository scripts ``convert_diffusers_to_original_stable_diffusion.py`` and
``convert_diffusers_to_original_sdxl.py``, generalised to any ``layers_per_block`` / number of levels so that tiny
test models convert too. Used by ``--demo`` and the tests to write files exactly like real ones:

* UNet    -> ``model.diffusion_model.*``
* VAE     -> ``first_stage_model.*`` (attention projections as 1x1 convs)
* SD 1.x  CLIP      -> ``cond_stage_model.transformer.text_model.*`` + ``embeddings.position_ids``
* SD 2.x  OpenCLIP  -> ``cond_stage_model.model.*`` (fused ``in_proj``)
* SDXL    CLIP-L    -> ``conditioner.embedders.0.transformer.text_model.*``; OpenCLIP-bigG ->
  ``conditioner.embedders.1.model.*``

transformers 5 saves ``CLIPTextModel`` without the ``text_model.`` level; real files carry it, so it is added back.
"""

from __future__ import annotations

import re
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."

_UNET_DIRECT = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}
_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}
_OPENCLIP_LAYER = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}


def _rename_prefix(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest


def _unet_key(key: str, layers: int, up_has_attention: list[bool]) -> str:
    """Map one diffusers UNet key to its original name (``layers`` = layers_per_block)."""
    stride = layers + 1
    for new, old in _UNET_DIRECT.items():
        if key.startswith(new):
            return old + key[len(new):]
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{stride * i + j + 1}.0." + _rename_prefix(rest, _UNET_RESNET)
    if m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{stride * i + j + 1}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{stride * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}." + _rename_prefix(m[2], _UNET_RESNET)
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"output_blocks.{stride * i + j}.0." + _rename_prefix(rest, _UNET_RESNET)
    if m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"output_blocks.{stride * i + j}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        i = int(m[1])
        # The upsampler sits after the resnet (index 1) or after resnet + attention (index 2).
        return f"output_blocks.{stride * i + layers}.{2 if up_has_attention[i] else 1}.conv.{m[2]}"
    raise KeyError(f"no original-layout name for UNet key {key!r}")


def unet_to_original(state_dict: dict[str, Any], config: dict[str, Any], prefix: str = UNET_PREFIX) -> dict:
    """Rename a diffusers ``UNet2DConditionModel`` state dict to ``model.diffusion_model.*`` keys."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError("per-level layers_per_block is not supported by the original layout")
    up_has_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    return {prefix + _unet_key(k, layers, up_has_attention): v for k, v in state_dict.items()}


def _vae_key(key: str, levels: int) -> str:
    key = key.replace("conv_norm_out.", "norm_out.")
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}." + m[3].replace("conv_shortcut.", "nin_shortcut.")
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        return f"{m[1]}.mid.attn_1." + _rename_prefix(m[2], _VAE_ATTENTION)
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}." + m[3].replace("conv_shortcut.", "nin_shortcut.")
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        # diffusers counts decoder levels from the bottom, the original from the top.
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}." + m[3].replace("conv_shortcut.", "nin_shortcut.")
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
    return key


def vae_to_original(state_dict: dict[str, Any], config: dict[str, Any], prefix: str = VAE_PREFIX) -> dict:
    """Rename a diffusers ``AutoencoderKL`` state dict to the original layout (``first_stage_model.*``).

    Pass ``prefix=""`` for a standalone VAE file as A1111's ``models/VAE`` holds them.
    """
    levels = len(config["block_out_channels"])
    out = {}
    for key, value in state_dict.items():
        new = _vae_key(key, levels)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)  # the original attention uses 1x1 convs
        out[prefix + new] = value
    return out


def _with_text_model_level(key: str) -> str:
    if key.startswith("text_model.") or key.startswith("text_projection."):
        return key
    return "text_model." + key


def clip_to_original(state_dict: dict[str, Any], prefix: str = SD1_CLIP_PREFIX) -> dict:
    """OpenAI CLIP text encoder (SD 1.x, SDXL's first) -> ``<prefix>text_model.*`` with ``position_ids``."""
    import torch

    out = {prefix + _with_text_model_level(k): v for k, v in state_dict.items() if "position_ids" not in k}
    positions = out[prefix + "text_model.embeddings.position_embedding.weight"].shape[0]
    out[prefix + "text_model.embeddings.position_ids"] = torch.arange(positions, dtype=torch.int64)[None]
    return out


def open_clip_to_original(state_dict: dict[str, Any], prefix: str = SD2_OPENCLIP_PREFIX) -> dict:
    """OpenCLIP text encoder (SD 2.x, SDXL's second) -> ``<prefix>*`` with fused ``in_proj`` attention."""
    import torch

    sd = {_with_text_model_level(k): v for k, v in state_dict.items() if "position_ids" not in k}
    out: dict[str, Any] = {
        prefix + "token_embedding.weight": sd.pop("text_model.embeddings.token_embedding.weight"),
        prefix + "positional_embedding": sd.pop("text_model.embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": sd.pop("text_model.final_layer_norm.weight"),
        prefix + "ln_final.bias": sd.pop("text_model.final_layer_norm.bias"),
    }
    width = out[prefix + "token_embedding.weight"].shape[1]
    projection = sd.pop("text_projection.weight", None)
    # OpenCLIP stores the projection as [width, embed]; SD 2.x files carry one although diffusers ignores it, and
    # diffusers reads its first dimension as the width when splitting in_proj.
    out[prefix + "text_projection"] = projection.T.contiguous() if projection is not None else torch.eye(width)
    fused: dict[tuple[int, str], dict[str, Any]] = {}
    for key, value in sd.items():
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)", key)
        if not m:
            raise KeyError(f"no original-layout name for text encoder key {key!r}")
        layer, rest = int(m[1]), m[2]
        if q := re.match(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
            fused.setdefault((layer, q[2]), {})[q[1]] = value
            continue
        out[f"{prefix}transformer.resblocks.{layer}." + _rename_prefix(rest, _OPENCLIP_LAYER)] = value
    for (layer, kind), parts in fused.items():
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out


def pipeline_to_original(components: dict[str, Any]) -> dict[str, Any]:
    """Whole-checkpoint state dict in the original layout from diffusers components (SD 1.x, 2.x or SDXL).

    The text encoder layout follows the family: SDXL when ``text_encoder_2`` is present, OpenCLIP when the first
    text encoder is 1024 wide (SD 2.x), OpenAI CLIP otherwise. Tensors are made contiguous (safetensors needs it).
    """
    unet, vae, te = components["unet"], components["vae"], components["text_encoder"]
    sd: dict[str, Any] = {}
    sd.update(unet_to_original(unet.state_dict(), dict(unet.config)))
    sd.update(vae_to_original(vae.state_dict(), dict(vae.config)))
    te2 = components.get("text_encoder_2")
    if te2 is not None:
        sd.update(clip_to_original(te.state_dict(), SDXL_CLIP_PREFIX))
        sd.update(open_clip_to_original(te2.state_dict(), SDXL_OPENCLIP_PREFIX))
    elif te.config.hidden_size == 1024:
        sd.update(open_clip_to_original(te.state_dict(), SD2_OPENCLIP_PREFIX))
    else:
        sd.update(clip_to_original(te.state_dict(), SD1_CLIP_PREFIX))
    return {k: v.detach().contiguous() for k, v in sd.items()}

"""Model families as data: what each kind of Stable Diffusion checkpoint needs to be loaded and run.

A family names one architecture + prediction type. Everything the rest of Atelier needs to know about it lives
in one ``FamilySpec`` row: the bundled diffusers config folder used for offline single-file loading
(``pipelines/configs/<key>/``), the native image size, the prediction type, the 4x3 latent->RGB preview map and
the diffusers pipeline class per task.

Inpainting families (9-channel UNet) only run through the inpaint pipelines: for plain txt2img the engine passes a
blank image and a full white mask, as A1111 does. The other SD families inpaint through the same pipelines' 4-channel
path. SD 2's depth model (5-channel UNet) runs image to image only, through the depth-to-image pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

# ComfyUI's latent_formats.SD15 factors (also fine for SD 2.x: same VAE).
SD15_LATENT_RGB = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
]
# ComfyUI's latent_formats.SDXL factors and bias.
SDXL_LATENT_RGB = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
]
SDXL_LATENT_RGB_BIAS = [0.1084, -0.0175, -0.0011]

# "inpaint" over a normal (4-channel) checkpoint: the inpaint pipelines' 4-channel path, which re-noises the latents
# outside the mask each step
_SD_PIPELINES = {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
                 "inpaint": "StableDiffusionInpaintPipeline"}
_SD_INPAINT_PIPELINES = {
    "txt2img": "StableDiffusionInpaintPipeline",
    "img2img": "StableDiffusionInpaintPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
}
_SDXL_PIPELINES = {"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
                   "inpaint": "StableDiffusionXLInpaintPipeline"}
# SD 2's depth model (5-channel UNet: latents + depth): image to image only, the depth map from a DPT model or upload
_SD_DEPTH_PIPELINES = {"img2img": "StableDiffusionDepth2ImgPipeline"}
_SDXL_INPAINT_PIPELINES = {
    "txt2img": "StableDiffusionXLInpaintPipeline",
    "img2img": "StableDiffusionXLInpaintPipeline",
    "inpaint": "StableDiffusionXLInpaintPipeline",
}


@dataclass(frozen=True)
class FamilySpec:
    """One model family. ``pipelines`` maps a task ("txt2img", "img2img", "upscale", …) to a diffusers class name."""

    key: str
    label: str
    config_dir: Path | None
    native_size: int
    prediction_type: str
    latent_rgb_factors: list[list[float]] | None
    latent_rgb_bias: list[float] | None
    pipelines: dict[str, str] = field(default_factory=dict)
    is_xl: bool = False
    is_inpaint: bool = False
    is_depth: bool = False  # a depth-to-image model: its UNet takes a depth map beside the latents

    def supports(self, task: str) -> bool:
        """Whether this family can run ``task``."""
        return task in self.pipelines


def _spec(key: str, label: str, size: int, prediction: str, rgb, bias, pipelines: dict[str, str], **kw) -> FamilySpec:
    return FamilySpec(key, label, CONFIGS_DIR / key, size, prediction, rgb, bias, dict(pipelines), **kw)


FAMILIES: dict[str, FamilySpec] = {
    spec.key: spec
    for spec in (
        _spec("sd15", "SD 1.x", 512, "epsilon", SD15_LATENT_RGB, None, _SD_PIPELINES),
        _spec("sd15-inpaint", "SD 1.x inpainting", 512, "epsilon", SD15_LATENT_RGB, None, _SD_INPAINT_PIPELINES,
              is_inpaint=True),
        _spec("sd2", "SD 2.x (512, epsilon)", 512, "epsilon", SD15_LATENT_RGB, None, _SD_PIPELINES),
        _spec("sd2-v", "SD 2.x (768, v-prediction)", 768, "v_prediction", SD15_LATENT_RGB, None, _SD_PIPELINES),
        _spec("sd2-inpaint", "SD 2.x inpainting", 512, "epsilon", SD15_LATENT_RGB, None, _SD_INPAINT_PIPELINES,
              is_inpaint=True),
        _spec("sd2-depth", "SD 2.x depth-to-image", 512, "epsilon", SD15_LATENT_RGB, None, _SD_DEPTH_PIPELINES,
              is_depth=True),
        _spec("sdxl", "SDXL base", 1024, "epsilon", SDXL_LATENT_RGB, SDXL_LATENT_RGB_BIAS, _SDXL_PIPELINES,
              is_xl=True),
        _spec("sdxl-inpaint", "SDXL inpainting", 1024, "epsilon", SDXL_LATENT_RGB, SDXL_LATENT_RGB_BIAS,
              _SDXL_INPAINT_PIPELINES, is_xl=True, is_inpaint=True),
        # The x4 upscaler's latents are not SD's (4x VAE, scaling 0.08333): no cheap preview map.
        _spec("x4-upscaler", "SD x4 upscaler", 512, "v_prediction", None, None,
              {"upscale": "StableDiffusionUpscalePipeline"}),
    )
}

# VAE compatibility: a VAE made for one of these groups fits every family of the group.
VAE_GROUPS: dict[str, str] = {
    "sd15": "sd", "sd15-inpaint": "sd", "sd2": "sd", "sd2-v": "sd", "sd2-inpaint": "sd", "sd2-depth": "sd",
    "sdxl": "sdxl", "sdxl-inpaint": "sdxl", "x4-upscaler": "x4",
}


def family(key: str) -> FamilySpec:
    """Return the ``FamilySpec`` for ``key`` (one of ``FAMILIES``); ``KeyError`` names the known keys."""
    try:
        return FAMILIES[key]
    except KeyError:
        raise KeyError(f"unknown model family {key!r}; known: {', '.join(FAMILIES)}") from None

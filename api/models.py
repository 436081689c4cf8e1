"""Request and response bodies of the ``/sdapi/v1`` routes, in AUTOMATIC1111's field names and shapes.

These models only check types: every field that A1111 clients send is optional (``null`` means "the default"),
and unknown fields are kept aside (``model_extra``) so that the route can log and ignore them, as A1111 does.
Ranges, sizes, sampler names and images are checked once, by ``pipelines.request.GenerationRequest``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    """A1111 clients send many fields Atelier does not use: keep them aside instead of refusing the request."""

    model_config = ConfigDict(extra="allow")


class GenerationFields(_Lenient):
    """Fields shared by txt2img and img2img (A1111's ``StableDiffusionProcessingAPI``)."""

    prompt: str | None = Field(None, description="What to draw.")
    negative_prompt: str | None = Field(None, description="What to avoid.")
    styles: list[str] | None = Field(
        None, description="Names of saved prompt styles (/sdapi/v1/prompt-styles), applied in order; a name that is "
        "not in the styles file is left out and named in the info's warnings.")
    seed: int | None = Field(-1, description="-1 for a random seed.")
    subseed: int | None = Field(-1, description="Variation seed: reported back, used only with subseed_strength.")
    subseed_strength: float | None = Field(0.0, description="Variation strength: not available (must be 0).")
    seed_resize_from_h: int | None = None
    seed_resize_from_w: int | None = None
    sampler_name: str | None = Field(None, description="A1111 sampler label, e.g. 'Euler a', 'DPM++ 2M Karras'.")
    sampler_index: str | None = Field(None, description="Old name of sampler_name (used when sampler_name is empty).")
    scheduler: str | None = Field(None, description="Schedule type: Automatic, Uniform, Karras, Exponential, Beta.")
    batch_size: int | None = Field(1, description="Images per batch (1-8). Per request, width x height x steps x "
                                   "batch_size x n_iter may be at most 4,096 steps of a 512x512 image "
                                   "(e.g. 16 x 8 images of 512x512 at 32 steps, or one 2048x2048 image at 150 steps; "
                                   "img2img counts steps x denoising_strength).")
    n_iter: int | None = Field(1, description="Batch count (1-16): batches run one after the other. See batch_size "
                               "for the work limit per request.")
    steps: int | None = Field(None, description="Sampling steps (1-150). Default: the server's default steps.")
    cfg_scale: float | None = Field(7.0, description="Classifier-free guidance scale (1-30).")
    width: int | None = Field(512, description="Image width in px: a multiple of 8 from 64 to 2048.")
    height: int | None = Field(512, description="Image height in px: a multiple of 8 from 64 to 2048.")
    restore_faces: bool | None = Field(None, description="Face restoration: not available (must be false).")
    tiling: bool | None = Field(None, description="Seamless tiling: the picture repeats without seams when laid "
                                "side by side (the UNet's and VAE's convolutions pad circularly for this run).")
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = Field(
        None, description="img2img: how much of the init image is redrawn (0-1, default 0.75). txt2img with enable_hr: "
        "the hires pass's strength (default 0.7).")
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = Field(
        None, description="Per-request settings: sd_model_checkpoint, sd_vae, CLIP_stop_at_last_layers (clip skip, "
        "1-12), emphasis (Original, No norm, Ignore, None), token_merging_ratio, deep_cache and deep_cache_interval "
        "are honoured, others ignored."
    )
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = Field(None, description="SDXL refiner: not available (must be empty).")
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    comments: dict[str, Any] | None = None
    script_name: str | None = Field(
        None, description="A1111 script: 'sd upscale' on img2img (see /sdapi/v1/scripts); others are not available.")
    script_args: list[Any] | None = Field(
        None, description="The script's arguments; 'sd upscale': [info, tile_overlap (0-256 px), upscaler (a name from "
        "/sdapi/v1/upscalers or its index there), scale_factor (1-4)]. Tiles are width x height.")
    send_images: bool | None = Field(True, description="Return the images in the response.")
    save_images: bool | None = Field(False, description="Atelier always saves images to its outputs folder.")
    alwayson_scripts: dict[str, Any] | None = Field(
        None, description="Extension scripts: not available (must be empty or disabled)."
    )
    force_task_id: str | None = None
    infotext: str | None = None
    clip_skip: int | None = Field(
        None, description="Atelier (sent by some clients): clip skip for this request, 1-12; "
        "override_settings.CLIP_stop_at_last_layers wins when both are given.")


class Txt2ImgRequest(GenerationFields):
    """``POST /sdapi/v1/txt2img`` (A1111's ``StableDiffusionTxt2ImgProcessingAPI``)."""

    enable_hr: bool | None = Field(
        False, description="Hires. fix: a first pass at width x height, an upscale, then a second pass at the large "
        "size with the same seed (denoising_strength is its strength).")
    firstphase_width: int | None = Field(
        None, description="Legacy (A1111 before hr_scale): the first pass's width; width x height is then the hires "
        "size.")
    firstphase_height: int | None = Field(None, description="Legacy: the first pass's height (see firstphase_width).")
    hr_scale: float | None = Field(None, description="Hires. fix: upscale by (1-4, default 2).")
    hr_upscaler: str | None = Field(
        None, description="Hires. fix: a latent mode (/sdapi/v1/latent-upscale-modes, default 'Latent') or a pixel "
        "upscaler's name from /sdapi/v1/upscalers (not the SD x4 upscaler).")
    hr_second_pass_steps: int | None = Field(None, description="Hires. fix: steps of the second pass (0: as steps).")
    hr_resize_x: int | None = Field(None, description="Hires. fix: resize width to (0: from hr_scale).")
    hr_resize_y: int | None = Field(None, description="Hires. fix: resize height to (0: from hr_scale).")
    hr_checkpoint_name: str | None = Field(
        None, description="Hires. fix with another checkpoint: not available (empty or 'Use same checkpoint').")
    hr_sampler_name: str | None = Field(None, description="Hires. fix: the second pass's sampler (empty: the same).")
    hr_scheduler: str | None = Field(None, description="Hires. fix: the second pass's schedule type (empty: the same).")
    hr_prompt: str | None = Field(None, description="Hires. fix: the second pass's prompt (empty: the same).")
    hr_negative_prompt: str | None = Field(None, description="Hires. fix: the second pass's negative prompt.")
    firstpass_image: str | None = Field(None, description="A first pass from elsewhere: not available (empty).")


class OutpaintSides(BaseModel):
    """Atelier's ``outpaint`` of ``/sdapi/v1/img2img``: px added on each side (multiples of 8). A side not named
    here is a 422, so that a misspelt side is never silently left out."""

    model_config = ConfigDict(extra="forbid")

    left: int | None = Field(0, description="px added on the left.")
    right: int | None = Field(0, description="px added on the right.")
    up: int | None = Field(0, description="px added at the top.")
    down: int | None = Field(0, description="px added at the bottom.")


class Img2ImgRequest(GenerationFields):
    """``POST /sdapi/v1/img2img`` (A1111's ``StableDiffusionImg2ImgProcessingAPI``)."""

    init_images: list[str] | None = Field(
        None, description="One init image, as raw base64 or a data: URL (PNG, JPEG or WebP)."
    )
    resize_mode: int | str | None = Field(
        0, description="0 just resize, 1 crop and resize, 2 resize and fill (or the names)."
    )
    image_cfg_scale: float | None = None
    mask: str | None = Field(
        None, description="Inpainting mask, raw base64 or a data: URL: white (or a brush layer's opaque pixels) is "
        "redrawn; resized to the init image. Empty or null: no mask (plain img2img).")
    mask_blur: int | None = Field(
        None, description="Mask blur in px (0-64); when sent it sets mask_blur_x and mask_blur_y both.")
    mask_blur_x: int | None = Field(None, description="Mask blur along x (0-64, default 4).")
    mask_blur_y: int | None = Field(None, description="Mask blur along y (0-64, default 4).")
    inpainting_fill: int | str | None = Field(
        None, description="Masked content: 0 fill (default), 1 original, 2 latent noise, 3 latent nothing.")
    inpaint_full_res: bool | int | None = Field(
        None, description="Inpaint area: true (or 1, the default) 'Only masked': the mask's surroundings drawn at "
        "width x height and pasted back; false (or 0) 'Whole picture'.")
    inpaint_full_res_padding: int | None = Field(
        None, description="'Only masked' padding in px around the mask (0-256, default 0).")
    inpainting_mask_invert: bool | int | None = Field(
        None, description="Mask mode: 0 (false, default) inpaint masked, 1 (true) inpaint not masked.")
    initial_noise_multiplier: float | None = Field(
        None, description="Noise multiplier for img2img (0-1.5, default 1).")
    latent_mask: str | None = Field(None, description="A separate latent mask: not available (must be empty).")
    include_init_images: bool | None = Field(
        False, description="Echo the init images (and the mask) in `parameters`.")
    outpaint: OutpaintSides | None = Field(
        None, description="Atelier: outpainting, px (multiples of 8) added on each side; the new strips and a seam "
        "into the old picture are inpainted, and the picture grows by them.")
    depth_map: str | None = Field(
        None, description="Atelier: the depth map of an SD 2 depth-to-image checkpoint (white = near), raw base64 "
        "or a data: URL; empty: estimated by the DPT model of models/depth/.")


class TextToImageResponse(BaseModel):
    """A1111's txt2img answer. ``info`` is a JSON *string* (A1111's ``Processed.js()``)."""

    images: list[str] = Field(default_factory=list, description="Base64 PNGs with the A1111 'parameters' chunk.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="The request, with defaults filled in.")
    info: str = Field("", description="JSON string: prompt, seed, all_seeds, infotexts, sd_model_name, ...")


class ImageToImageResponse(TextToImageResponse):
    """A1111's img2img answer (same shape as txt2img)."""


class ProgressState(BaseModel):
    """A1111's ``shared.state`` subset that clients read."""

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    job_timestamp: str = "0"
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False
    stopping_generation: bool = False
    queue_position: int = Field(0, description="Atelier: jobs ahead of the current one (0 = running).")


class ProgressResponse(BaseModel):
    """``GET /sdapi/v1/progress``."""

    progress: float = Field(0.0, description="0..1 across all batches of the current job.")
    eta_relative: float = Field(0.0, description="Seconds left, estimated.")
    state: ProgressState = Field(default_factory=ProgressState)
    current_image: str | None = Field(None, description="Base64 PNG preview of the current step, or null.")
    textinfo: str | None = None
    current_task: str | None = None
    pool: list[dict[str, Any]] | None = Field(
        None, description="Atelier with --pool: each replica (name, node, pid, the job it runs, its checkpoint, "
                          "jobs done); null without a pool.")


class ExtrasBaseRequest(_Lenient):
    """What ``/extra-single-image`` and ``/extra-batch-images`` share (A1111's ``ExtrasBaseRequest``)."""

    resize_mode: int | None = Field(0, description="0: scale by upscaling_resize; 1: to upscaling_resize_w x _h.")
    show_extras_results: bool | None = True
    gfpgan_visibility: float | None = Field(0, description="Face restoration: not available (must be 0).")
    codeformer_visibility: float | None = Field(0, description="Face restoration: not available (must be 0).")
    codeformer_weight: float | None = 0
    upscaling_resize: float | None = Field(2, description="Scale factor (1-8), with resize_mode 0.")
    upscaling_resize_w: int | None = Field(512, description="Target width (px), with resize_mode 1.")
    upscaling_resize_h: int | None = Field(512, description="Target height (px), with resize_mode 1.")
    upscaling_crop: bool | None = Field(True, description="resize_mode 1: crop the centre to exactly that size.")
    upscaler_1: str | None = Field("None", description="A name from /sdapi/v1/upscalers ('None': a plain resize).")
    upscaler_2: str | None = Field("None", description="A second upscaler, blended over the first's result.")
    extras_upscaler_2_visibility: float | None = Field(
        0, description="How much of upscaler_2's result shows over upscaler_1's (0-1).")
    upscale_first: bool | None = False
    # Atelier's own (optional) fields: the SD x4 upscaler is a diffusion model with a prompt and steps.
    prompt: str | None = Field(None, description="Atelier: prompt for the SD x4 upscaler (default empty).")
    negative_prompt: str | None = Field(None, description="Atelier: negative prompt for the SD x4 upscaler.")
    steps: int | None = Field(None, description="Atelier: upscaler steps (default: the server's default steps).")
    noise_level: int | None = Field(None, description="Atelier: noise added before upscaling (0-350, default 20).")
    seed: int | None = Field(None, description="Atelier: seed (-1 random).")


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    """``POST /sdapi/v1/extra-single-image`` (A1111's ``ExtrasSingleImageRequest``)."""

    image: str | None = Field(None, description="The image, as raw base64 or a data: URL.")


class ExtrasSingleImageResponse(BaseModel):
    """A1111's extras answer."""

    image: str = Field(..., description="Base64 PNG.")
    html_info: str = Field("", description="The A1111 parameters text of the upscale, when one ran.")


class FileData(BaseModel):
    """One image of ``/extra-batch-images`` (A1111's ``FileData``)."""

    data: str = Field(..., description="The image, as raw base64 or a data: URL.")
    name: str = Field("", description="Its file name (reported back in errors).")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    """``POST /sdapi/v1/extra-batch-images`` (A1111's ``ExtrasBatchImagesRequest``)."""

    imageList: list[FileData] | None = Field(  # noqa: N815 - A1111's name
        None, description="The images to upscale, each {data, name}; every one with the same settings.")


class ExtrasBatchImagesResponse(BaseModel):
    """A1111's batch extras answer."""

    images: list[str] = Field(default_factory=list, description="Base64 PNGs, in the order of imageList.")
    html_info: str = Field("", description="The A1111 parameters text of the last upscale.")


class PNGInfoRequest(_Lenient):
    """``POST /sdapi/v1/png-info``."""

    image: str | None = Field(None, description="A PNG, as raw base64 or a data: URL.")


class PNGInfoResponse(BaseModel):
    """The ``parameters`` text of an image, its parsed fields, and its other text chunks."""

    info: str = Field("", description="The A1111 'parameters' text ('' when the image has none).")
    items: dict[str, Any] = Field(default_factory=dict, description="Other text chunks of the image.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="'info' parsed as A1111 does.")


class Options(_Lenient):
    """``/sdapi/v1/options``: every option Atelier implements, under A1111's name (Atelier's own where A1111 has none),
    with its current value, plus any key a client POSTed that Atelier does not use (kept for its round trip)."""

    sd_model_checkpoint: str | None = Field(
        None, description="Default checkpoint, as its title 'name [hash]'; POST a title, name, file name, short hash "
        "or sha256 to switch (the new one starts loading at once).")
    sd_checkpoint_hash: str | None = Field(
        None, description="sha256 of the default checkpoint ('' until it has been read); reported, never set.")
    sd_vae: str | None = Field(None, description="'Automatic', 'None' or a file of models/vae/.")
    CLIP_stop_at_last_layers: int | None = Field(
        None, description="Clip skip: stop at the n-th last layer of CLIP (1-12, default 1).")
    emphasis: str | None = Field(
        None, description="How (word:1.2) weights apply: 'Original' (default), 'No norm', 'Ignore' or 'None'.")
    token_merging_ratio: float | None = Field(
        None, description="Default token merging ratio (0 = off, up to 0.75); faster, changes pixels slightly.")
    deep_cache: bool | None = Field(
        None, description="Default DeepCache switch (Atelier): reuse deep UNet features; faster, changes pixels.")
    deep_cache_interval: int | None = Field(
        None, description="DeepCache: every n-th step runs the whole UNet (2-10, default 3).")
    memory_mode: str | None = Field(
        None, description="Atelier's memory mode: auto, full, sliced, offload, sequential or cpu.")
    send_seed: bool | None = Field(None, description="Send to Text to Image (PNG Info) brings the seed along.")
    send_size: bool | None = Field(None, description="Sending a picture to another tab brings its size along.")
    samples_format: str | None = Field(None, description="Always 'png'.")
    samples_save: bool | None = Field(None, description="Always true: every image is saved.")
    save_images: bool | None = Field(None, description="Always true: every image is saved.")
    enable_pnginfo: bool | None = Field(None, description="Always true: PNGs carry A1111's parameters.")
    return_grid: bool | None = Field(None, description="Always false: no grid image is returned.")
    eta_noise_seed_delta: int | None = Field(None, description="Always 0 (no ENSD).")
    img2img_color_correction: bool | None = Field(None, description="Always false (not available).")
    img2img_fix_steps: bool | None = Field(None, description="Always false: img2img runs steps x denoising strength.")
    inpainting_mask_weight: float | None = Field(None, description="Always 1.0.")
    live_previews_enable: bool | None = Field(None, description="Always true.")
    outdir_samples: str | None = Field(None, description="The outputs folder (--outputs-dir).")
    outdir_txt2img_samples: str | None = Field(None, description="Where txt2img images go.")
    outdir_img2img_samples: str | None = Field(None, description="Where img2img images go.")
    outdir_extras_samples: str | None = Field(None, description="Where upscaled images go.")


class LoraItem(BaseModel):
    """One LoRA in ``/sdapi/v1/loras`` (A1111's ``create_lora_json``)."""

    name: str = Field(..., description="The name a prompt uses: <lora:name:1>.")
    alias: str = Field(..., description="The file's ss_output_name metadata, else the name.")
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict, description="The file's training metadata (kohya's ss_*).")


class EmbeddingItem(BaseModel):
    """One textual-inversion embedding in ``/sdapi/v1/embeddings``."""

    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int = Field(..., description="Vector width (768 SD 1.x, 1024 SD 2.x, 2048 SDXL's two encoders).")
    vectors: int = Field(..., description="Vectors (tokens) the name stands for.")


class EmbeddingsResponse(BaseModel):
    """``/sdapi/v1/embeddings``: those the default checkpoint can use, and those made for another model."""

    loaded: dict[str, EmbeddingItem] = Field(default_factory=dict)
    skipped: dict[str, EmbeddingItem] = Field(default_factory=dict)


class PromptStyleItem(BaseModel):
    """One row of the styles file in ``/sdapi/v1/prompt-styles``."""

    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class SDModelItem(BaseModel):
    """One checkpoint in ``/sdapi/v1/sd-models``."""

    title: str = Field(..., description="'name [hash]', as A1111 shows it.")
    model_name: str
    hash: str | None = Field(None, description="A1111 short hash (first 10 hex of the sha256).")
    sha256: str | None = None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    """One VAE in ``/sdapi/v1/sd-vae``."""

    model_name: str
    filename: str


class SamplerItem(BaseModel):
    """One sampler in ``/sdapi/v1/samplers``."""

    name: str
    aliases: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)


class SchedulerItem(BaseModel):
    """One schedule type in ``/sdapi/v1/schedulers``."""

    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class UpscalerItem(BaseModel):
    """One entry of ``/sdapi/v1/upscalers``: the built-ins (None, Lanczos, Nearest), the ESRGAN-family model files and
    the SD x4 upscaler folders, as A1111 lists them."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    model_name: str | None = Field(None, description="The model's architecture (files) or name (SD x4 folders).")
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = 4


class RealesrganItem(BaseModel):
    """One entry of ``/sdapi/v1/realesrgan-models`` (A1111's shape)."""

    name: str
    path: str | None = None
    scale: int | None = None


class LatentUpscalerModeItem(BaseModel):
    """One entry of ``/sdapi/v1/latent-upscale-modes``."""

    name: str


class ScriptsList(BaseModel):
    """``/sdapi/v1/scripts``: the A1111 scripts Atelier runs, by ``script_name`` (clients probe this)."""

    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class ScriptArg(BaseModel):
    """One argument of a script in ``/sdapi/v1/script-info`` (A1111's ``ScriptArg``)."""

    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[str] | None = None


class ScriptInfo(BaseModel):
    """One script in ``/sdapi/v1/script-info`` (A1111's ``ScriptInfo``)."""

    name: str | None = None
    is_alwayson: bool | None = None
    is_img2img: bool | None = None
    args: list[ScriptArg] = Field(default_factory=list)


class HypernetworkItem(BaseModel):
    """One hypernetwork in ``/sdapi/v1/hypernetworks`` (Atelier runs none: the list is empty)."""

    name: str
    path: str | None = None


class FaceRestorerItem(BaseModel):
    """One face restorer in ``/sdapi/v1/face-restorers`` (none until face restoration exists)."""

    name: str
    cmd_dir: str | None = None


class SDModuleItem(BaseModel):
    """One Forge module (text encoder or VAE file) in ``/sdapi/v1/sd-modules``: Atelier has none to add."""

    model_name: str
    filename: str


class MemoryResponse(BaseModel):
    """``/sdapi/v1/memory`` in bytes: ``ram`` {free, used (this process), total}; ``cuda`` {system: {free, used,
    total}, active/allocated/reserved/inactive: {current, peak}, events: {retries, oom}} or {error}."""

    ram: dict[str, Any] = Field(default_factory=dict)
    cuda: dict[str, Any] = Field(default_factory=dict)


class InterrogateRequest(_Lenient):
    """``POST /sdapi/v1/interrogate`` (A1111's): Atelier has no captioning model, so it answers 422."""

    image: str | None = Field(None, description="The image, as raw base64 or a data: URL.")
    model: str | None = Field("clip", description="'clip' or 'deepdanbooru' in A1111; neither is available.")


class Flags(BaseModel):
    """``/sdapi/v1/cmd-flags``: Atelier's command line under A1111's flag names where A1111 has the flag, under its
    own names otherwise. Passwords are never shown (``gradio_auth``, ``api_auth`` are null; ``auth`` says whether a
    login is required)."""

    model_config = ConfigDict(protected_namespaces=())

    api: bool = True
    nowebui: bool = False
    listen: bool = False
    server_name: str | None = None
    port: int | None = None
    share: bool = False
    autolaunch: bool = True
    gradio_auth: str | None = None
    api_auth: str | None = None
    auth: bool = Field(False, description="Atelier: a login is required (--auth / --auth-file).")
    cors_allow_origins: str | None = None
    cors_allow_origins_regex: str | None = None
    data_dir: str | None = None
    models_dir: str | None = None
    ckpt_dir: str | None = None
    vae_dir: str | None = None
    lora_dir: str | None = None
    embeddings_dir: str | None = None
    esrgan_models_path: str | None = None
    styles_file: list[str] = Field(default_factory=list)
    ckpt: str | None = None
    medvram: bool = False
    lowvram: bool = False
    xformers: bool = False
    precision: str = "autocast"
    no_half: bool = False
    no_half_vae: bool = False
    use_cpu: list[str] = Field(default_factory=list)
    disable_safe_unpickle: bool = False
    no_hashing: bool = False
    # Atelier's own flags
    outputs_dir: str | None = None
    cache_dir: str | None = None
    settings_file: str | None = None
    device: str | None = None
    fast: bool = False
    demo: bool = False


class ErrorResponse(BaseModel):
    """Every error of the ``/sdapi`` routes: ``detail`` says what is wrong and names the field."""

    error: str = Field(..., description="Error kind, e.g. InvalidRequest, ModelNotFound, QueueFull.")
    detail: str = Field(..., description="What went wrong and what to do.")
    field: str | None = Field(None, description="The request field at fault, when there is one.")

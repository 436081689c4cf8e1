"""The studio in a real browser: headless Chromium driving ``app.py --demo`` through DESIGN.md's element ids.

Each test does what an artist would: type a prompt, generate, look at the image and its infotext, stop a long
run, send an image to another tab, read a PNG's parameters back. Screenshots of every tab land in
``tests/artifacts/`` for a person to look at. Images are 64 px with 2-3 steps on the tiny demo model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import AppProcess, spawn_app

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1280, "height": 800}
GENERATE_TIMEOUT_MS = 90_000


# --------------------------------------------------------------------------------------------- helpers


def open_studio(page, url: str) -> None:
    page.set_viewport_size(VIEWPORT)
    page.goto(url)
    page.wait_for_selector("#txt2img-generate")
    # The page-load event adds our stylesheet; wait for it so that screenshots show the real look.
    page.wait_for_selector("#atelier-style", state="attached")


def set_number(page, elem_id: str, value: float | int) -> None:
    """Type into a slider's or number field's box, as a person does, and commit it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def set_prompt(page, tab: str, prompt: str, negative: str = "") -> None:
    page.locator(f"#{tab}-prompt textarea").fill(prompt)
    page.locator(f"#{tab}-negative textarea").fill(negative)


def select_tab(page, label: str) -> None:
    page.get_by_role("tab", name=label, exact=True).click()


def gallery_sizes(page, gallery_id: str) -> list[tuple[int, int]]:
    """Natural sizes of the loaded images in a gallery."""
    sizes = page.eval_on_selector_all(
        f"#{gallery_id} img", "els => els.filter(e => e.complete).map(e => [e.naturalWidth, e.naturalHeight])"
    )
    return [tuple(s) for s in sizes if s[0] > 0]


def wait_for_gallery_image(page, gallery_id: str, size: tuple[int, int], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if size in gallery_sizes(page, gallery_id):
            return
        time.sleep(0.2)
    pytest.fail(f"no {size[0]}x{size[1]} image in #{gallery_id}; found {gallery_sizes(page, gallery_id)}")


def wait_for_infotext(page, info_id: str) -> str:
    page.wait_for_selector(f"#{info_id} .infotext", timeout=GENERATE_TIMEOUT_MS)
    return page.inner_text(f"#{info_id} .infotext")


def generate_txt2img(
    page, prompt: str, *, seed: int, steps: int = 2, size=(64, 64), sampler: str | None = None, cfg: float | None = None
) -> str:
    """Fill txt2img, press Ctrl+Enter in the prompt box, wait for the image; returns the infotext."""
    set_prompt(page, "txt2img", prompt, "blurry")
    set_number(page, "txt2img-width", size[0])
    set_number(page, "txt2img-height", size[1])
    set_number(page, "txt2img-steps", steps)
    if cfg is not None:
        set_number(page, "txt2img-cfg", cfg)
    if sampler is not None:
        choose(page, "txt2img-sampler", sampler)
    page.locator("#txt2img-seed input").fill(str(seed))
    page.locator("#txt2img-prompt textarea").press("Control+Enter")
    page.wait_for_function(
        "seed => (document.querySelector('#txt2img-info .infotext') || {}).innerText?.includes('Seed: ' + seed)",
        arg=seed,
        timeout=GENERATE_TIMEOUT_MS,
    )
    wait_for_gallery_image(page, "txt2img-gallery", size)
    return page.inner_text("#txt2img-info .infotext")


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def input_value(page, selector: str) -> str:
    return page.locator(selector).input_value()


def shot(page, artifacts_dir: Path, name: str) -> None:
    page.screenshot(path=str(artifacts_dir / f"ui-{name}.png"), full_page=True)


def newest_output(app: AppProcess, task: str) -> Path:
    files = sorted((app.workdir / "outputs" / task).rglob("*.png"), key=lambda p: p.stat().st_mtime)
    assert files, f"no PNG in outputs/{task}"
    return files[-1]


@pytest.fixture(scope="module")
def slow_app(tmp_path_factory: pytest.TempPathFactory):
    """A demo app whose steps take 0.2 s each, so that Stop can be pressed and pages can queue."""
    app = spawn_app(tmp_path_factory.mktemp("slow_app"), "--demo", "--step-delay", "0.2")
    yield app
    app.stop()


# --------------------------------------------------------------------------------------------- tests


def test_txt2img_makes_an_image_of_the_requested_size_with_its_seed(demo_app, page, artifacts_dir) -> None:
    open_studio(page, demo_app.url)
    shot(page, artifacts_dir, "txt2img-empty")
    assert "DEMO: random weights, images are noise" in page.inner_text("#status-bar")
    assert page.inner_text("#txt2img-prompt-tokens") == "0/75"
    info = generate_txt2img(page, "a lighthouse at dusk, oil painting", seed=12345, size=(64, 96))
    assert "Seed: 12345" in info and "Size: 64x96" in info and "Steps: 2" in info
    assert page.inner_text("#txt2img-prompt-tokens") == "7/75"
    assert "Done" in page.inner_text("#txt2img-progress")
    assert newest_output(demo_app, "txt2img").name.endswith("-12345.png")
    shot(page, artifacts_dir, "txt2img")
    # 🎲 asks for a random seed, ♻ brings back the seed of the image just made.
    page.click("#txt2img-seed-random")
    page.wait_for_function("() => document.querySelector('#txt2img-seed input').value === '-1'")
    page.click("#txt2img-seed-reuse")
    page.wait_for_function("() => document.querySelector('#txt2img-seed input').value === '12345'")
    # Swap and the presets change the size fields.
    page.click("#txt2img-swap-size")
    page.wait_for_function("() => document.querySelector('#txt2img-width input[type=number]').value === '96'")
    assert input_value(page, "#txt2img-height input[type=number]") == "64"
    page.click("#txt2img-size-512")
    page.wait_for_function("() => document.querySelector('#txt2img-height input[type=number]').value === '512'")
    assert input_value(page, "#txt2img-width input[type=number]") == "512"


def test_send_to_image_to_image_carries_the_image_and_img2img_generates(demo_app, page, artifacts_dir) -> None:
    open_studio(page, demo_app.url)
    generate_txt2img(page, "a castle on a hill", seed=777, size=(64, 64))
    page.click("#txt2img-send-img2img")
    page.wait_for_function("() => document.querySelector('#img2img-init img')?.naturalWidth === 64")
    assert page.get_by_role("tab", name="Image to Image", exact=True).get_attribute("aria-selected") == "true"
    assert input_value(page, "#img2img-prompt textarea") == "a castle on a hill"
    set_number(page, "img2img-steps", 4)
    set_number(page, "img2img-strength", 0.5)
    page.locator("#img2img-seed input").fill("31337")
    page.click("#img2img-generate")
    info = wait_for_infotext(page, "img2img-info")
    assert "Seed: 31337" in info and "Denoising strength: 0.5" in info
    wait_for_gallery_image(page, "img2img-gallery", (64, 64))
    shot(page, artifacts_dir, "img2img")


def test_upscale_4x_makes_an_image_four_times_larger(demo_app, page, artifacts_dir) -> None:
    open_studio(page, demo_app.url)
    generate_txt2img(page, "a small house", seed=99, size=(64, 64))
    page.click("#txt2img-send-upscale")
    page.wait_for_function("() => document.querySelector('#upscale-input img')?.naturalWidth === 64")
    set_number(page, "upscale-steps", 2)
    page.click("#upscale-generate")
    info = wait_for_infotext(page, "upscale-info")
    assert "Steps: 2" in info
    wait_for_gallery_image(page, "upscale-output", (256, 256))
    page.wait_for_selector("#upscale-compare img")
    shot(page, artifacts_dir, "upscale")


def test_png_info_round_trips_our_image_into_txt2img_fields(demo_app, page, artifacts_dir) -> None:
    open_studio(page, demo_app.url)
    generate_txt2img(page, 'round trip, "quoted" words', seed=4242, steps=3, size=(64, 72), sampler="DDIM", cfg=5.5)
    made = newest_output(demo_app, "txt2img")
    # Change the form so that the round trip has something to restore.
    set_prompt(page, "txt2img", "something else")
    set_number(page, "txt2img-width", 128)
    set_number(page, "txt2img-steps", 9)
    page.locator("#txt2img-seed input").fill("-1")
    select_tab(page, "PNG Info")
    page.locator("#png-info-input input[type=file]").set_input_files(str(made))
    page.wait_for_function("() => document.querySelector('#png-info-output textarea')?.value.includes('Seed: 4242')")
    shot(page, artifacts_dir, "png-info")
    page.click("#png-info-send-txt2img")
    page.wait_for_function("() => document.querySelector('#txt2img-prompt textarea')?.value.startsWith('round trip')")
    assert input_value(page, "#txt2img-prompt textarea") == 'round trip, "quoted" words'
    assert input_value(page, "#txt2img-negative textarea") == "blurry"
    assert input_value(page, "#txt2img-seed input") == "4242"
    assert input_value(page, "#txt2img-width input[type=number]") == "64"
    assert input_value(page, "#txt2img-height input[type=number]") == "72"
    assert input_value(page, "#txt2img-steps input[type=number]") == "3"
    assert input_value(page, "#txt2img-cfg input[type=number]") == "5.5"
    assert input_value(page, "#txt2img-sampler input") == "DDIM"


def test_the_lcm_preset_sets_the_controls_and_makes_a_picture(demo_app, page, artifacts_dir) -> None:
    """Issue 28: an artist picks "LCM (4 steps)" and gets a 4-step LCM picture without CFG; the form says that the
    negative prompt is unused then."""
    open_studio(page, demo_app.url)
    assert page.inner_text("#txt2img-cfg-note") == ""
    choose(page, "txt2img-preset", "LCM (4 steps)")
    page.wait_for_function("() => document.querySelector('#txt2img-sampler input').value === 'LCM'")
    assert input_value(page, "#txt2img-steps input[type=number]") == "4"
    assert input_value(page, "#txt2img-cfg input[type=number]") == "1"
    assert input_value(page, "#txt2img-scheduler input") == "Automatic"
    page.wait_for_function("() => document.querySelector('#txt2img-cfg-note')?.innerText.includes('not used')")
    set_prompt(page, "txt2img", "a lighthouse, few steps", "blurry")
    page.locator("#txt2img-seed input").fill("2828")
    set_number(page, "txt2img-width", 64)
    set_number(page, "txt2img-height", 64)
    page.click("#txt2img-generate")
    info = wait_for_infotext(page, "txt2img-info")
    assert "Steps: 4" in info and "Sampler: LCM" in info and "CFG scale: 1," in info and "Seed: 2828" in info
    wait_for_gallery_image(page, "txt2img-gallery", (64, 64))
    shot(page, artifacts_dir, "txt2img-lcm-preset")
    # Turbo: one step of Euler a on A1111's SGM Uniform schedule
    choose(page, "txt2img-preset", "Turbo (1 step)")
    page.wait_for_function("() => document.querySelector('#txt2img-scheduler input').value === 'SGM Uniform'")
    assert input_value(page, "#txt2img-sampler input") == "Euler a"
    assert input_value(page, "#txt2img-steps input[type=number]") == "1"


def test_invalid_size_shows_a_toast_and_keeps_the_form(demo_app, page, artifacts_dir) -> None:
    open_studio(page, demo_app.url)
    set_prompt(page, "txt2img", "keep me")
    set_number(page, "txt2img-width", 100)
    page.click("#txt2img-generate")
    toast = page.locator(".toast-body").first
    toast.wait_for()
    text = toast.inner_text()
    assert "width" in text and "multiple of 8" in text
    page.wait_for_timeout(800)  # let the toast finish sliding in before the screenshot
    shot(page, artifacts_dir, "invalid-size-toast")
    assert "Traceback" not in page.content()
    assert input_value(page, "#txt2img-prompt textarea") == "keep me"
    assert input_value(page, "#txt2img-width input[type=number]") == "100"


def test_other_tabs_render(demo_app, page, artifacts_dir) -> None:
    open_studio(page, demo_app.url)
    for label, probe, name in (
        ("Image to Image", "#img2img-init", "img2img-empty"),
        ("Upscale 4x", "#upscale-input", "upscale-empty"),
        ("PNG Info", "#png-info-input", "png-info-empty"),
        ("Settings", "#settings-memory-mode", "settings"),
    ):
        select_tab(page, label)
        page.wait_for_selector(probe, state="visible")
        shot(page, artifacts_dir, name)
    choices = page.locator("#settings-memory-mode input")
    assert choices.input_value() == "auto"
    page.click("#model-refresh")
    page.get_by_text("Found 1 checkpoint(s), 0 VAE(s), 1 upscaler(s).").wait_for()  # the built-ins not counted
    assert input_value(page, "#model-select input").startswith("demo-tiny-sd15")
    assert input_value(page, "#vae-select input") == "Automatic"


def test_hires_fix_doubles_the_picture_and_the_upscale_tab_runs_lanczos(demo_app, page, artifacts_dir) -> None:
    open_studio(page, demo_app.url)
    set_prompt(page, "txt2img", "a tower by the sea", "blurry")
    set_number(page, "txt2img-width", 64)
    set_number(page, "txt2img-height", 64)
    set_number(page, "txt2img-steps", 2)
    page.locator("#txt2img-hr .label-wrap").first.click()  # open the Hires. fix accordion
    page.locator("#txt2img-hr-enable input").check()
    set_number(page, "txt2img-hr-steps", 1)
    page.wait_for_function(
        "() => (document.querySelector('#txt2img-hr-size')?.innerText || '').includes('64×64 → 128×128')")
    page.wait_for_function("() => document.querySelector('#txt2img-hr').innerText.includes('on · 64×64 → 128×128')")
    page.locator("#txt2img-seed input").fill("2468")
    page.locator("#txt2img-hr").scroll_into_view_if_needed()
    shot(page, artifacts_dir, "txt2img-hires")
    page.click("#txt2img-generate")
    page.wait_for_function(
        "() => (document.querySelector('#txt2img-info .infotext') || {}).innerText?.includes('Seed: 2468')",
        timeout=GENERATE_TIMEOUT_MS,
    )
    info = page.inner_text("#txt2img-info .infotext")
    assert "Size: 64x64" in info and "Hires upscale: 2" in info and "Hires steps: 1" in info
    assert "Denoising strength: 0.7" in info
    wait_for_gallery_image(page, "txt2img-gallery", (128, 128))
    assert "Done" in page.inner_text("#txt2img-progress")
    shot(page, artifacts_dir, "txt2img-hires-done")

    # PNG Info reads the hires keys back and turns the Hires. fix on again, as the picture was made.
    made = newest_output(demo_app, "txt2img")
    page.locator("#txt2img-hr-enable input").uncheck()
    set_number(page, "txt2img-hr-steps", 7)
    select_tab(page, "PNG Info")
    page.locator("#png-info-input input[type=file]").set_input_files(str(made))
    page.wait_for_function(
        "() => document.querySelector('#png-info-output textarea')?.value.includes('Hires upscale: 2')")
    page.click("#png-info-send-txt2img")
    page.wait_for_function("() => document.querySelector('#txt2img-hr-enable input').checked")
    assert input_value(page, "#txt2img-hr-steps input[type=number]") == "1"
    assert input_value(page, "#txt2img-hr-upscaler input") == "Latent"

    # The picture on to the Upscale tab, enlarged 2x by Lanczos: no prompt needed, so none is shown.
    page.click("#txt2img-send-upscale")
    page.wait_for_function("() => document.querySelector('#upscale-input img')?.naturalWidth === 128")
    assert page.locator("#upscale-prompt").is_visible()  # the demo SD x4 upscaler is chosen first
    choose(page, "upscale-model", "Lanczos")
    page.locator("#upscale-prompt").wait_for(state="hidden")
    set_number(page, "upscale-scale", 2)
    shot(page, artifacts_dir, "upscale-lanczos")
    page.click("#upscale-generate")
    info = wait_for_infotext(page, "upscale-info")
    assert "Postprocess upscaler: Lanczos" in info and "Postprocess upscale by: 2" in info
    wait_for_gallery_image(page, "upscale-output", (256, 256))
    page.wait_for_selector("#upscale-compare img")
    shot(page, artifacts_dir, "upscale-lanczos-done")


def test_stop_ends_a_long_run_early(slow_app, page, artifacts_dir) -> None:
    open_studio(page, slow_app.url)
    set_prompt(page, "txt2img", "a very long run")
    set_number(page, "txt2img-steps", 30)  # 30 steps x 0.2 s = 6 s without Stop
    set_number(page, "txt2img-width", 64)
    set_number(page, "txt2img-height", 64)
    page.click("#txt2img-generate")
    page.wait_for_function(
        "() => /Step [1-9]/.test(document.querySelector('#txt2img-progress')?.innerText || '')", timeout=60_000
    )
    shot(page, artifacts_dir, "txt2img-running")
    page.click("#txt2img-interrupt")
    page.wait_for_function(
        "() => /Stopped/.test(document.querySelector('#txt2img-progress')?.innerText || '')", timeout=30_000
    )
    # Had Stop not worked, the run would have finished its 30 steps and saved an image.
    assert "Stopped before the first image was finished" in page.inner_text("#txt2img-progress")
    assert not list((slow_app.workdir / "outputs").rglob("*.png"))
    assert not page.locator("#txt2img-info .infotext").count()


def test_two_pages_queue_at_once_and_both_get_their_images(slow_app, browser, artifacts_dir) -> None:
    contexts = [browser.new_context(viewport=VIEWPORT) for _ in range(2)]
    pages = [context.new_page() for context in contexts]
    try:
        for index, pg in enumerate(pages):
            pg.set_default_timeout(60_000)
            open_studio(pg, slow_app.url)
            set_prompt(pg, "txt2img", f"page {index}")
            set_number(pg, "txt2img-steps", 8)
            set_number(pg, "txt2img-width", 64)
            set_number(pg, "txt2img-height", 64)
            pg.locator("#txt2img-seed input").fill(str(1000 + index))
        for pg in pages:
            pg.click("#txt2img-generate")
        pages[1].wait_for_function(
            "() => /Queued: 1 job ahead/.test(document.querySelector('#txt2img-progress')?.innerText || '')"
        )
        shot(pages[1], artifacts_dir, "txt2img-queued")
        for index, pg in enumerate(pages):
            info = wait_for_infotext(pg, "txt2img-info")
            assert f"Seed: {1000 + index}" in info and f"page {index}" in info
            wait_for_gallery_image(pg, "txt2img-gallery", (64, 64))
    finally:
        for context in contexts:
            context.close()


def test_settings_are_saved_without_the_command_line_flags(slow_app, page, artifacts_dir) -> None:
    open_studio(page, slow_app.url)
    select_tab(page, "Settings")
    choose(page, "settings-memory-mode", "sliced")
    set_number(page, "settings-default-steps", 12)
    page.click("#settings-save")
    page.wait_for_function("() => /Saved to/.test(document.querySelector('#settings-result')?.innerText || '')")
    shot(page, artifacts_dir, "settings-saved")
    saved = json.loads((slow_app.workdir / "settings.json").read_text())
    assert saved["memory_mode"] == "sliced" and saved["default_steps"] == 12
    assert "outputs_dir" not in saved and "models_dir" not in saved  # given on the command line: never saved
    assert "sliced" in page.inner_text("#status-bar")


def test_stop_between_batches_keeps_the_finished_images(slow_app, page, artifacts_dir) -> None:
    open_studio(page, slow_app.url)
    set_prompt(page, "txt2img", "three in a row")
    set_number(page, "txt2img-steps", 5)
    set_number(page, "txt2img-width", 64)
    set_number(page, "txt2img-height", 64)
    set_number(page, "txt2img-batch-count", 3)
    page.locator("#txt2img-seed input").fill("500")
    page.click("#txt2img-generate")
    page.wait_for_function(
        "() => /batch 2\\/3/.test(document.querySelector('#txt2img-progress')?.innerText || '')", timeout=60_000
    )
    page.click("#txt2img-interrupt")
    page.wait_for_function(
        "() => /Stopped: kept/.test(document.querySelector('#txt2img-progress')?.innerText || '')", timeout=30_000
    )
    assert "Stopped: kept 1 finished image" in page.inner_text("#txt2img-progress")
    assert "Seed: 500" in wait_for_infotext(page, "txt2img-info")
    wait_for_gallery_image(page, "txt2img-gallery", (64, 64))
    shot(page, artifacts_dir, "txt2img-stopped")


# --------------------------------------------------------------------------------------------- extra networks

STYLES_CSV = 'name,prompt,negative_prompt\n"Oil","{prompt}, oil painting, thick brushwork","blurry"\n'


def write_demo_lora(path: Path, seed: int = 1, scale: float = 0.5) -> Path:
    """A LoRA in kohya's original layout (``lora_unet_…``, ``lora_te_…``: down, up, alpha) for every attention and
    MLP linear of the ``--demo`` model, as kohya's trainer writes them."""
    import torch
    from safetensors.torch import save_file

    from pipelines.tiny import demo_sd15_components

    components = demo_sd15_components(seed=0)
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def add(prefix: str, module_name: str, module: torch.nn.Linear) -> None:
        key = prefix + module_name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = torch.randn(4, module.in_features, generator=generator) * scale
        tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, 4, generator=generator) * scale
        tensors[f"{key}.alpha"] = torch.tensor(4.0)

    for name, module in components["unet"].named_modules():
        if isinstance(module, torch.nn.Linear) and "transformer_blocks" in name:
            add("lora_unet_", name, module)
    for name, module in components["text_encoder"].named_modules():
        if isinstance(module, torch.nn.Linear) and ("self_attn" in name or "mlp" in name):
            add("lora_te_text_model_", name, module)
    save_file(tensors, str(path), metadata={"ss_network_dim": "4", "ss_output_name": path.stem})
    return path


def write_preview(path: Path) -> Path:
    """A small preview picture (a diagonal gradient), as A1111 saves ``<name>.preview.png`` beside a LoRA."""
    from PIL import Image

    image = Image.new("RGB", (96, 128))
    image.putdata([(40 + x, 90 + y // 2, 200 - x) for y in range(128) for x in range(96)])
    image.save(path)
    return path


@pytest.fixture(scope="module")
def networks_app(tmp_path_factory: pytest.TempPathFactory):
    """A demo app with two LoRAs for the demo model (one with a preview image), an embedding and a styles file."""
    import torch

    from pipelines.tiny import demo_sd15_components

    workdir = tmp_path_factory.mktemp("networks_app")
    loras, embeddings = workdir / "models" / "loras", workdir / "models" / "embeddings"
    loras.mkdir(parents=True)
    embeddings.mkdir(parents=True)
    write_demo_lora(loras / "tiny-style.safetensors")
    write_preview(loras / "tiny-style.preview.png")
    write_demo_lora(loras / "ink-wash.safetensors", seed=2)
    width = demo_sd15_components(seed=0)["text_encoder"].config.hidden_size
    torch.save({"string_to_param": {"*": torch.zeros(2, width)}, "name": "castle-ti", "step": 10},
               embeddings / "castle-ti.pt")
    (workdir / "styles.csv").write_text(STYLES_CSV, encoding="utf-8")  # beside settings.json: the default place
    app = spawn_app(workdir, "--demo")
    yield app
    app.stop()


def test_extra_networks_cards_add_a_lora_to_the_prompt_and_the_image_uses_it(networks_app, page,
                                                                             artifacts_dir) -> None:
    open_studio(page, networks_app.url)
    set_prompt(page, "txt2img", "a lighthouse")
    page.get_by_text("Extra networks: LoRA and embeddings").click()
    card = page.locator('#extra-networks-cards .network-card[data-key="lora:tiny-style"]')
    card.wait_for(state="visible")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#extra-networks-cards img')].every(i => i.complete && i.naturalWidth)")
    assert page.locator("#extra-networks-cards .network-card").count() == 3
    assert page.locator('.network-card[data-key="lora:tiny-style"] img').count() == 1  # its preview image
    page.locator("#extra-networks").screenshot(path=str(artifacts_dir / "ui-extra-networks-panel.png"))
    shot(page, artifacts_dir, "extra-networks")

    card.click()
    page.wait_for_function(
        "() => document.querySelector('#txt2img-prompt textarea').value === 'a lighthouse <lora:tiny-style:1>'")
    assert "Added <lora:tiny-style:1> to the Text to Image prompt" in page.inner_text("#extra-networks-status")
    # The counter reads the prompt language: the tag is not sent to CLIP.
    page.wait_for_function("() => document.querySelector('#txt2img-prompt-tokens').innerText === '2/75'")

    # The filter box hides the cards whose name does not match (as the artist types: key by key).
    search = page.locator("#extra-networks-search textarea")
    search.press_sequentially("castle")
    page.wait_for_function(
        "() => document.querySelector('.network-card[data-key=\"lora:tiny-style\"]').hidden === true")
    assert page.locator('.network-card[data-key="embedding:castle-ti"]').is_visible()
    search.press("Control+a")
    search.press("Backspace")
    page.wait_for_function(
        "() => document.querySelector('.network-card[data-key=\"lora:tiny-style\"]').hidden === false")

    # Generate with the LoRA and a style: the infotext names the LoRA's hash and has the style's text.
    choose(page, "txt2img-styles", "Oil")
    set_number(page, "txt2img-width", 64)
    set_number(page, "txt2img-height", 64)
    set_number(page, "txt2img-steps", 2)
    page.locator("#txt2img-seed input").fill("2024")
    page.click("#txt2img-generate")
    info = wait_for_infotext(page, "txt2img-info")
    assert info.startswith("a lighthouse <lora:tiny-style:1>, oil painting, thick brushwork")
    assert 'Lora hashes: "tiny-style: ' in info and "Seed: 2024" in info
    assert not page.locator("#txt2img-info .run-warnings").count()
    wait_for_gallery_image(page, "txt2img-gallery", (64, 64))
    shot(page, artifacts_dir, "txt2img-lora")

    # The demo checkpoint's text encoder is narrower than SD 1.5's: its embeddings fit once it is loaded, which ↻
    # (it lists the files again) then shows. In Image to Image a card writes into that tab's prompt.
    embedding = page.locator('.network-card[data-key="embedding:castle-ti"]')
    assert "unusable" in embedding.get_attribute("class")
    page.click("#extra-networks-refresh")
    page.wait_for_function(
        "() => !document.querySelector('.network-card[data-key=\"embedding:castle-ti\"]').matches('.unusable')")
    assert "Found 2 LoRA(s) and 1 embedding(s)" in page.inner_text("#extra-networks-status")
    select_tab(page, "Image to Image")
    embedding.click()
    page.wait_for_function("() => document.querySelector('#img2img-prompt textarea').value === 'castle-ti'")
    assert input_value(page, "#txt2img-prompt textarea") == "a lighthouse <lora:tiny-style:1>"


# --------------------------------------------------------------------------------------------- inpainting


def wait_for_editor_picture(page, elem_id: str, timeout_s: float = 30) -> None:
    """Wait until the editor's canvas shows a picture (it loads one sent to it after a moment; a stroke painted on the
    empty canvas before then is lost when the picture arrives)."""
    import io

    import numpy as np
    from PIL import Image

    canvas = page.locator(f"#{elem_id} canvas").first
    canvas.wait_for()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"), np.float32)
        height, width = seen.shape
        if seen[height // 3:2 * height // 3, width // 3:2 * width // 3].std() > 10:  # detail, not an empty canvas
            return
        time.sleep(0.3)
    pytest.fail(f"no picture in #{elem_id} after {timeout_s:.0f} s")


def paint_stroke(page, elem_id: str, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag the editor's brush from ``start`` to ``end``, given as fractions of its canvas (the picture is centred in
    it), with the mouse, as a person paints."""
    box = page.locator(f"#{elem_id} canvas").first.bounding_box()
    x0, y0 = box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1]
    x1, y1 = box["x"] + box["width"] * end[0], box["y"] + box["height"] * end[1]
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=12)
    page.mouse.up()


def test_inpaint_redraws_only_where_a_stroke_was_painted(demo_app, page, artifacts_dir) -> None:
    import numpy as np
    from PIL import Image

    open_studio(page, demo_app.url)
    generate_txt2img(page, "a meadow with poppies", seed=8080, size=(192, 128))
    made = newest_output(demo_app, "txt2img")
    page.click("#txt2img-send-inpaint")
    assert page.get_by_role("tab", name="Inpaint", exact=True).get_attribute("aria-selected") == "true"
    page.wait_for_function("() => document.querySelector('#inpaint-prompt textarea').value === 'a meadow with poppies'")
    assert input_value(page, "#inpaint-width input[type=number]") == "192"
    assert input_value(page, "#inpaint-height input[type=number]") == "128"
    wait_for_editor_picture(page, "inpaint-editor")
    # one horizontal stroke through the middle of the picture
    paint_stroke(page, "inpaint-editor", (0.4, 0.5), (0.6, 0.5))
    set_number(page, "inpaint-steps", 4)
    page.locator("#inpaint-seed input").fill("2024")
    page.screenshot(path="/tmp/inpaint-tab.png", full_page=True)
    shot(page, artifacts_dir, "inpaint-painted")
    page.click("#inpaint-generate")
    info = wait_for_infotext(page, "inpaint-info")
    assert "Seed: 2024" in info and "Size: 192x128" in info and "Mask blur: 4" in info
    assert "Denoising strength: 0.75" in info
    wait_for_gallery_image(page, "inpaint-gallery", (192, 128))
    assert "Done" in page.inner_text("#inpaint-progress")
    shot(page, artifacts_dir, "inpaint-done")
    result = newest_output(demo_app, "img2img")  # inpaints are saved with img2img's pictures, as A1111 does
    changed = np.abs(np.asarray(Image.open(result).convert("RGB"), np.int16)
                     - np.asarray(Image.open(made).convert("RGB"), np.int16)).max(axis=2)
    rows, cols = np.nonzero(changed)
    assert rows.size, "the painted stroke was not redrawn"
    # the stroke: a band around the middle row, between about 40% and 60% of the width, widened by the brush (its
    # "auto" size: about 22 px a side here) and the mask blur's reach (10 px): everything else is exactly the picture
    # that was sent
    assert rows.min() > 16 and rows.max() < 112, (rows.min(), rows.max())
    assert cols.min() > 30 and cols.max() < 162, (cols.min(), cols.max())
    assert changed[60:68, 84:108].mean() > 10  # the stroke's middle was redrawn

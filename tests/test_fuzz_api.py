"""Bad input never crashes anything: the REST API fuzzed from its own ``/openapi.json``, plus hand-picked nasties.

Schemathesis generates bodies and query strings for every ``/sdapi/v1`` operation, both schema-valid ones
(positive) and schema-breaking ones (negative). Each must be answered below 500 within a time limit, and a
normal txt2img must still work afterwards. Valid generation requests run on the demo model, so their sizes,
steps and batches are scaled down before sending (invalid values are left as they are, so validation is still
exercised); the cost of a request *at* the limits is measured by its own test.

The by-hand cases cover what a fuzzer rarely hits: 10,000-character prompts, control characters, JSON numbers
that overflow to infinity, truncated images, a decompression bomb, 16-bit / CMYK / transparent PNGs, and the
same bad values through the Gradio client (a toast message, never a traceback).
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from conftest import AppProcess
from hypothesis import HealthCheck, Phase, given, settings  # schemathesis brings hypothesis
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis import GenerationMode

API = "/sdapi/v1"
REQUEST_TIMEOUT_S = 120.0  # a request that takes longer counts as a hang
CI_EXAMPLES_PER_MODE = 10  # x 2 modes x the 6 operations that take input: > 100 requests in CI
LONG_EXAMPLES_PER_MODE = 100  # > 1,000 requests with --long (1,002 measured at 90)
GENERATION_ROUTES = ("/txt2img", "/img2img")
OPENAI_API = "/v1"
OPENAI_GENERATION = "/images/generations"
SMALL = {"width": 64, "height": 64, "steps": 2, "batch_size": 1, "n_iter": 1}
DEMO_CHECKPOINT_TITLE_PREFIX = "demo-tiny-sd15"


# --- the fuzzer ------------------------------------------------------------------------------------------------
@dataclass
class FuzzReport:
    """What the fuzzer sent and what came back."""

    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)

    def record(self, label: str, status: int | None, body: Any) -> None:
        self.sent += 1
        self.statuses[status] += 1
        if status is None:
            self.hangs.append(f"{label}: no answer in {REQUEST_TIMEOUT_S:.0f} s; body {_short(body)}")
        elif status >= 500:
            self.server_errors.append(f"{label} -> {status}; body {_short(body)}")


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def scale_down_valid_generation(path: str, body: Any) -> Any:
    """Make a generation body cheap without hiding invalid values from validation.

    Sizes, steps and batch numbers that are valid (or missing, so the server's 512 px / 20 steps defaults would
    apply) become the smallest ones; anything out of range or of the wrong type is sent as the fuzzer made it.
    """
    if path.endswith(OPENAI_GENERATION) and isinstance(body, dict):
        return scale_down_openai_generation(body)
    if not path.endswith(GENERATION_ROUTES) or not isinstance(body, dict):
        return body
    body = dict(body)
    for name in ("width", "height"):
        value = body.get(name)
        if value is None or (_is_int(value) and 64 <= value <= 2048 and value % 8 == 0):
            body[name] = SMALL[name]
    steps = body.get("steps")
    if steps is None or (_is_int(steps) and 1 <= steps <= 150):
        body["steps"] = SMALL["steps"]
    for name in ("batch_size", "n_iter"):
        value = body.get(name)
        if value is None or (_is_int(value) and 1 <= value <= 16):
            body[name] = 1
    return body


def scale_down_openai_generation(body: dict) -> dict:
    """The OpenAI-style route's body made cheap as above: a valid "WxH" size (or none, "auto": the checkpoint's own)
    becomes 64x64, valid steps and n the smallest; invalid ones are sent as the fuzzer made them."""
    body = dict(body)
    size = body.get("size")
    found = re.fullmatch(r"\s*(\d{1,5})\s*[x×]\s*(\d{1,5})\s*", size, re.IGNORECASE) if isinstance(size, str) else None
    valid = found is not None and all(64 <= int(side) <= 2048 and int(side) % 8 == 0 for side in found.groups())
    if size is None or valid or (isinstance(size, str) and size.strip().lower() in ("", "auto")):
        body["size"] = "64x64"
    steps = body.get("steps")
    if steps is None or (_is_int(steps) and 1 <= steps <= 150):
        body["steps"] = SMALL["steps"]
    n = body.get("n")
    if n is None or (_is_int(n) and 1 <= n <= 16):
        body["n"] = 1
    return body


def fuzz_api(app: AppProcess, examples_per_mode: int) -> FuzzReport:
    """Send ``examples_per_mode`` positive and negative requests to every documented /sdapi and OpenAI-style /v1
    operation."""
    schema = schemathesis.openapi.from_url(app.url + "/openapi.json", timeout=30).include(
        path_regex=f"^({API}|{OPENAI_API})/")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    report = FuzzReport()
    session = requests.Session()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(app.url, session, operation, mode, examples_per_mode, report)
    return report


def _fuzz_operation(url: str, session: requests.Session, operation: Any, mode: Any, examples: int,
                    report: FuzzReport) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking: a 5xx is recorded with its body, not minimised
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case: Any) -> None:
        if isinstance(case.body, dict):
            case.body = scale_down_valid_generation(operation.path, case.body)
        label = f"{operation.label} [{mode.value}]"
        try:
            response = case.call(base_url=url, session=session, timeout=REQUEST_TIMEOUT_S)
        except requests.Timeout:
            report.record(label, None, case.body)
            return
        report.record(label, response.status_code, case.body)

    try:
        send()
    except Unsatisfiable:
        pass  # nothing to break in an operation without parameters (negative mode): its positive case was sent


def assert_txt2img_works(url: str, auth: Any = None) -> dict:
    """A normal 64x64 2-step txt2img answers 200 with one PNG."""
    answer = requests.post(f"{url}{API}/txt2img", json={"prompt": "a lighthouse", **SMALL}, auth=auth,
                           timeout=REQUEST_TIMEOUT_S)
    assert answer.status_code == 200, answer.text[:500]
    body = answer.json()
    assert len(body["images"]) == 1
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert image.size == (64, 64)
    return body


def unexpected_tracebacks(log: str) -> list[str]:
    """Tracebacks in the server log other than Gradio's own input checks.

    Gradio logs a traceback when one of its components refuses a value (a slider out of range, a choice not in a
    dropdown) even though the client gets a plain toast; those end in ``gradio.exceptions.Error``.
    """
    found = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = [line for line in block.splitlines() if line.strip()]
        final = next((line for line in lines if not line.startswith(" ")), "")
        if not final.startswith("gradio.exceptions.Error"):
            found.append("Traceback (most recent call last):" + block[:3000])
    return found


def _check_fuzz(app: AppProcess, examples_per_mode: int, minimum: int) -> None:
    started = time.monotonic()
    report = fuzz_api(app, examples_per_mode)
    elapsed = time.monotonic() - started
    print(f"\nfuzzed {report.sent} requests in {elapsed:.0f} s; statuses {dict(report.statuses)}")
    assert report.sent >= minimum, f"only {report.sent} requests were generated"
    assert not report.hangs, "\n".join(report.hangs)
    assert not report.server_errors, "\n".join(report.server_errors)
    assert app.proc.poll() is None, "the server died"
    assert_txt2img_works(app.url)
    assert not unexpected_tracebacks(app.text), unexpected_tracebacks(app.text)


def test_fuzzed_requests_never_get_a_5xx_or_hang(demo_app: AppProcess) -> None:
    _check_fuzz(demo_app, CI_EXAMPLES_PER_MODE, minimum=100)


@pytest.mark.long
def test_long_fuzz_thousand_requests(demo_app: AppProcess) -> None:
    _check_fuzz(demo_app, LONG_EXAMPLES_PER_MODE, minimum=1000)


def test_scale_down_keeps_invalid_values_and_shrinks_valid_ones() -> None:
    body = scale_down_valid_generation(f"{API}/txt2img", {"width": 2048, "height": 65, "steps": 0, "n_iter": 16})
    assert body == {"width": 64, "height": 65, "steps": 0, "n_iter": 1, "batch_size": 1}
    assert scale_down_valid_generation(f"{API}/png-info", {"width": 2048}) == {"width": 2048}
    assert scale_down_valid_generation("/v1/images/generations", {"size": "1024x1024", "n": 4}) == {
        "size": "64x64", "n": 1, "steps": 2}
    assert scale_down_valid_generation("/v1/images/generations", {"size": "65x64", "n": 40, "steps": 0}) == {
        "size": "65x64", "n": 40, "steps": 0}


# --- by hand ---------------------------------------------------------------------------------------------------
def png_bytes(image: Image.Image, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decompression_bomb_png(side: int = 20_000) -> bytes:
    """A valid PNG header declaring side x side px (400 Mpx, over Pillow's limit) with a tiny compressed body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * (side + 1) * 64)  # a few rows are enough for the header to be checked
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def post(url: str, route: str, payload: Any, raw: bytes | None = None) -> requests.Response:
    if raw is not None:
        return requests.post(f"{url}{API}{route}", data=raw, headers={"Content-Type": "application/json"},
                             timeout=REQUEST_TIMEOUT_S)
    return requests.post(f"{url}{API}{route}", json=payload, timeout=REQUEST_TIMEOUT_S)


def assert_field_error(answer: requests.Response, field_name: str) -> None:
    assert answer.status_code == 422, (answer.status_code, answer.text[:500])
    body = answer.json()
    assert field_name in body["detail"], body
    assert "Traceback" not in answer.text


BAD_TXT2IMG = [
    ({"width": 65}, "width"),
    ({"height": 2056}, "height"),
    ({"width": 4096}, "width"),
    ({"steps": 151}, "steps"),
    ({"steps": 0}, "steps"),
    ({"cfg_scale": 1e308}, "cfg_scale"),
    ({"batch_size": 9}, "batch_size"),
    ({"n_iter": 10_000}, "n_iter"),
    ({"seed": 2**64}, "seed"),
    ({"sampler_name": "Euler z"}, "sampler"),
    ({"override_settings": {"sd_model_checkpoint": "no-such-model"}}, "sd_model_checkpoint"),
    ({"prompt": "x" * 30_000}, "prompt"),
]


@pytest.mark.parametrize(("change", "field_name"), BAD_TXT2IMG, ids=[name for _, name in BAD_TXT2IMG])
def test_bad_txt2img_values_are_422_naming_the_field(demo_app: AppProcess, change: dict, field_name: str) -> None:
    assert_field_error(post(demo_app.url, "/txt2img", {**SMALL, **change}), field_name)


@pytest.mark.parametrize(
    ("raw", "field_name"),
    [
        (b'{"width": 1e309, "height": 64, "steps": 2}', "width"),  # JSON number that overflows to inf
        (b'{"cfg_scale": NaN, "width": 64, "height": 64, "steps": 2}', "cfg_scale"),
        (b'{"cfg_scale": Infinity, "width": 64, "height": 64, "steps": 2}', "cfg_scale"),
        (b'{"cfg_scale": 1e309, "width": 64, "height": 64, "steps": 2}', "cfg_scale"),
        (b'{"steps": 1e400, "width": 64, "height": 64}', "steps"),
        (b'{"denoising_strength": -Infinity, "width": 64, "height": 64, "steps": 2}', "denoising_strength"),
    ],
)
def test_non_finite_and_huge_numbers_are_422(demo_app: AppProcess, raw: bytes, field_name: str) -> None:
    route = "/img2img" if b"denoising" in raw else "/txt2img"
    answer = post(demo_app.url, route, None, raw=raw)
    assert answer.status_code == 422, (answer.status_code, answer.text[:500])
    if route == "/txt2img":
        assert field_name in answer.json()["detail"]


def test_odd_prompts_generate(demo_app: AppProcess) -> None:
    """Empty, 10,000-character, unicode and control-character prompts all give an image with readable metadata."""
    for prompt in ("", "a " * 5_000, "猫 🐱 café \u202e\u200b ﷽", "tab\there\x00nul\x1bescape\x7fdel\r\nnext"):
        answer = post(demo_app.url, "/txt2img", {**SMALL, "prompt": prompt, "negative_prompt": prompt[:100]})
        assert answer.status_code == 200, (prompt[:40], answer.text[:500])
        info = json.loads(answer.json()["info"])
        assert "\x00" not in info["infotexts"][0] and "\x1b" not in info["infotexts"][0]
        png = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
        assert png.size == (64, 64)


def _image_cases() -> list[tuple[str, bytes]]:
    rgb = Image.new("RGB", (64, 64), (200, 30, 30))
    valid = png_bytes(rgb)
    return [
        ("not-an-image", b"hello, this is text and not a picture"),
        ("truncated-png", valid[: len(valid) // 2]),
        ("png-header-only", valid[:40]),
        ("decompression-bomb", decompression_bomb_png()),
        ("empty", b""),
    ]


@pytest.mark.parametrize(("name", "data"), _image_cases(), ids=[name for name, _ in _image_cases()])
def test_bad_uploads_are_422_on_every_image_route(demo_app: AppProcess, name: str, data: bytes) -> None:
    encoded = b64(data)
    checks = [
        ("/img2img", {**SMALL, "init_images": [encoded]}, "init_images"),
        ("/img2img", {**SMALL, "init_images": ["data:image/png;base64," + encoded]}, "init_images"),
        ("/extra-single-image", {"image": encoded, "upscaler_1": "None", "upscaling_resize": 2}, "image"),
        ("/png-info", {"image": encoded}, "image"),
    ]
    for route, payload, field_name in checks:
        answer = post(demo_app.url, route, payload)
        if route == "/png-info" and name == "empty":
            assert answer.status_code in (200, 422), answer.text[:300]  # A1111 answers an empty image with no info
            continue
        assert_field_error(answer, field_name)


def _convertible_images() -> list[tuple[str, bytes]]:
    grey16 = Image.new("I;16", (64, 64))
    grey16.putdata([i * 16 for i in range(64 * 64)])
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))
    buffer = io.BytesIO()
    cmyk.save(buffer, format="JPEG")
    transparent = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    palette = Image.new("P", (64, 64))
    return [
        ("16-bit-png", png_bytes(grey16)),
        ("cmyk-jpeg", buffer.getvalue()),
        ("transparent-png", png_bytes(transparent)),
        ("palette-png", png_bytes(palette, transparency=0)),
        ("tiny-odd-size", png_bytes(Image.new("RGB", (37, 53), (1, 2, 3)))),
    ]


@pytest.mark.parametrize(("name", "data"), _convertible_images(), ids=[name for name, _ in _convertible_images()])
def test_unusual_image_modes_are_converted_not_refused(demo_app: AppProcess, name: str, data: bytes) -> None:
    answer = post(demo_app.url, "/img2img", {**SMALL, "init_images": [b64(data)], "denoising_strength": 1.0})
    assert answer.status_code == 200, (name, answer.text[:500])
    out = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    assert out.size == (64, 64) and out.mode == "RGB"


def test_malformed_json_bodies_are_a_json_422(demo_app: AppProcess) -> None:
    for raw in (b"", b"{", b"[]", b"null", b'"text"', b"{" * 5000, b'{"prompt": "\xff\xfe"}', b"\x00" * 100,
                b'{"prompt": "caf\xe9"}'):
        answer = post(demo_app.url, "/txt2img", None, raw=raw)
        assert answer.status_code == 422, (raw[:20], answer.status_code, answer.text[:300])
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json()["error"] == "InvalidRequest" and answer.json()["detail"], answer.text[:300]


def test_a_body_that_is_not_utf8_is_422_saying_so(demo_app: AppProcess) -> None:
    """FastAPI's own answer would be a bare 400 "There was an error parsing the body"."""
    answer = post(demo_app.url, "/txt2img", None, raw='{"prompt": "café"}'.encode("latin-1"))
    assert answer.status_code == 422, answer.text[:300]
    detail = answer.json()["detail"]
    assert "UTF-8" in detail and "0xe9" in detail and "error parsing the body" not in detail, detail


def test_the_server_answers_normally_after_the_bad_input(demo_app: AppProcess) -> None:
    assert_txt2img_works(demo_app.url)
    assert not unexpected_tracebacks(demo_app.text), unexpected_tracebacks(demo_app.text)


# --- the same values through the UI (Gradio's client) ----------------------------------------------------------
def _ui_generate_arguments(client: Any, **changes: Any) -> list[Any]:
    """Positional values of the txt2img Generate endpoint: defaults from /info, then ``changes`` by label."""
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]
    values = []
    for parameter in endpoint["parameters"]:
        label = parameter["label"]
        default = parameter.get("parameter_default")
        values.append(changes.get(label, default))
    return values


# Gradio checks slider ranges before our handler runs; ui.controls makes that toast name the control.
UI_BAD_VALUES = [
    ({"Width": 65}, "width"),
    ({"Height": 4096}, r"height must be between 64 and 2048 \(got 4096\)"),
    ({"Steps": 1000}, r"steps must be between 1 and 150 \(got 1000\)"),
    ({"Batch size": 9}, r"batch size must be between 1 and 8"),
    ({"Seed (-1: random)": 2**70}, r"seed \(-1: random\) must be between -1 and 4294967295"),
    ({"Sampler": "Euler z"}, "sampler|list of choices"),
    ({"Checkpoint": "no-such-model"}, "checkpoint|no-such-model"),
]


UI_NON_FINITE = [
    ({"Steps": float("nan")}, "steps must be a finite number"),
    ({"CFG scale": float("inf")}, "cfg scale must be a finite number"),
    ({"Width": float("-inf")}, "width must be a finite number"),
]


def raw_ui_call(url: str, api_name: str, arguments: list[Any]) -> str:
    """POST to Gradio's /call route with JSON that may hold NaN/Infinity; returns the event stream's text."""
    body = json.dumps({"data": arguments})  # allow_nan: writes NaN / Infinity literally
    started = requests.post(f"{url}/gradio_api/call/{api_name}", data=body,
                            headers={"Content-Type": "application/json"}, timeout=60)
    if started.status_code != 200:
        return f"event: error\nstatus {started.status_code}: {started.text}"
    event_id = started.json()["event_id"]
    return requests.get(f"{url}/gradio_api/call/{api_name}/{event_id}", timeout=REQUEST_TIMEOUT_S).text


def test_ui_bad_values_are_toasts_not_tracebacks(demo_app: AppProcess) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(demo_app.url, verbose=False)
    small = {"Width": 64, "Height": 64, "Steps": 2}
    for change, word in UI_BAD_VALUES:
        arguments = _ui_generate_arguments(client, **{**small, **change})
        with pytest.raises(AppError) as caught:
            client.predict(*arguments, api_name="/generate")
        message = str(caught.value)
        assert re.search(word, message.lower()), (change, message)
        assert "Traceback" not in message and "Error:" not in message.split(" ", 1)[0], message
    for change, word in UI_NON_FINITE:  # gradio_client cannot encode NaN/inf: sent as raw JSON, as a browser could
        arguments = _ui_generate_arguments(client, **{**small, **change})
        event = raw_ui_call(demo_app.url, "generate", arguments)
        assert "event: error" in event, (change, event[:500])
        assert re.search(word, event.lower()) and "Traceback" not in event, (change, event[:500])
    long_prompt = _ui_generate_arguments(client, **small, Prompt="🐱\x00\x1b" * 3_000)
    result = client.predict(*long_prompt, api_name="/generate")
    assert "Seed" in json.dumps(result, ensure_ascii=False)
    assert not unexpected_tracebacks(demo_app.text), unexpected_tracebacks(demo_app.text)


# --- a request at the validation limits ------------------------------------------------------------------------
LIMIT_BUDGET_S = 120.0


def largest_request_at_the_limits() -> dict:
    """The largest txt2img the limits let through: the largest size and steps, and as many images as fit the
    work budget (``MAX_WORK``) within the batch limits."""
    from pipelines.request import MAX_BATCH_COUNT, MAX_BATCH_SIZE, MAX_SIZE, MAX_STEPS, MAX_WORK

    images = min(MAX_WORK // (MAX_SIZE * MAX_SIZE * MAX_STEPS), MAX_BATCH_SIZE * MAX_BATCH_COUNT)
    assert images >= 1, "one image at the largest size and steps must fit the work budget"
    batch_size = min(images, MAX_BATCH_SIZE)
    return {"prompt": "limits", "width": MAX_SIZE, "height": MAX_SIZE, "steps": MAX_STEPS,
            "batch_size": batch_size, "n_iter": images // batch_size}


def test_a_request_over_the_work_budget_is_422_naming_the_batch(demo_app: AppProcess) -> None:
    """Every field in range, the total too large: refused at once with what it amounts to and what to lower."""
    at_limits = largest_request_at_the_limits()
    over = {**at_limits, "batch_size": at_limits["batch_size"] + 1}
    started = time.monotonic()
    answer = post(demo_app.url, "/txt2img", over)
    assert time.monotonic() - started < 10, "a refused request must not run"
    assert_field_error(answer, "batch_size")
    detail = answer.json()["detail"]
    assert answer.json()["field"] == "batch_size"
    assert "too large for one run" in detail and "Lower the batch count, batch size, steps or size" in detail
    many = post(demo_app.url, "/txt2img", {"width": 512, "height": 512, "steps": 40, "batch_size": 8, "n_iter": 16})
    assert_field_error(many, "n_iter")
    assert many.json()["field"] == "n_iter" and "16 × 8 images of 512×512 px at 40 steps" in many.json()["detail"]


def test_ui_request_over_the_work_budget_is_a_toast(demo_app: AppProcess) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(demo_app.url, verbose=False)
    arguments = _ui_generate_arguments(client, Width=2048, Height=2048, Steps=150, **{"Batch size": 2})
    started = time.monotonic()
    with pytest.raises(AppError) as caught:
        client.predict(*arguments, api_name="/generate")
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert "too large for one run" in message and "2 images of 2048×2048 px at 150 steps" in message, message
    assert "Traceback" not in message
    assert not unexpected_tracebacks(demo_app.text), unexpected_tracebacks(demo_app.text)


@pytest.mark.long
def test_a_request_at_the_limits_finishes_within_two_minutes(start_app) -> None:
    """The largest request validation lets through must not tie the demo server up for more than two minutes.

    A server of its own: a step at the largest size may outlast the interrupt, and the shared one must stay free.
    """
    demo_app = start_app("--demo")
    assert_txt2img_works(demo_app.url)  # the model is loaded before the clock starts

    body = largest_request_at_the_limits()
    started = time.monotonic()
    try:
        answer = requests.post(f"{demo_app.url}{API}/txt2img", json=body, timeout=LIMIT_BUDGET_S)
    except requests.Timeout:
        answer = None
    finally:
        elapsed = time.monotonic() - started
        requests.post(f"{demo_app.url}{API}/interrupt", timeout=30)  # free the server for the next test
    print(f"\nthe largest request at the limits {body} took {elapsed:.1f} s on the demo model")
    assert answer is not None, f"{body} took more than {LIMIT_BUDGET_S:.0f} s on the demo model"
    assert answer.status_code == 200, answer.text[:500]
    assert len(answer.json()["images"]) == body["batch_size"] * body["n_iter"]
    assert elapsed < LIMIT_BUDGET_S

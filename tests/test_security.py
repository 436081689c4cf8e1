"""A share link that is safe to hand out: logins cover every route, no route serves files outside ``outputs/``
and Gradio's temp folder, a pickle with code in it is refused, and passwords never reach the log.

Two servers: the session's ``--demo`` app (no login) for the path-traversal probes, and one ``--demo --auth``
app with a booby-trapped ``.ckpt`` in its models folder for the login and pickle checks.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from conftest import AppProcess, pick_free_port, spawn_app
from PIL import Image, PngImagePlugin

import app as atelier_app
from ui.pnginfo import PNG_INFO_ROUTE

API = "/sdapi/v1"
SMALL = {"width": 64, "height": 64, "steps": 2}
USER, PASSWORD = "anna", "Pw-never-in-logs-7f3a"
SECRET_TEXT = "TOP-SECRET-d41d8cd9"


# --- helpers ---------------------------------------------------------------------------------------------------
def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of ``..`` or ``%2e``)."""
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def secret_png(path: Path) -> Path:
    """A PNG outside outputs/ whose metadata holds SECRET_TEXT (so /png-info style readers would leak it)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", SECRET_TEXT)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16)).save(path, pnginfo=info)
    with path.open("ab") as handle:  # also as plain bytes, for raw file routes
        handle.write(SECRET_TEXT.encode())
    return path


def first_output(outputs: Path) -> Path:
    files = sorted(outputs.rglob("*.png"))
    assert files, f"no PNG under {outputs}"
    return files[0]


def generate_one(url: str, auth: Any = None) -> None:
    answer = requests.post(f"{url}{API}/txt2img", json={"prompt": "x", **SMALL}, auth=auth, timeout=300)
    assert answer.status_code == 200, answer.text[:500]


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- path traversal (no login, the session's demo app) ------------------------------------------------------------
@pytest.fixture(scope="module")
def planted(demo_app: AppProcess) -> dict[str, Path]:
    """A real output, a secret PNG beside outputs/, and symlinks inside outputs/ pointing at it."""
    assert demo_app.workdir is not None
    outputs = demo_app.workdir / "outputs"
    generate_one(demo_app.url)
    real = first_output(outputs)
    secret = secret_png(demo_app.workdir / "private" / "secret.png")
    link = real.parent / "99999-1.png"
    link.symlink_to(secret)
    dir_link = outputs / "linked-dir"
    dir_link.symlink_to(secret.parent, target_is_directory=True)
    yield {"outputs": outputs, "real": real, "secret": secret, "link": link, "dir_link": dir_link}
    link.unlink(missing_ok=True)
    dir_link.unlink(missing_ok=True)


def test_a_real_output_is_served(demo_app: AppProcess, planted: dict[str, Path]) -> None:
    """The positive control: files under outputs/ are served, so the refusals below are real refusals."""
    status, body = raw_get(demo_app.url, "/gradio_api/file=" + str(planted["real"]))
    assert status == 200 and body.startswith(b"\x89PNG")


def traversal_paths(planted: dict[str, Path]) -> list[str]:
    outputs, secret = str(planted["outputs"]), str(planted["secret"])
    relative_secret = "../private/secret.png"
    paths = []
    for route in ("/gradio_api/file=", "/gradio_api/file/"):
        paths += [
            route + secret,
            route + f"{outputs}/{relative_secret}",
            route + f"{outputs}/%2e%2e/private/secret.png",
            route + f"{outputs}/%2E%2E%2Fprivate%2Fsecret.png",
            route + f"{outputs}/..%2fprivate%2fsecret.png",
            route + urllib.parse.quote(f"{outputs}/{relative_secret}", safe=""),
            route + "/etc/passwd",
            route + "../../../../../../etc/passwd",
            route + "..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
            route + f"{outputs}/../../../../../../etc/passwd",
            route + str(planted["link"]),
            route + f"{planted['dir_link']}/secret.png",
        ]
    for prefix in ("/static/", "/assets/", "/svelte/", "/gradio_api/", f"{API}/", "/"):
        paths += [
            prefix + "../../../../../../etc/passwd",
            prefix + "%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            prefix + "..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        ]
    paths.append("/gradio_api/custom_component/1/client/../../../../../../etc/passwd")
    paths.append("/pwa_icon/../../../../etc/passwd")
    return paths


def test_no_route_serves_files_outside_outputs(demo_app: AppProcess, planted: dict[str, Path]) -> None:
    leaks = []
    for path in traversal_paths(planted):
        status, body = raw_get(demo_app.url, path)
        if SECRET_TEXT.encode() in body or b"root:x:0:0" in body:
            leaks.append(f"{path} -> {status}")
        elif path.startswith("/gradio_api/file") and status == 200:
            leaks.append(f"{path} -> 200 ({body[:60]!r})")
    assert not leaks, "files outside outputs/ were served:\n" + "\n".join(leaks)
    assert demo_app.proc.poll() is None


def test_ui_file_inputs_cannot_name_server_paths(demo_app: AppProcess, planted: dict[str, Path]) -> None:
    """PNG Info's reader takes a file; a client naming a server path (not an upload) must not get it read."""
    real = read_via_ui(demo_app.url, planted["real"])  # the positive control: an output is readable
    assert "event: complete" in real and "Steps:" in real, real[:500]
    for path in (planted["secret"], planted["link"], planted["dir_link"] / "secret.png"):
        text = read_via_ui(demo_app.url, path)
        assert SECRET_TEXT not in text and "event: error" in text, (path, text[:500])


def read_via_ui(url: str, path: Path) -> str:
    """Call the PNG Info reader through Gradio's /call route naming a server-side ``path``; the event stream."""
    payload = {"data": [{"path": str(path), "meta": {"_type": "gradio.FileData"}}]}
    started = requests.post(f"{url}/gradio_api/call/{PNG_INFO_ROUTE}", json=payload, timeout=30)
    if started.status_code != 200:
        return f"event: error\n{started.status_code} {started.text}"
    event_id = started.json()["event_id"]
    return requests.get(f"{url}/gradio_api/call/{PNG_INFO_ROUTE}/{event_id}", timeout=60).text


# --- logins (a --auth app) ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``--demo --auth anna:...`` with a pickle that runs a command planted as ``totally-safe.ckpt``."""
    workdir = tmp_path_factory.mktemp("secured")
    marker = workdir / "pwned"
    evil = workdir / "models" / "checkpoints" / "totally-safe.ckpt"
    evil.parent.mkdir(parents=True)
    state = {"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1, 4, 3, 3)},
             "payload": _RunsACommand(marker)}
    torch.save(state, evil)
    running = spawn_app(workdir, "--demo", "--auth", f"{USER}:{PASSWORD}")
    yield {"app": running, "marker": marker, "workdir": workdir}
    running.stop()


def logged_in_session(url: str) -> requests.Session:
    session = requests.Session()
    answer = session.post(url + "/login", data={"username": USER, "password": PASSWORD}, timeout=30)
    assert answer.status_code == 200, answer.text[:300]
    return session


def test_auth_protects_ui_api_and_file_routes_alike(secured: dict[str, Any]) -> None:
    running: AppProcess = secured["app"]
    url = running.url
    generate_one(url, auth=(USER, PASSWORD))
    output = first_output(running.workdir / "outputs")

    anonymous = {
        "GET /config": requests.get(url + "/config", timeout=30),
        "GET /gradio_api/info": requests.get(url + "/gradio_api/info", timeout=30),
        "GET file=output": requests.get(f"{url}/gradio_api/file={output}", timeout=30),
        "POST /gradio_api/upload": requests.post(url + "/gradio_api/upload", files={"files": b"x"}, timeout=30),
        "POST /gradio_api/queue/join": requests.post(url + "/gradio_api/queue/join", json={}, timeout=30),
        "POST /gradio_api/call/generate": requests.post(url + "/gradio_api/call/generate", json={"data": []},
                                                        timeout=30),
        "GET sd-models": requests.get(f"{url}{API}/sd-models", timeout=30),
        "GET progress": requests.get(f"{url}{API}/progress", timeout=30),
        "POST txt2img": requests.post(f"{url}{API}/txt2img", json=SMALL, timeout=30),
        "POST interrupt": requests.post(f"{url}{API}/interrupt", timeout=30),
        "POST options": requests.post(f"{url}{API}/options", json={"sd_model_checkpoint": "x"}, timeout=30),
        "POST txt2img wrong password": requests.post(f"{url}{API}/txt2img", json=SMALL,
                                                     auth=(USER, PASSWORD + "x"), timeout=30),
        "GET file=output wrong user": requests.get(f"{url}/gradio_api/file={output}", auth=("eve", PASSWORD),
                                                   timeout=30),
    }
    open_doors = {name: r.status_code for name, r in anonymous.items() if r.status_code not in (401, 403)}
    assert not open_doors, f"answered without a valid login: {open_doors}"
    for name, answer in anonymous.items():
        assert not answer.content.startswith(b"\x89PNG"), name

    page = requests.get(url + "/", timeout=30)  # the page itself is only the login form
    assert '"auth_required":true' in page.text.replace(" ", "")
    assert "txt2img-prompt" not in page.text

    # With the login, each door opens.
    assert requests.get(f"{url}{API}/sd-models", auth=(USER, PASSWORD), timeout=30).status_code == 200
    session = logged_in_session(url)
    assert session.get(url + "/config", timeout=30).status_code == 200
    served = session.get(f"{url}/gradio_api/file={output}", timeout=30)
    assert served.status_code == 200 and served.content.startswith(b"\x89PNG")


def test_ui_client_needs_the_login_too(secured: dict[str, Any]) -> None:
    from gradio_client import Client

    url = secured["app"].url
    with pytest.raises(Exception):  # noqa: B017  (gradio_client raises ValueError or httpx errors by version)
        Client(url, verbose=False)
    client = Client(url, auth=(USER, PASSWORD), verbose=False)
    assert "/generate" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]


def test_a_ckpt_pickle_with_code_is_refused_end_to_end(secured: dict[str, Any]) -> None:
    running: AppProcess = secured["app"]
    auth = (USER, PASSWORD)
    titles = [m["title"] for m in requests.get(f"{running.url}{API}/sd-models", auth=auth, timeout=30).json()]
    assert any(t.startswith("totally-safe") for t in titles), titles
    answer = requests.post(
        f"{running.url}{API}/txt2img",
        json={**SMALL, "override_settings": {"sd_model_checkpoint": "totally-safe"}},
        auth=auth,
        timeout=300,
    )
    assert 400 <= answer.status_code < 500, answer.text[:500]
    assert "refused" in answer.json()["detail"].lower(), answer.text[:500]
    assert not secured["marker"].exists(), "the pickle's command ran"
    generate_one(running.url, auth=auth)  # the demo model still works
    assert not secured["marker"].exists()


def test_no_password_in_the_log(secured: dict[str, Any]) -> None:
    running: AppProcess = secured["app"]
    requests.post(running.url + "/login", data={"username": USER, "password": PASSWORD + "-wrong"}, timeout=30)
    requests.get(f"{running.url}{API}/options", auth=(USER, PASSWORD + "-wrong"), timeout=30)
    requests.get(f"{running.url}{API}/options", auth=(USER, PASSWORD), timeout=30)
    time.sleep(0.5)
    text = running.text
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for secret in (PASSWORD, token, PASSWORD + "-wrong"):
        assert secret not in text, f"{secret!r} appears in the log"
    settings_file = secured["workdir"] / "settings.json"
    if settings_file.exists():
        assert PASSWORD not in settings_file.read_text()


# --- start-up messages (in-process, stopped right after the checks) ------------------------------------------------
class _StopHere(Exception):
    pass


def start_up_output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path,
                    *flags: str) -> str:
    """What app.py prints before it builds the manager (the password and warnings come first)."""

    def stop(_settings: Any, *_pool: Any) -> None:
        raise _StopHere

    monkeypatch.setattr(atelier_app, "build_manager", stop)
    monkeypatch.setattr(atelier_app, "share_relay_reachable", lambda *a, **k: False)
    argv = ["--no-browser", "--port", str(pick_free_port()), "--settings-file", str(tmp_path / "s.json"),
            "--outputs-dir", str(tmp_path / "outputs"), *flags]
    with pytest.raises(_StopHere):
        atelier_app.main(argv)
    return capsys.readouterr().out


def test_share_without_auth_always_gets_a_fresh_strong_password(monkeypatch, capsys, tmp_path) -> None:
    passwords = []
    for flags in (("--share",), ("--share",), ("--share", "--listen")):
        out = start_up_output(monkeypatch, capsys, tmp_path, *flags)
        found = re.search(r"^Share login: user atelier, password (\S+)$", out, re.M)
        assert found, out
        passwords.append(found.group(1))
        assert "without --auth" not in out  # a generated password is a login
    assert len(set(passwords)) == 3, "the share password repeats"
    assert all(len(p) >= 16 for p in passwords), passwords


def test_share_with_auth_prints_no_password(monkeypatch, capsys, tmp_path) -> None:
    out = start_up_output(monkeypatch, capsys, tmp_path, "--share", "--auth", f"{USER}:{PASSWORD}")
    assert "Share login" not in out and PASSWORD not in out


@pytest.mark.parametrize("flags", [("--listen",), ("--host", "0.0.0.0")])
def test_listening_on_the_network_without_auth_warns(monkeypatch, capsys, tmp_path, flags) -> None:
    out = start_up_output(monkeypatch, capsys, tmp_path, *flags)
    assert re.search(r"WARNING: listening on 0\.0\.0\.0 without --auth", out), out
    out = start_up_output(monkeypatch, capsys, tmp_path, *flags, "--auth", f"{USER}:{PASSWORD}")
    assert "WARNING" not in out and PASSWORD not in out


def test_auth_file_passwords_are_not_echoed(monkeypatch, capsys, tmp_path) -> None:
    logins = tmp_path / "logins.txt"
    logins.write_text(f"{USER}:{PASSWORD}\n")
    out = start_up_output(monkeypatch, capsys, tmp_path, "--listen", "--auth-file", str(logins))
    assert PASSWORD not in out and "WARNING" not in out


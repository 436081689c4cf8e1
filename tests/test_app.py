"""app.py: its flags, how it builds Settings, and the server it starts (port, share, auth, clean stop)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import REPO_ROOT, app_command, pick_free_port

import app

# DESIGN.md's "app.py flags" table, kept here too so the test works without ../shared.
DESIGN_FLAGS = [
    "--host",
    "--listen",
    "--port",
    "--share",
    "--auth",
    "--auth-file",
    "--models-dir",
    "--outputs-dir",
    "--checkpoint",
    "--device",
    "--precision",
    "--medvram",
    "--lowvram",
    "--xformers",
    "--fast",
    "--no-browser",
    "--settings-file",
    "--demo",
    "--styles-file",
]
DESIGN_MD = REPO_ROOT.parent / "shared" / "DESIGN.md"


def design_table_flags() -> set[str]:
    """Flags named in DESIGN.md's app.py table, when the file is beside the repo."""
    if not DESIGN_MD.exists():
        return set()
    text = DESIGN_MD.read_text(encoding="utf-8")
    table = text.split("## app.py flags", 1)[1].split("\n## ", 1)[0]
    return {
        flag for line in table.splitlines() if line.startswith("|") for flag in re.findall(r"`(--[a-z][a-z-]*)", line)
    }


# --- flags -------------------------------------------------------------------------------------------------
def test_help_lists_every_design_flag():
    out = subprocess.run(app_command("--help"), capture_output=True, text=True, timeout=60, check=True).stdout
    for flag in set(DESIGN_FLAGS) | design_table_flags():
        assert re.search(rf"(^|\s){re.escape(flag)}\b", out), f"app.py --help does not document {flag}"
    assert "--step-delay" not in out  # the test-only flag stays hidden


HELP_PROBE = """
import runpy, sys
sys.argv = ["app.py", "--help"]
try:
    runpy.run_path("app.py", run_name="__main__")
except SystemExit:
    pass
print(sorted(m for m in ("torch", "gradio", "diffusers", "pipelines.settings") if m in sys.modules))
"""


def test_help_needs_no_heavy_imports():
    # ./launch.sh --help answers before set-up, with a Python that may lack torch and gradio.
    out = subprocess.run(
        [app_command()[0], "-c", HELP_PROBE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_unknown_flag_is_refused_with_usage():
    proc = subprocess.run(app_command("--no-such-flag"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in proc.stderr


def test_medvram_and_lowvram_exclude_each_other():
    proc = subprocess.run(app_command("--medvram", "--lowvram"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "not allowed with" in proc.stderr


# --- Settings from flags and settings.json -----------------------------------------------------------------
def settings_for(*argv: str):
    return app.build_settings(app.build_parser().parse_args(list(argv)))


def test_flags_win_over_saved_values_and_the_rest_is_loaded(tmp_path: Path):
    saved = tmp_path / "settings.json"
    saved.write_text(json.dumps({"device": "cuda", "memory_mode": "sliced", "default_steps": 31, "vram_slots": 2}))
    settings = settings_for("--settings-file", str(saved), "--device", "cpu", "--medvram")
    assert settings.device == "cpu"  # flag wins
    assert settings.memory_mode == "offload"  # --medvram wins over the saved "sliced"
    assert settings.default_steps == 31 and settings.vram_slots == 2  # saved values are used
    assert {"device", "memory_mode"} <= settings.from_cli
    assert "default_steps" not in settings.from_cli
    assert settings.settings_file == saved.resolve()


def test_lowvram_paths_and_test_delay(tmp_path: Path):
    settings = settings_for(
        "--lowvram",
        "--models-dir",
        str(tmp_path / "m"),
        "--outputs-dir",
        str(tmp_path / "o"),
        "--cache-dir",
        str(tmp_path / "c"),
        "--checkpoint",
        "v1-5",
        "--step-delay",
        "0.25",
        "--demo",
        "--xformers",
    )
    assert settings.memory_mode == "sequential"
    assert settings.models_dir == (tmp_path / "m").resolve() and settings.models_dir.is_absolute()
    assert settings.outputs_dir == (tmp_path / "o").resolve()
    assert settings.cache_dir == (tmp_path / "c").resolve()
    assert settings.checkpoint == "v1-5" and settings.step_delay_s == 0.25
    assert settings.demo and settings.xformers
    given = {"models_dir", "outputs_dir", "cache_dir", "checkpoint", "demo", "xformers", "step_delay_s"}
    assert given <= settings.from_cli


def test_settings_file_defaults_to_beside_the_outputs_folder(tmp_path: Path):
    (tmp_path / "settings.json").write_text(json.dumps({"default_sampler": "DPM++ 2M"}))
    settings = settings_for("--outputs-dir", str(tmp_path / "outputs"))
    assert settings.settings_file == (tmp_path / "settings.json").resolve()
    assert settings.default_sampler == "DPM++ 2M"


def test_broken_or_odd_settings_file_is_reported_not_fatal(tmp_path: Path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    settings = settings_for("--settings-file", str(broken))
    assert settings.device == "auto"
    assert "could not be read" in capsys.readouterr().out

    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"memory_mode": "turbo", "device": "cpu", "demo": True, "from_cli": ["x"]}))
    settings = settings_for("--settings-file", str(odd))
    assert settings.memory_mode == "auto" and settings.device == "cpu"
    assert settings.demo is False  # --demo is a flag only, never saved
    assert "memory_mode='turbo'" in capsys.readouterr().out


def test_styles_file_flag_and_checked_prompt_settings(tmp_path: Path, capsys):
    saved = tmp_path / "settings.json"
    saved.write_text(json.dumps({"clip_skip": 40, "emphasis": "No norm", "styles_file": "/elsewhere/styles.csv"}))
    settings = settings_for("--settings-file", str(saved), "--styles-file", str(tmp_path / "my-styles.csv"))
    assert settings.styles_file == (tmp_path / "my-styles.csv").resolve()
    assert "styles_file" in settings.from_cli
    assert settings.clip_skip == 1 and settings.emphasis == "No norm"  # a saved value out of range is dropped
    assert "clip_skip=40" in capsys.readouterr().out
    settings = settings_for("--settings-file", str(saved))
    assert settings.styles_file is None  # the engine's default: styles.csv beside the settings file


# --- auth --------------------------------------------------------------------------------------------------
def test_auth_file_format(tmp_path: Path):
    path = tmp_path / "logins.txt"
    path.write_text("# studio logins\n\nanna:pa:ss\n  ben:secret  \n# carl:old\n", encoding="utf-8")
    assert app.read_auth_file(path) == {"anna": "pa:ss", "ben": "secret"}


def test_auth_flag_and_file_combine(tmp_path: Path):
    path = tmp_path / "logins.txt"
    path.write_text("ben:secret\n")
    args = app.build_parser().parse_args(["--auth", "anna:1,carl:2", "--auth-file", str(path)])
    assert app.collect_auth(args) == {"anna": "1", "carl": "2", "ben": "secret"}
    assert app.collect_auth(app.build_parser().parse_args([])) is None


@pytest.mark.parametrize("content", ["justaname\n", "# only comments\n\n", ":nouser\n", "user:\n"])
def test_bad_auth_file_is_refused(tmp_path: Path, content: str):
    path = tmp_path / "logins.txt"
    path.write_text(content)
    with pytest.raises(app.StartupError, match="auth-file"):
        app.read_auth_file(path)


def test_unreadable_auth_file_stops_with_one_line(tmp_path: Path, monkeypatch):
    path = tmp_path / "logins.txt"
    path.write_text("a:b\n")

    def denied(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(app.StartupError, match="cannot read it"):
        app.read_auth_file(path)


def test_missing_auth_file_exits_2_without_traceback(tmp_path: Path):
    proc = subprocess.run(
        app_command("--no-browser", "--auth-file", str(tmp_path / "nope.txt")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("Atelier: --auth-file") and len(proc.stderr.strip().splitlines()) == 1


# --- ports -------------------------------------------------------------------------------------------------
def test_find_free_port_skips_a_taken_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        chosen = app.find_free_port("127.0.0.1", port)
    assert chosen > port


# --- the server --------------------------------------------------------------------------------------------
def test_serves_the_page_on_the_next_free_port_and_stops_cleanly(start_app):
    with socket.socket() as taken:  # another program already holds the asked-for port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        running = start_app("--listen", "--port", str(port))
        assert running.url != f"http://127.0.0.1:{port}"
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", running.url)
        assert f"Port {port} is taken" in running.text
        assert "WARNING: listening on 0.0.0.0 without --auth" in running.text
        page = requests.get(running.url + "/", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert running.text.count("Running on local URL:") == 1
    assert running.stop() == 0  # SIGTERM: clean shutdown
    assert "Traceback" not in running.text


def test_checkpoint_flag_loads_it_at_start(start_app):
    from pipelines.demo import DEMO_CHECKPOINT_NAME

    running = start_app("--demo", "--checkpoint", DEMO_CHECKPOINT_NAME)
    assert f"Loading {DEMO_CHECKPOINT_NAME} in the background" in running.text
    running.wait_for(re.escape(f"Loaded {DEMO_CHECKPOINT_NAME} in ") + r"\d+\.\d s\.", timeout=120)
    assert "Traceback" not in running.text


def test_share_without_relay_warns_and_protects_with_a_password(start_app):
    dead_relay = f"http://127.0.0.1:{pick_free_port()}/tunnel-request"  # nothing listens: like an offline machine
    running = start_app("--share", env={"ATELIER_SHARE_RELAY_CHECK_URL": dead_relay})
    text = running.text
    login = re.search(r"^Share login: user atelier, password (\S+)$", text, re.M)
    assert login, text
    assert text.index("Share login:") < text.index("Running on local URL:")  # printed before the server starts
    assert "WARNING: --share" in text and "local server keeps running" in text
    assert "Traceback" not in text
    assert_login_required(running.url, "atelier", login.group(1))


def test_auth_is_required_when_set(start_app, tmp_path: Path):
    logins = tmp_path / "logins.txt"
    logins.write_text("# team\nanna:first:pw\n\nben:second\n")
    running = start_app("--auth-file", str(logins), "--auth", "carl:third")
    assert "WARNING" not in running.text
    for user, password in [("anna", "first:pw"), ("ben", "second"), ("carl", "third")]:
        assert_login_required(running.url, user, password)


def assert_login_required(url: str, user: str, password: str) -> None:
    """Without a login the app config is refused; a wrong password is refused; the right one opens it."""
    assert requests.get(url + "/config", timeout=30).status_code == 401
    page = requests.get(url + "/", timeout=30)
    assert page.status_code == 200 and '"auth_required":true' in page.text.replace(" ", "")
    session = requests.Session()
    assert (
        session.post(url + "/login", data={"username": user, "password": password + "x"}, timeout=30).status_code == 400
    )
    assert session.post(url + "/login", data={"username": user, "password": password}, timeout=30).status_code == 200
    assert session.get(url + "/config", timeout=30).status_code == 200

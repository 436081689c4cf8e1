"""Shared test fixtures: the ``--long`` switch, free ports, starting ``app.py`` as a subprocess, and a Playwright
browser on Debian's chromium.

Every test runs offline: nothing may download weights (HF_HUB_OFFLINE=1), models are tiny random-weight ones.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The tiny models' ops take microseconds, so torch's OpenMP threads spend most of a test spinning at barriers; on
# a 2-core machine shared with other processes a spinner then holds the core the worker needs (measured: a 512²
# 20-step demo image 30 s spinning, 1.3 s waiting passively). Set before torch loads; servers the tests start
# inherit it. The product keeps OpenMP's default: on a quiet machine passive waiting cost full-size images ~8 %
# wall time (bench, 256², 20 steps); README's Troubleshooting tells users on a busy CPU to set it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags chromium keeps dialling out, and this machine refuses it many times.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
APP_START_TIMEOUT_S = 120.0
URL_LINE = re.compile(r"Running on local URL: (http://\S+)")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# The tiny-model fixtures live in their own module (tests/model_fixtures.py).
if (Path(__file__).parent / "model_fixtures.py").exists():
    pytest_plugins = ["model_fixtures"]


# --- the test process ---------------------------------------------------------------------------------------
def pytest_configure(config: pytest.Config) -> None:
    """torch on one thread in the test process: tiny models run fastest that way, and far faster than on two
    threads when the 2-core machine is busy (measured: 82 ms vs 14 ms per 64x64 conv under load). The servers
    the tests start are not affected: they keep torch's default, as users run them."""
    import torch

    torch.set_num_threads(1)


# --- --long ------------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False, help="also run the slow suites (long fuzz, soak)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip_long = pytest.mark.skip(reason="slow suite: run with ./launch.sh --test --long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip_long)


# --- ports and app processes -------------------------------------------------------------------------------
def pick_free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    return pick_free_port()


@dataclass
class AppProcess:
    """A running ``app.py``: its URL, the process, and every line it printed so far."""

    url: str
    proc: subprocess.Popen
    output: list[str] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def text(self) -> str:
        return "".join(self.output)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match:
        """Wait until the output holds ``pattern`` (a regex); fails the test with the output otherwise."""
        found = _wait_for_output(self.proc, self.output, re.compile(pattern), timeout)
        if found is None:
            pytest.fail(f"app output never showed {pattern!r} in {timeout:.0f} s:\n{self.text[-4000:]}")
        return found

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (app.py shuts down cleanly), then SIGKILL if it does not go. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def _read_lines(proc: subprocess.Popen, sink: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sink.append(line)


def _wait_for_output(proc: subprocess.Popen, output: list[str], pattern: re.Pattern, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pattern.search("".join(output))
        if found:
            return found
        if proc.poll() is not None:
            time.sleep(0.2)  # let the reader thread take the last lines
            return pattern.search("".join(output))
        time.sleep(0.1)
    return None


def app_command(*args: str) -> list[str]:
    """How tools and tests start Atelier: the venv's Python running app.py directly."""
    return [sys.executable, str(REPO_ROOT / "app.py"), *args]


def spawn_app(workdir: Path, *args: str, port: int | None = None, env: dict[str, str] | None = None) -> AppProcess:
    """Start app.py with its own outputs/models/settings under ``workdir``; wait for its URL line."""
    for sub in ("outputs", "models"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    given = set(args)
    cmd = app_command("--no-browser", *args)
    if "--port" not in given:
        cmd += ["--port", str(port or pick_free_port())]
    if "--outputs-dir" not in given:
        cmd += ["--outputs-dir", str(workdir / "outputs")]
    if "--models-dir" not in given:
        cmd += ["--models-dir", str(workdir / "models")]
    if "--settings-file" not in given:
        cmd += ["--settings-file", str(workdir / "settings.json")]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    output: list[str] = []
    threading.Thread(target=_read_lines, args=(proc, output), daemon=True).start()
    found = _wait_for_output(proc, output, URL_LINE, APP_START_TIMEOUT_S)
    app = AppProcess(url=found.group(1) if found else "", proc=proc, output=output, workdir=workdir)
    if not found:
        app.stop()
        pytest.fail(f"app.py did not print its URL in {APP_START_TIMEOUT_S:.0f} s:\n{app.text[-4000:]}")
    return app


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., AppProcess]]:
    """Factory: ``start_app(*flags, port=None, env=None) -> AppProcess``; every app is stopped at teardown."""
    started: list[AppProcess] = []

    def start(*args: str, port: int | None = None, env: dict[str, str] | None = None) -> AppProcess:
        workdir = tmp_path / f"app{len(started)}"
        app = spawn_app(workdir, *args, port=port, env=env)
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()


@pytest.fixture(scope="session")
def demo_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    """One ``app.py --demo`` shared by the browser and API tests of the session."""
    app = spawn_app(tmp_path_factory.mktemp("demo_app"), "--demo")
    yield app
    app.stop()


# --- browser -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser():
    """Playwright driving Debian's chromium (Playwright's own browser download cannot work offline)."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: install it with 'apt-get install -y chromium' (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI installs it, so a missing browser there is a broken set-up, not a skip
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser context and page per test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


@pytest.fixture
def artifacts_dir() -> Path:
    """tests/artifacts/ (git-ignored): screenshots a person can look at after a run."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS

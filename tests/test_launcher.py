"""launch.sh (and launch.bat's agreement with it): argument handling, torch choice, the install stamp, failures.

launch.sh runs here on a copy of the launcher files with a fake Python (ATELIER_PYTHON): the fake records every
call and answers ``-c`` snippets with the real interpreter, so the script's logic runs for real without pip
touching the network or the disk.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

LAUNCHER_FILES = ["launch.sh", "app.py", "requirements.txt", "requirements-test.txt"]
# torch and torchvision are installed as one pinned pair (spandrel imports torchvision; a torchvision built for
# another torch does not import): every torch install below must name both.
TORCH_PIN = re.search(r"^TORCH_VERSION=([0-9.]+)$", (REPO_ROOT / "launch.sh").read_text(), re.M).group(1)
VISION_PIN = re.search(r"^TORCHVISION_VERSION=([0-9.]+)$", (REPO_ROOT / "launch.sh").read_text(), re.M).group(1)
PAIR = f"torch=={TORCH_PIN} torchvision=={VISION_PIN}"

FAKE_PYTHON = """#!/usr/bin/env bash
# A stand-in for python: logs its arguments, fakes venv/pip/app/pytest, runs -c with the real interpreter
# (except torchvision and spandrel imports: slow, and answered as a matching pair unless FAKE_NO_SPANDREL is set).
echo "$*" >> "$FAKE_LOG"
case "$1" in
  -c)
    if [ -n "${FAKE_TOO_OLD:-}" ] && [[ "$2" == *"import sys, venv"* ]]; then exit 1; fi
    if [[ "$2" == *"torchvision"* ]]; then echo "0.29.1+fake"; exit 0; fi
    if [[ "$2" == *"import spandrel"* ]]; then [ -z "${FAKE_NO_SPANDREL:-}" ]; exit $?; fi
    exec "$REAL_PYTHON" "$@" ;;
  -m)
    case "$2" in
      venv) mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0 ;;
      pip)
        if [ -n "${FAKE_PIP_FAIL:-}" ] && [[ "$*" == *"$FAKE_PIP_FAIL"* ]]; then
          echo "ERROR: ${FAKE_PIP_MESSAGE:-Could not find a version that satisfies the requirement}"
          exit 1
        fi
        echo "WARNING: Location 'file:///x/simple/torch/' is ignored: it is neither a file nor a directory."
        exit 0 ;;
      pytest) exit 0 ;;
    esac ;;
esac
exit 0
"""


@pytest.fixture
def launcher(tmp_path: Path):
    """A copy of the launcher files, a fake Python, and a fake ``nvidia-smi`` that finds no GPU by default."""
    root = tmp_path / "atelier"
    root.mkdir()
    for name in LAUNCHER_FILES:
        shutil.copy2(REPO_ROOT / name, root / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "fakepython"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    set_gpu(bin_dir, None)
    return Launcher(root, fake, bin_dir, tmp_path / "calls.log")


def set_gpu(bin_dir: Path, name: str | None) -> None:
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{name}'\n" if name else "#!/bin/sh\nexit 9\n")
    smi.chmod(0o755)


class Launcher:
    def __init__(self, root: Path, fake: Path, bin_dir: Path, log: Path):
        self.root, self.fake, self.bin_dir, self.log = root, fake, bin_dir, log

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        self.log.write_text("")
        full_env = {
            **{k: v for k, v in os.environ.items() if k not in ("TORCH_COMMAND", "ATELIER_TORCH_CUDA")},
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}",
            "ATELIER_PYTHON": str(self.fake),
            "REAL_PYTHON": sys.executable,
            "FAKE_LOG": str(self.log),
            **env,
        }
        return subprocess.run(
            ["bash", str(self.root / "launch.sh"), *args],
            cwd=self.root,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def pip_calls(self) -> list[str]:
        return [c for c in self.calls() if c.startswith("-m pip")]


def test_first_exit_sets_up_then_second_run_installs_nothing(launcher: Launcher):
    first = launcher.run("--exit")
    assert first.returncode == 0, first.stderr
    pips = launcher.pip_calls()
    assert any(re.search(rf"install {re.escape(PAIR)} --index-url \S+/whl/cpu", c) for c in pips), pips
    assert any("-r " in c and c.split("-r ")[1].startswith(str(launcher.root / "requirements.txt")) for c in pips)
    assert not any("requirements-test.txt" in c or "xformers" in c for c in pips)
    assert not any("app.py" in c for c in launcher.calls())  # --exit never starts the server
    assert "no GPU detected" in first.stdout and "set-up done" in first.stdout
    assert "is ignored" not in first.stdout  # pip's noise is filtered
    assert (launcher.root / ".venv" / "atelier-stamp").exists()

    started = time.monotonic()
    second = launcher.run("--exit")
    assert second.returncode == 0
    assert launcher.pip_calls() == []  # the stamp matches: no reinstall
    assert time.monotonic() - started < 15


def test_torchvision_is_pinned_beside_torch_for_later_installs(launcher: Launcher):
    assert launcher.run("--exit").returncode == 0
    constraints = (launcher.root / ".venv" / "atelier-constraints.txt").read_text().split()
    assert constraints[0].startswith("torch==") and constraints[1] == "torchvision==0.29.1+fake"


def test_spandrel_that_does_not_import_is_a_warning_after_an_install(launcher: Launcher):
    first = launcher.run("--exit", FAKE_NO_SPANDREL="1")
    assert first.returncode == 0, first.stderr
    assert "spandrel does not import" in first.stdout and "TORCH_COMMAND" in first.stdout
    second = launcher.run("--exit", FAKE_NO_SPANDREL="1")
    assert "spandrel" not in second.stdout  # nothing installed: no import check, the start stays fast


def test_changed_requirements_reinstall_them_but_not_torch(launcher: Launcher):
    assert launcher.run("--exit").returncode == 0
    with (launcher.root / "requirements.txt").open("a") as f:
        f.write("rich>=13\n")
    assert launcher.run("--exit").returncode == 0
    pips = launcher.pip_calls()
    assert len(pips) == 1 and "requirements.txt" in pips[0]


def test_app_flags_are_passed_through(launcher: Launcher):
    result = launcher.run("--port", "9999", "--share", "--auth", "a:b c")
    assert result.returncode == 0, result.stderr
    app_calls = [c for c in launcher.calls() if "app.py" in c]
    assert len(app_calls) == 1
    assert app_calls[0].endswith("app.py --port 9999 --share --auth a:b c")


def test_test_mode_installs_test_requirements_and_passes_args_to_pytest(launcher: Launcher):
    result = launcher.run("--test", "--long", "-k", "smoke")
    assert result.returncode == 0, result.stderr
    assert any("requirements-test.txt" in c for c in launcher.pip_calls())
    assert "-m pytest --long -k smoke" in launcher.calls()
    assert not any("app.py" in c for c in launcher.calls())


def test_nvidia_gpu_gets_a_cuda_build_and_optional_xformers(launcher: Launcher):
    set_gpu(launcher.bin_dir, "NVIDIA GeForce RTX 4090")
    result = launcher.run("--exit")
    assert result.returncode == 0, result.stderr
    assert "detected NVIDIA GPU (NVIDIA GeForce RTX 4090)" in result.stdout
    pips = launcher.pip_calls()
    assert any(re.search(rf"install {re.escape(PAIR)} --extra-index-url \S+/whl/cu\d+", c) for c in pips), pips
    xformers = [c for c in pips if "xformers" in c]
    assert xformers and "--only-binary" in xformers[0]  # never a source build


def test_missing_xformers_wheel_is_not_an_error(launcher: Launcher):
    set_gpu(launcher.bin_dir, "NVIDIA RTX A4000")
    result = launcher.run("--exit", FAKE_PIP_FAIL="--only-binary")
    assert result.returncode == 0
    assert "going on without it" in result.stdout


def test_unreachable_cpu_index_falls_back_to_the_default_index(launcher: Launcher):
    result = launcher.run("--exit", FAKE_PIP_FAIL="whl/cpu")
    assert result.returncode == 0, result.stderr
    assert f"install {PAIR}" in [c.removeprefix("-m pip ") for c in launcher.pip_calls()]


def test_torch_command_overrides_the_torch_install(launcher: Launcher):
    result = launcher.run("--exit", TORCH_COMMAND="pip install torch==2.12.0 --index-url https://example.invalid/x")
    assert result.returncode == 0, result.stderr
    torch_calls = [c for c in launcher.pip_calls() if "install torch" in c]
    assert torch_calls == ["-m pip install torch==2.12.0 --index-url https://example.invalid/x"]


def test_pip_failure_stops_with_one_line_and_no_stamp(launcher: Launcher):
    result = launcher.run("--exit", FAKE_PIP_FAIL="requirements.txt")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Atelier: ERROR")]
    assert len(errors) == 1 and "requirements.txt" in errors[0] and "run the same command again" in errors[0]
    assert "requirements=" not in (launcher.root / ".venv" / "atelier-stamp").read_text()
    # The next run picks up where it stopped.
    assert launcher.run("--exit").returncode == 0
    assert [c for c in launcher.pip_calls() if "install torch" in c] == []


def test_full_disk_says_so(launcher: Launcher):
    result = launcher.run(
        "--exit", FAKE_PIP_FAIL="requirements.txt", FAKE_PIP_MESSAGE="[Errno 28] No space left on device"
    )
    assert result.returncode != 0
    assert "ran out of disk space" in result.stderr


def test_unusable_python_is_refused_with_what_to_do(launcher: Launcher, tmp_path: Path):
    result = launcher.run("--exit", FAKE_TOO_OLD="1")
    assert result.returncode != 0
    assert "Python 3.10-3.12" in result.stderr and "ATELIER_PYTHON" in result.stderr
    assert not (launcher.root / ".venv").exists()
    missing = launcher.run("--exit", ATELIER_PYTHON=str(tmp_path / "no-python"))
    assert missing.returncode != 0 and "ATELIER_PYTHON" in missing.stderr


def test_help_shows_launcher_and_app_flags_without_setting_up(launcher: Launcher):
    result = launcher.run("--help", ATELIER_PYTHON=sys.executable)
    assert result.returncode == 0, result.stderr
    for flag in ("--exit", "--test", "--long", "TORCH_COMMAND", "--share", "--models-dir", "--medvram"):
        assert flag in result.stdout
    assert not (launcher.root / ".venv").exists()


# --- launch.bat mirrors launch.sh --------------------------------------------------------------------------
def torch_version(text: str, name: str = "TORCH_VERSION") -> str:
    found = re.findall(rf"^\s*(?:set \"?)?{name}=([0-9.]+)", text, re.M)
    assert len(found) == 1, f"{name} must be pinned in exactly one line"
    return found[0]


def test_launch_bat_mirrors_launch_sh():
    sh = (REPO_ROOT / "launch.sh").read_text()
    bat = (REPO_ROOT / "launch.bat").read_text()
    assert torch_version(sh) == torch_version(bat)
    assert torch_version(sh, "TORCHVISION_VERSION") == torch_version(bat, "TORCHVISION_VERSION")
    for text in (sh, bat):
        assert "requirements.txt" in text and "requirements-test.txt" in text
        assert ("torch==%TORCH_VERSION% torchvision==%TORCHVISION_VERSION%" in text
                or "torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION" in text)
        for word in ("--test", "--exit", "--help", "TORCH_COMMAND", "ATELIER_PYTHON", "atelier-stamp", "xformers"):
            assert word in text, word
        assert "whl/cpu" in text or "/cpu" in text
    cuda = re.search(r"TORCH_CUDA_DEFAULT=(cu\d+)", sh).group(1)
    assert f"TORCH_CUDA_DEFAULT={cuda}" in bat
    assert b"\r\n" in (REPO_ROOT / "launch.bat").read_bytes()  # cmd.exe wants CRLF line ends
    requirements = "\n".join(line.split("#")[0] for line in (REPO_ROOT / "requirements.txt").read_text().splitlines())
    assert "torch==" not in requirements and "torchvision" not in requirements  # the pins live in the launchers
    assert re.search(r"^spandrel>=", requirements, re.M)


def test_readme_shows_exactly_the_two_set_up_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["./launch.sh", "./launch.sh --test"]
    assert "launch.bat" in first_block


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason=".ci/run would apt-get install chromium first")
@pytest.mark.parametrize("code", [0, 3])
def test_ci_run_calls_launch_test_and_passes_its_exit_code_on(tmp_path: Path, code: int):
    (tmp_path / ".ci").mkdir()
    shutil.copy2(REPO_ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    fake_launch = tmp_path / "launch.sh"
    fake_launch.write_text(f'#!/usr/bin/env bash\necho "launch.sh $* CI=$CI"\nexit {code}\n')
    fake_launch.chmod(0o755)
    result = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=60)
    assert result.returncode == code
    assert "launch.sh --test CI=true" in result.stdout

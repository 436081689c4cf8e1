"""The suite fails loudly: a hanging test fails on its own timeout instead of stalling CI."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_has_a_time_limit():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[tool.pytest.ini_options]", 1)[1].split("\n[", 1)[0]
    found = re.search(r"^timeout = (\d+)$", section, re.M)
    assert found and 60 <= int(found[1]) <= 600


def test_a_hanging_test_fails_on_its_timeout(tmp_path: Path):
    (tmp_path / "test_hangs.py").write_text("import time\n\ndef test_hangs():\n    time.sleep(120)\n")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=2", str(tmp_path)],
        capture_output=True, text=True, timeout=90, cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "Timeout" in proc.stdout and time.monotonic() - started < 60

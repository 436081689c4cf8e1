"""The saved ``settings.json``: Settings values and the last used generation values, in one file.

app.py reads the Settings part at start-up. The UI writes it when Settings are saved and remembers each tab's
last generation values under ``"last_values"`` so that a restart brings back what the artist typed.
Fields given on the command line (``Settings.from_cli``) are never written: a flag always wins, and saving
Settings must not turn a one-off flag into a saved value.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from pipelines.errors import OutputWriteError
from pipelines.settings import Settings

log = logging.getLogger(__name__)

LAST_VALUES_KEY = "last_values"


def settings_path(settings: Settings) -> Path:
    """Where settings are saved: ``--settings-file`` or ``settings.json`` beside the outputs folder."""
    if settings.settings_file is not None:
        return Path(settings.settings_file)
    return Path(settings.outputs_dir).parent / "settings.json"


class SettingsFile:
    """Reads and atomically rewrites the settings JSON; one lock so that tabs saving at once do not race."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path = settings_path(settings)
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        """The file's contents, or ``{}`` when it is missing or not valid JSON (a broken file is not fatal)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("Could not read %s (%s); starting from defaults.", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def last_values(self, tab: str) -> dict[str, Any]:
        """The values last used in ``tab`` ("txt2img", "img2img", "upscale"), or ``{}``."""
        values = self.read().get(LAST_VALUES_KEY, {})
        tab_values = values.get(tab, {}) if isinstance(values, dict) else {}
        return tab_values if isinstance(tab_values, dict) else {}

    def save_last_values(self, tab: str, values: dict[str, Any]) -> None:
        """Remember ``values`` for ``tab``. Failing to write only logs: it must never stop a generation."""
        try:
            with self._lock:
                data = self.read()
                last = data.get(LAST_VALUES_KEY)
                last = last if isinstance(last, dict) else {}
                last[tab] = values
                data[LAST_VALUES_KEY] = last
                self._write(data)
        except OSError as exc:
            log.warning("Could not remember the last values in %s: %s", self.path, exc)

    def save_settings(self) -> Path:
        """Write the current Settings (except fields from the command line), keeping other keys in the file.

        Raises ``OutputWriteError`` with advice when the file cannot be written.
        """
        with self._lock:
            data = self.read()
            for name, value in self.settings.to_json().items():
                if name in self.settings.from_cli:
                    continue
                data[name] = value
            try:
                self._write(data)
            except OSError as exc:
                raise OutputWriteError(
                    f"Could not save settings to {self.path}: {exc.strerror or exc}. "
                    "Check that the folder exists, is writable and the disk is not full."
                ) from exc
        return self.path

    def _write(self, data: dict[str, Any]) -> None:
        # Temp file + rename: a crash or a full disk never leaves a half-written settings.json behind.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".settings-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2, sort_keys=True)
                handle.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

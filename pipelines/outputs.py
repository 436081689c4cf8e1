"""Output files: ``outputs/<task>/<YYYY-MM-DD>/<NNNNN>-<seed>.png``, written atomically, A1111 metadata inside.

A write goes to a hidden temp file in the target folder, is fsync'ed, then renamed over the final name with
``os.replace`` (atomic on one file system). Any ``OSError`` (disk full, read-only, permissions) removes the temp
file and raises ``OutputWriteError``: a reader never sees a half-written PNG.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import io
import os
import re
import threading
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from .errors import OutputWriteError

_COUNTER = re.compile(r"^(\d{5,})-")
_LOCK = threading.Lock()  # counter + rename under one lock: two writers never pick the same NNNNN


def output_folder(outputs_dir: Path, task: str, when: _dt.date | None = None) -> Path:
    """``outputs_dir/<task>/<YYYY-MM-DD>``."""
    day = (when or _dt.date.today()).isoformat()
    return Path(outputs_dir) / task / day


def next_counter(folder: Path) -> int:
    """The next free NNNNN in ``folder``: one past the highest existing counter (0 for a new folder)."""
    highest = -1
    try:
        for entry in os.scandir(folder):
            match = _COUNTER.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    except FileNotFoundError:
        pass
    return highest + 1


def encode_png(image: Image.Image, parameters: str | None) -> bytes:
    """PNG bytes with a ``parameters`` tEXt/iTXt chunk (what A1111's PNG Info reads)."""
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _describe_os_error(exc: OSError, folder: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"The disk holding {folder} is full; the image was not saved. Free some space or use --outputs-dir."
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"Atelier may not write to {folder}; the image was not saved. Fix the folder's permissions or use " \
               "--outputs-dir."
    return f"Could not save the image in {folder} ({exc.strerror or exc}). Check the folder or use --outputs-dir."


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + ``os.replace``; no partial file on failure."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_png_with_parameters(image: Image.Image, parameters: str | None, folder: Path, seed: int) -> Path:
    """Save ``image`` as ``folder/NNNNN-<seed>.png`` with the infotext; return the path.

    Raises ``OutputWriteError`` with advice when the folder cannot be created or written.
    """
    return write_png_bytes(encode_png(image, parameters), folder, seed)


def write_png_bytes(data: bytes, folder: Path, seed: int) -> Path:
    """Save an encoded PNG (``encode_png``'s bytes, made elsewhere: a pool replica's) as ``folder/NNNNN-<seed>.png``;
    return the path. Raises ``OutputWriteError`` as ``write_png_with_parameters`` does."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _LOCK:
            path = folder / f"{next_counter(folder):05d}-{seed}.png"
            write_atomic(path, data)
    except OSError as exc:
        raise OutputWriteError(_describe_os_error(exc, folder)) from exc
    return path


EXIF_USER_COMMENT = 0x9286
EXIF_IFD = 0x8769


def read_parameters(image_or_path: Any) -> str | None:
    """The A1111 ``parameters`` text of an image (a PIL image, a path or bytes), or None when it has none.

    PNG: the ``parameters`` text chunk. JPEG/WebP: the EXIF UserComment, where A1111 writes the same text.
    The PNG Info tab and ``/sdapi/v1/png-info`` both read through here.
    """
    if isinstance(image_or_path, Image.Image):
        return _parameters_of(image_or_path)
    if isinstance(image_or_path, (bytes, bytearray)):
        with Image.open(io.BytesIO(bytes(image_or_path))) as image:
            return _parameters_of(image)
    with Image.open(Path(image_or_path)) as image:
        return _parameters_of(image)


def _parameters_of(image: Image.Image) -> str | None:
    text = getattr(image, "text", None)  # PNG text chunks (tEXt, zTXt, iTXt)
    if isinstance(text, dict) and text.get("parameters"):
        return str(text["parameters"])
    value = image.info.get("parameters")
    if value:
        return str(value)
    exif = image.getexif()
    comment = exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT) or exif.get(EXIF_USER_COMMENT)
    if isinstance(comment, bytes):
        return _decode_user_comment(comment)
    return str(comment) if comment else None


def _decode_user_comment(raw: bytes) -> str | None:
    """EXIF UserComment: an 8-byte charset header, then the text (A1111 writes ``UNICODE\\0`` + UTF-16)."""
    header, body = raw[:8], raw[8:]
    if header.startswith(b"UNICODE"):
        for encoding in ("utf-16-be", "utf-16-le"):
            try:
                text = body.decode(encoding)
            except UnicodeDecodeError:
                continue
            if text.isprintable() or "\n" in text:
                return text.strip("\x00")
    return body.decode("utf-8", "replace").strip("\x00") or None

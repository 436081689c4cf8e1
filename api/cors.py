"""Which browser pages may call the API: cross-origin access is off unless ``--cors-allow-origins URL[,URL]`` or
``--cors-allow-origins-regex RE`` (A1111's flags) allow a page on another origin (openOutpaint served from its own
port, a hosted front-end).

Two guards, because CORS alone does not stop a page from *sending* a request, only from reading the answer:

* ``install``: the app's CORS middleware. Gradio adds its own, which lets any ``localhost`` page read every answer
  (and any page at all when the server is reached by a LAN address); it is replaced by Starlette's, with exactly the
  allowed origins, or removed when none are (as A1111 removes Gradio's). A preflight from another origin gets no
  CORS headers, so the browser refuses the call.
* ``CorsPolicy.refusal``: a state-changing request (POST...) that carries an ``Origin`` header, not of this server
  and not allowed, is answered 403 before anything runs, and ``Origin: null`` (sandboxed frames, ``file://`` pages:
  the CSRF bypass of ComfyUI#13245) always is. Programs that send no ``Origin`` (curl, Python clients) and the UI's
  own page (same origin) are not affected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
CORS_MIDDLEWARE_NAMES = ("CORSMiddleware", "CustomCORSMiddleware")  # Starlette's and Gradio's


@dataclass(frozen=True)
class CorsPolicy:
    """The origins (``scheme://host[:port]``, or ``*``) and the origin pattern whose pages may call the API."""

    origins: tuple[str, ...] = ()
    origin_regex: str | None = None

    @classmethod
    def from_flags(cls, origins: str | None, origin_regex: str | None) -> CorsPolicy:
        """The policy of ``--cors-allow-origins`` (comma-separated) and ``--cors-allow-origins-regex``; raises
        ``ValueError`` saying what is wrong with either."""
        listed = tuple(origin.strip().rstrip("/") for origin in (origins or "").split(",") if origin.strip())
        for origin in listed:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path):
                raise ValueError(f"--cors-allow-origins: {origin!r} is not an origin; write scheme://host[:port], "
                                 "e.g. http://127.0.0.1:3456")
        pattern = (origin_regex or "").strip() or None
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"--cors-allow-origins-regex: {pattern!r} is not a regular expression "
                                 f"({exc})") from exc
        return cls(listed, pattern)

    @property
    def enabled(self) -> bool:
        return bool(self.origins or self.origin_regex)

    def allows(self, origin: str) -> bool:
        """Whether a page on ``origin`` may call the API from another origin (``null`` never may)."""
        origin = origin.strip().rstrip("/")
        if not origin or origin.lower() == "null":
            return False
        if "*" in self.origins or origin in self.origins:
            return True
        return self.origin_regex is not None and re.fullmatch(self.origin_regex, origin) is not None

    def refusal(self, request: Request) -> str | None:
        """Why this request must be refused (a message for the 403), or None when it may go on."""
        if request.method.upper() in SAFE_METHODS:
            return None
        origin = request.headers.get("origin")
        if origin is None:  # not sent by a browser page: no cross-site request to guard against
            return None
        if origin.strip().lower() == "null":
            return ("Refused: this request comes from a page with Origin 'null' (a sandboxed frame or a local file), "
                    "which could be any web page; Atelier never accepts requests that change something from it.")
        if same_origin(origin, request) or self.allows(origin):
            return None
        return (f"Refused: a page on {origin} may not use this server. Start Atelier with --cors-allow-origins "
                f"{origin.strip().rstrip('/')} to allow it.")


def same_origin(origin: str, request: Request) -> bool:
    """Whether ``origin`` is this server as the browser reached it (the ``Host``, or a proxy's
    ``X-Forwarded-Host``); the scheme is not compared, a TLS proxy in front changes it."""
    try:
        parts = urlsplit(origin.strip())
        if not parts.hostname:
            return False
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a port that is not a number, a broken IPv6 literal ("http://[x")
        return False
    hosts = [request.headers.get("host", "")]
    forwarded = request.headers.get("x-forwarded-host")
    if forwarded:
        hosts.append(forwarded.split(",")[0])
    for host in hosts:
        try:
            target = urlsplit(f"//{host.strip()}")
            target_port = target.port or DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            continue
        if target.hostname and target.hostname == parts.hostname and target_port == port:
            return True
    return False


def install(app: Any, policy: CorsPolicy) -> None:
    """Replace the app's CORS middleware (Gradio's, when it is Gradio's app) by one for ``policy``, or by none when
    the policy allows no other origin. Works on an app that is already serving: Starlette builds its middleware
    stack again at the next request."""
    kept = [item for item in app.user_middleware if getattr(item.cls, "__name__", "") not in CORS_MIDDLEWARE_NAMES]
    if policy.enabled:
        kept.insert(0, Middleware(
            CORSMiddleware,
            allow_origins=[origin for origin in policy.origins],
            allow_origin_regex=policy.origin_regex,
            allow_methods=["*"],
            allow_headers=["*"],
            # with "*" any page could read answers made with the browser's stored login: credentials only for
            # origins named one by one
            allow_credentials="*" not in policy.origins,
        ))
    app.user_middleware = kept
    app.middleware_stack = None

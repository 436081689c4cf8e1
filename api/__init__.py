"""Atelier's AUTOMATIC1111-compatible REST API (``/sdapi/v1``, and OpenAI's image routes under ``/v1``), served by
the same app as the UI.

``mount(app, manager, settings, auth_users)`` adds the routes to the FastAPI app that Gradio's ``launch()``
returns, so that the share link and the login cover the API too, and sets the app's cross-origin policy
(``api/cors.py``: off unless ``--cors-allow-origins`` / ``--cors-allow-origins-regex`` allow a page of another
origin). The API never touches torch: it turns A1111 requests into ``GenerationRequest`` objects and runs them
through the manager's queue.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from pipelines.settings import Settings

from . import cors as cors_policy
from .auth import BasicAuth
from .cors import CorsPolicy
from .routes import PREFIX, build_router

__all__ = ["PREFIX", "CorsPolicy", "build_router", "mount"]

log = logging.getLogger("atelier.api")


def mount(app: FastAPI, manager: Any, settings: Settings, auth_users: dict[str, str] | None = None, *,
          cors: CorsPolicy | None = None, flags: Mapping[str, Any] | None = None) -> None:
    """Add the ``/sdapi/v1`` and ``/v1`` routes to ``app``; with ``auth_users`` ({user: password}) every route needs
    Basic auth (the ``/v1`` ones also take a password as a Bearer token). ``cors``: the other origins whose pages may
    call the API (none by default); ``flags``: the command line, for ``/sdapi/v1/cmd-flags``.

    Works on an app that is already serving (Gradio's, after ``launch(prevent_thread_lock=True)``).
    """
    policy = cors or CorsPolicy()
    auth = BasicAuth(auth_users) if auth_users else None
    router = build_router(manager, settings, auth, policy, flags)
    app.include_router(router)
    cors_policy.install(app, policy)
    _serve_openapi(app, router)
    allowed = ", ".join([*policy.origins, *([policy.origin_regex] if policy.origin_regex else [])])
    log.info("REST API mounted at %s%s; other origins allowed: %s", PREFIX, " (HTTP Basic auth)" if auth else "",
             allowed or "none")


def _serve_openapi(app: FastAPI, router: Any) -> None:
    """Make ``/openapi.json`` document the API routes.

    FastAPI caches the schema on first use: drop the cache so that it is rebuilt with the new routes. An app
    created without an OpenAPI route (``openapi_url=None``) gets one that documents the ``/sdapi`` routes.
    """
    if app.openapi_url:
        app.openapi_schema = None
        return
    schema: dict[str, Any] = {}

    def openapi_json() -> JSONResponse:
        if not schema:
            schema.update(
                get_openapi(title="Atelier API", version="1", routes=router.routes, description=__doc__ or "")
            )
        return JSONResponse(schema)

    app.add_api_route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False)

"""Atelier's AUTOMATIC1111-compatible REST API (``/sdapi/v1``), served by the same app as the UI.

``mount(app, manager, settings, auth_users)`` adds the routes to the FastAPI app that Gradio's ``launch()``
returns, so that the share link and the login cover the API too. The API never touches torch: it turns
A1111 requests into ``GenerationRequest`` objects and runs them through the manager's queue.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from pipelines.settings import Settings

from .auth import BasicAuth
from .routes import PREFIX, build_router

__all__ = ["PREFIX", "build_router", "mount"]

log = logging.getLogger("atelier.api")


def mount(app: FastAPI, manager: Any, settings: Settings, auth_users: dict[str, str] | None = None) -> None:
    """Add the ``/sdapi/v1`` routes to ``app``; with ``auth_users`` ({user: password}) every route needs Basic auth.

    Works on an app that is already serving (Gradio's, after ``launch(prevent_thread_lock=True)``).
    """
    auth = BasicAuth(auth_users) if auth_users else None
    router = build_router(manager, settings, auth)
    app.include_router(router)
    _serve_openapi(app, router)
    log.info("REST API mounted at %s%s", PREFIX, " (HTTP Basic auth)" if auth else "")


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

"""How the ``/sdapi`` routes answer when something goes wrong: always JSON, never an HTML traceback.

The rules (DESIGN.md "REST API"): invalid input is HTTP 422 with a ``detail`` that names the field; an
``AtelierError`` answers its own ``http_status``; a missing or wrong login is 401 with ``WWW-Authenticate``; a
state-changing request from a page of another site (an ``Origin`` not allowed, or ``null``) is 403 before the login
is even looked at (``api/cors.py``); only a real server fault is a 500, and even then the body is JSON and the
traceback goes to the log. The OpenAI-style routes answer the same statuses in OpenAI's error shape.

The handling lives in a route class rather than in app-wide exception handlers because the routes are mounted
on Gradio's app after it has started, when Starlette no longer picks up new handlers or middleware.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from pipelines.errors import AtelierError, InvalidRequest

from .auth import BasicAuth
from .cors import CorsPolicy

log = logging.getLogger("atelier.api")


def error_response(
    status: int, kind: str, detail: str, field: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one error body of the API: ``{"error": kind, "detail": message, "field": name-or-null}``."""
    return JSONResponse({"error": kind, "detail": detail, "field": field}, status_code=status, headers=headers)


def atelier_error_response(exc: AtelierError) -> JSONResponse:
    """An ``AtelierError`` as JSON with its own HTTP status (422 for bad input, 429 for a full queue, ...).

    The ``detail`` always names the field at fault, so that a client that prints only the message still knows.
    """
    detail = exc.message
    if exc.field and exc.field.rsplit(".", 1)[-1] not in detail:
        detail = f"{exc.field}: {detail}"
    return error_response(exc.http_status, type(exc).__name__, detail, exc.field)


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's type errors (wrong JSON, wrong type) as a 422 whose ``detail`` names each field at fault."""
    problems = [_describe_validation_error(err) for err in exc.errors()]
    fields = [name for name, _ in problems if name]
    detail = "Invalid request: " + "; ".join(message for _, message in problems) + "."
    return error_response(422, "InvalidRequest", detail, fields[0] if fields else None)


def undecodable_body_response(exc: HTTPException) -> JSONResponse | None:
    """A body that is not text (bad UTF-8 bytes) as a 422 saying so, or None for any other HTTP error.

    FastAPI answers such a body with a bare 400 "There was an error parsing the body", raised from the
    ``UnicodeDecodeError`` of ``json.loads``; to a client it is invalid input like any other JSON error.
    """
    cause = exc.__cause__
    if exc.status_code != 400 or not isinstance(cause, UnicodeDecodeError):
        return None
    bad = cause.object[cause.start:cause.start + 1].hex() if isinstance(cause.object, bytes) else ""
    where = f" (byte 0x{bad} at position {cause.start})" if bad else ""
    detail = (f"Invalid request: the body could not be decoded as {cause.encoding.upper()} text{where}. "
              "Send JSON encoded as UTF-8 with Content-Type: application/json.")
    return error_response(422, "InvalidRequest", detail)


def unauthorized_response() -> JSONResponse:
    """401 with the header that makes browsers and HTTP clients ask for (or send) Basic credentials."""
    return error_response(
        401,
        "Unauthorized",
        "This server needs a login: send HTTP Basic credentials of a user given with --auth or --auth-file.",
        headers={"WWW-Authenticate": 'Basic realm="Atelier"'},
    )


ErrorBody = Callable[..., JSONResponse]  # (status, kind, detail, field=None, headers=None) -> the answer


def make_route_class(auth: BasicAuth | None, cors: CorsPolicy | None = None, bearer: bool = False,
                     error_body: ErrorBody = error_response) -> type[APIRoute]:
    """A route class that refuses a cross-site request (``cors``: the allowed origins; none by default), checks the
    login (``bearer``: a password as a Bearer token too), then turns every exception into a JSON answer shaped by
    ``error_body`` (the API's own by default; the OpenAI-style routes give OpenAI's)."""
    policy = cors if cors is not None else CorsPolicy()

    class SdApiRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded_handler(request: Request) -> Response:
                # A page of another site never gets to change anything, logged in or not (CSRF).
                refusal = policy.refusal(request)
                if refusal is not None:
                    log.warning("%s %s: %s", request.method, request.url.path, refusal)
                    return error_body(403, "Forbidden", refusal)
                # The login is checked before the body is even parsed, so that a stranger learns nothing.
                if auth is not None and not auth.is_allowed(request, bearer=bearer):
                    return _reshaped(unauthorized_response(), error_body)
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    return _reshaped(validation_error_response(exc), error_body)
                except AtelierError as exc:
                    log.info("%s %s: %s", request.method, request.url.path, exc.message)
                    return _reshaped(atelier_error_response(exc), error_body)
                except HTTPException as exc:
                    undecodable = undecodable_body_response(exc)
                    if undecodable is not None:
                        return _reshaped(undecodable, error_body)
                    return error_body(exc.status_code, "HTTPError", str(exc.detail), headers=exc.headers)
                except Exception:
                    log.exception("%s %s failed", request.method, request.url.path)
                    return error_body(
                        500, "InternalError", "The server failed while answering; the details are in its log."
                    )

            return guarded_handler

    return SdApiRoute


def _reshaped(response: JSONResponse, error_body: ErrorBody) -> JSONResponse:
    """An error answer of the API's shape in ``error_body``'s shape (the same one when that is the API's)."""
    if error_body is error_response:
        return response
    body = json.loads(response.body)
    headers = {key: value for key, value in response.headers.items() if key.lower() == "www-authenticate"}
    return error_body(response.status_code, body["error"], body["detail"], body.get("field"), headers=headers)


@contextmanager
def api_field_names(mapping: Mapping[str, str]) -> Iterator[None]:
    """Re-raise ``InvalidRequest`` with the client's field names (``batch_count`` → ``n_iter``, ...).

    ``GenerationRequest`` names its fields in Atelier's words; an A1111 client should read the names it sent.
    """
    try:
        yield
    except InvalidRequest as exc:
        if exc.field in mapping:
            exc.field = mapping[exc.field]
        exc.message = _rename_fields(exc.message, mapping)
        raise


# Only identifiers that never occur in prose are renamed inside messages.
_RENAMED_IN_TEXT = ("batch_count", "init_image", "sd_upscale_overlap", "sd_upscale_upscaler", "sd_upscale_scale",
                    "upscale_scale", "upscale_width", "upscale_height")


def _rename_fields(message: str, mapping: Mapping[str, str]) -> str:
    for name in _RENAMED_IN_TEXT:
        if name in mapping:
            message = re.sub(rf"\b{name}\b", mapping[name], message)
    return message


def _describe_validation_error(err: Mapping[str, Any]) -> tuple[str | None, str]:
    loc = [str(part) for part in err.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path"):
        loc = loc[1:]
    kind = err.get("type", "")
    if kind == "json_invalid":
        return None, f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')})"
    if kind == "missing" and not loc:
        return None, "the body is missing: send a JSON object"
    name = ".".join(loc) or None
    message = str(err.get("msg", "is invalid"))
    if name is None:
        return None, "the body must be a JSON object (sent with Content-Type: application/json)"
    value = err.get("input")
    shown = f" (got {value!r})" if isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60 else ""
    return name, f"{name}: {message}{shown}"

"""HTTP Basic auth for the ``/sdapi`` routes (the same users as the UI login, as A1111's ``--api-auth``); the
OpenAI-style routes also take ``Authorization: Bearer <password>`` (an OpenAI client's "API key")."""

from __future__ import annotations

import base64
import binascii
import secrets

from fastapi import Request


class BasicAuth:
    """Checks a request's ``Authorization: Basic`` header against ``users`` ({user: password})."""

    def __init__(self, users: dict[str, str]):
        # Compare as UTF-8 bytes: secrets.compare_digest only accepts ASCII str.
        self._users = [(u.encode("utf-8"), p.encode("utf-8")) for u, p in users.items()]

    def is_allowed(self, request: Request, bearer: bool = False) -> bool:
        """True when the request carries the name and password of one of the users (``bearer``: or, as a Bearer
        token, the password of one of them)."""
        header = request.headers.get("authorization", "")
        if bearer and header[:7].lower() == "bearer ":
            return self._is_password(header[7:].strip().encode("utf-8"))
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        allowed = False
        # Check every user (no early exit) so that the time taken does not tell which names exist.
        for known_user, known_password in self._users:
            user_ok = secrets.compare_digest(user, known_user)
            password_ok = secrets.compare_digest(password, known_password)
            allowed |= user_ok and password_ok
        return allowed


    def _is_password(self, token: bytes) -> bool:
        allowed = False
        for _user, known_password in self._users:  # every one compared: the time taken tells nothing
            allowed |= secrets.compare_digest(token, known_password) and bool(token)
        return allowed


def _basic_credentials(header: str) -> tuple[bytes, bytes] | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user, password

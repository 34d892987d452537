"""Bearer-token guard of /admin/*: 503 while no token is configured, 401 for a wrong one."""

from __future__ import annotations

import hmac

from flask import request

from waconv.errors import APIError
from waconv.services import current_services


def require_admin() -> None:
    expected = current_services().settings.admin_token
    if not expected:
        raise APIError(
            503, "admin_disabled", "the admin API is off: set WACONV_ADMIN_TOKEN to enable it"
        )
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        # RFC 6750 §3: a 401 names the scheme the client must use.
        raise APIError(
            401,
            "unauthorized",
            "missing or wrong bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="waconv admin"'},
        )

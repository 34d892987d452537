"""gunicorn's access log (``config/gunicorn.conf.py``): paths as ``loggable_path`` shows them."""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from waconv.logs import loggable_path


class AccessLogger(Logger):
    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> Any:
        atoms = super().atoms(resp, req, environ, request_time)
        path = loggable_path(environ.get("PATH_INFO") or "")
        atoms["U"] = path
        atoms["r"] = f"{environ.get('REQUEST_METHOD')} {path} {environ.get('SERVER_PROTOCOL')}"
        atoms["q"] = "-"
        return atoms

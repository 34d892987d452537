"""WSGI entry point: ``gunicorn wsgi:app`` (see config/gunicorn.conf.py)."""

import sys

from waconv import create_app
from waconv.config import ConfigError
from waconv.rules import RulesError

try:
    app = create_app()
except (ConfigError, RulesError) as exc:  # the operator's to fix: one line, no traceback
    print(f"error: {exc}", file=sys.stderr, flush=True)
    # gunicorn's "app failed to load" exit code: the master stops instead of booting more.
    sys.exit(4)

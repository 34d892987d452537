"""WSGI entry point: ``gunicorn wsgi:app`` (see config/gunicorn.conf.py)."""

from waconv import create_app

app = create_app()

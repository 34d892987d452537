"""The operator console: server-rendered pages for people (see views.py)."""

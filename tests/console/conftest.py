"""The console tests reuse the admin tests' client and conversations."""

from tests.admin.conftest import admin, clicked

__all__ = ["admin", "clicked"]

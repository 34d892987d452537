"""The contenders served beside waconv, each under the same gunicorn settings."""

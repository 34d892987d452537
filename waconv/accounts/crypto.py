"""Secrets at rest (access tokens, Gateway keys) and connector bodies waiting to be applied:
Fernet (AES-128-CBC + HMAC-SHA256) under a key from WACONV_SECRET_KEY.

Any string works as WACONV_SECRET_KEY; it is stretched to a Fernet key with SHA-256, so the
same setting always opens the same tokens.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

from waconv.config import ConfigError


class TokenCipher:
    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ConfigError("WACONV_SECRET_KEY must be set to store access tokens")
        digest = hashlib.sha256(b"waconv-token-key\x00" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def encrypt(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode()

    def decrypt(self, stored: str) -> str:
        try:
            return self._fernet.decrypt(stored.encode()).decode()
        except InvalidToken:
            raise ConfigError(
                "a stored access token cannot be decrypted: WACONV_SECRET_KEY differs from the "
                "one it was stored with; set the old key back or store the token again with "
                "`waconv accounts set-token`"
            ) from None

    def seal(self, data: bytes) -> bytes:
        """Bytes (a connector's body) encrypted and authenticated."""
        return self._fernet.encrypt(data)

    def unseal(self, sealed: bytes) -> bytes:
        """What ``seal`` encrypted; ConfigError when WACONV_SECRET_KEY changed since."""
        try:
            return self._fernet.decrypt(sealed)
        except InvalidToken:
            raise ConfigError(
                "a stored body cannot be decrypted: WACONV_SECRET_KEY differs from the one it "
                "was stored with"
            ) from None

    def __repr__(self) -> str:
        return "TokenCipher(<key hidden>)"

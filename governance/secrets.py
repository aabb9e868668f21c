"""Tool secrets encrypted at rest (docs/architecture.md §5.3): Fernet (AES-128-CBC + HMAC-SHA256) with key rotation.

``ONCEONLY_FIELD_ENCRYPTION_KEY`` is a comma-separated list of keys, newest first: new secrets are encrypted with
the first, and every key is tried to decrypt, so adding a key in front rotates without re-encrypting old rows
(``python manage.py rotate_tool_secrets`` re-encrypts them with the newest key, after which old keys can go).
Unset, one key is derived from
SECRET_KEY (fine for development; set a dedicated key in production so SECRET_KEY can rotate independently).
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


def _fernet_key(material: str) -> bytes:
    return base64.urlsafe_b64encode(hashlib.sha256(f"onceonly-field-encryption:{material}".encode()).digest())


@cache
def _keyring(configured: str, secret_key: str) -> MultiFernet:
    materials = [k.strip() for k in configured.split(",") if k.strip()] or [secret_key]
    return MultiFernet([Fernet(_fernet_key(m)) for m in materials])


def keyring() -> MultiFernet:
    return _keyring(settings.ONCEONLY_FIELD_ENCRYPTION_KEY, settings.SECRET_KEY)


def encrypt(plain: str) -> str:
    return keyring().encrypt(plain.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return keyring().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError("tool secret cannot be decrypted with any configured ONCEONLY_FIELD_ENCRYPTION_KEY") from None


def rotate(token: str) -> str:
    """Re-encrypt with the newest key (keys may be dropped afterwards)."""
    return keyring().rotate(token.encode()).decode()


def mask(plain: str) -> str:
    return "***" + plain[-3:] if len(plain) >= 8 else "***"

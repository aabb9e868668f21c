"""Ed25519 signatures of the decision-log and audit-log checkpoints (docs/operations.md §"Signed checkpoints").

A checkpoint's hashes live in the database they protect, so someone with write access can recompute them; a
signature by a key the database does not hold cannot be recomputed. The signing key comes from the environment
(``ONCEONLY_CHECKPOINT_SIGNING_KEY``), the public keys are published at ``/.well-known/onceonly-checkpoint-keys.json``,
and ``tools/verify_checkpoints.py`` checks an export offline. This module and that script share nothing but the
documented format: the signed message below, and the key id (the RFC 7638 thumbprint of the public key).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

KINDS = ("decisions", "audit")
MESSAGE_HEADER = "onceonly-checkpoint-v1"


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    kid: str
    x: str  # the public key, raw 32 bytes in base64url without padding (JWK "x")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    """base64 or base64url, padding optional (what people paste into an environment file)."""
    text = text.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(x: str) -> str:
    """RFC 7638 JWK thumbprint of an Ed25519 public key: anyone holding the public key can recompute it."""
    members = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(members.encode()).digest())


def jwk(x: str) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": key_id(x), "x": x}


def parse_private_key(text: str) -> SigningKey:
    """A PEM (PKCS#8) Ed25519 private key, or its raw 32 bytes in base64/base64url (one line, for env files)."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            loaded = serialization.load_pem_private_key(text.encode(), password=None)
            if not isinstance(loaded, Ed25519PrivateKey):
                raise ValueError("not an Ed25519 key")
            private = loaded
        else:
            raw = _b64decode(text)
            if len(raw) != 32:
                raise ValueError(f"{len(raw)} bytes, not 32")
            private = Ed25519PrivateKey.from_private_bytes(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"ONCEONLY_CHECKPOINT_SIGNING_KEY is not an Ed25519 private key ({exc}); generate one with "
            "`python manage.py checkpoint_key generate`."
        ) from None
    x = b64url(raw_public(private.public_key()))
    return SigningKey(private, key_id(x), x)


def parse_public_key(text: str) -> str:
    """A retired public key as published (the JWK "x": raw 32 bytes, base64url); returned normalised."""
    try:
        raw = _b64decode(text)
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes, not 32")
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"ONCEONLY_CHECKPOINT_PUBLIC_KEYS: {text.strip()[:20]!r} is not an Ed25519 public key ({exc})."
        ) from None
    return b64url(raw)


def generate() -> SigningKey:
    private = Ed25519PrivateKey.generate()
    x = b64url(raw_public(private.public_key()))
    return SigningKey(private, key_id(x), x)


def private_text(key: SigningKey) -> str:
    """The value of ONCEONLY_CHECKPOINT_SIGNING_KEY for ``key``: its raw 32 bytes, base64url."""
    return b64url(
        key.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    )


def dev_key(path: Path) -> str:
    """DEBUG without a configured key: one generated on first use and kept under var/ (mode 0600), so `make run`
    signs out of the box and keeps its key across restarts. Created atomically: web, worker and beat start together."""
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(private_text(generate()) + "\n")
        try:
            os.link(temporary, path)  # fails if another process created it first: theirs is kept
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
    return path.read_text().strip()


@lru_cache(maxsize=4)
def _keyring(private: str, public: tuple[str, ...]) -> tuple[SigningKey | None, tuple[str, ...]]:
    current = parse_private_key(private) if private else None
    published = [current.x] if current else []
    for text in public:
        x = parse_public_key(text)
        if x not in published:
            published.append(x)
    return current, tuple(published)


def validate(private: str, public: list[str]) -> None:
    """Raise ImproperlyConfigured for a malformed key (the settings call it at start-up)."""
    _keyring(private, tuple(public))


def keyring() -> tuple[SigningKey | None, tuple[str, ...]]:
    """The current signing key (None when none is configured) and every published public key, current first."""
    return _keyring(
        settings.ONCEONLY_CHECKPOINT_SIGNING_KEY or "",
        tuple(text for text in settings.ONCEONLY_CHECKPOINT_PUBLIC_KEYS if text.strip()),
    )


def current_key() -> SigningKey | None:
    return keyring()[0]


def public_jwks() -> dict[str, Any]:
    return {"keys": [jwk(x) for x in keyring()[1]]}


def utc_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def message(
    *,
    kind: str,
    account_id: int,
    seq: int,
    first_id: int,
    last_id: int,
    row_count: int,
    prev_hash: str,
    chain_hash: str,
    created_at: datetime,
    signed_at: datetime,
) -> bytes:
    """The signed bytes (docs/operations.md §"Signed checkpoints"): eleven ``name:value`` lines, each ending in LF."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    lines = [
        MESSAGE_HEADER,
        f"kind:{kind}",
        f"account:{account_id}",
        f"seq:{seq}",
        f"first:{first_id}",
        f"last:{last_id}",
        f"count:{row_count}",
        f"prev:{prev_hash}",
        f"head:{chain_hash}",
        f"created:{utc_text(created_at)}",
        f"signed:{utc_text(signed_at)}",
    ]
    return "".join(f"{line}\n" for line in lines).encode("ascii")


def checkpoint_message(kind: str, checkpoint: Any) -> bytes:
    """The message of a DecisionCheckpoint (kind "decisions") or an AuditCheckpoint (kind "audit")."""
    first, last = (
        (checkpoint.first_decision_id, checkpoint.last_decision_id)
        if kind == "decisions"
        else (checkpoint.first_entry_id, checkpoint.last_entry_id)
    )
    return message(
        kind=kind,
        account_id=checkpoint.account_id,
        seq=checkpoint.seq,
        first_id=first,
        last_id=last,
        row_count=checkpoint.row_count,
        prev_hash=checkpoint.prev_hash,
        chain_hash=checkpoint.chain_hash,
        created_at=checkpoint.created_at,
        signed_at=checkpoint.signed_at,
    )


def sign(kind: str, checkpoint: Any, *, signed_at: datetime | None = None) -> bool:
    """Set the checkpoint's ``signature``, ``key_id`` and ``signed_at`` (not saved) with the current key. False,
    and the checkpoint left unsigned, when no key is configured: the hash chain works without signatures."""
    key = current_key()
    if key is None:
        return False
    checkpoint.signed_at = signed_at or checkpoint.created_at
    checkpoint.key_id = key.kid
    checkpoint.signature = b64url(key.private.sign(checkpoint_message(kind, checkpoint)))
    return True


def verify(kind: str, checkpoint: Any) -> bool:
    """Whether the checkpoint's signature verifies with the published key it names."""
    if not checkpoint.signature or checkpoint.signed_at is None:
        return False
    x = next((x for x in keyring()[1] if key_id(x) == checkpoint.key_id), None)
    if x is None:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(_b64decode(x)).verify(
            _b64decode(checkpoint.signature), checkpoint_message(kind, checkpoint)
        )
    except (InvalidSignature, ValueError):
        return False
    return True

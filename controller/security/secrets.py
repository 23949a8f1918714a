"""Token secrets: generated, hashed for the config, verified in constant time.

A config never holds a secret, only ``pbkdf2-sha256$ITERATIONS$SALT$HASH``
(salt and hash in URL-safe base64), or the path of a file holding the secret.
PBKDF2 protects a weak, hand-chosen secret if the config leaks; the secrets
``pictl token create`` makes are 256 random bits anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field

SCHEME = "pbkdf2-sha256"
ITERATIONS = 100_000  # ~40 ms on a desktop core, a few hundred on a Pi Zero; verified off the loop
MIN_SECRET_LENGTH = 8


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SecretHash:
    """A parsed ``pbkdf2-sha256$...`` string."""

    iterations: int
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    def matches(self, secret: str) -> bool:
        """Constant-time check (CPU-heavy: call it off the event loop)."""
        candidate = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8", "surrogatepass"), self.salt,
                                        self.iterations)
        return hmac.compare_digest(candidate, self.digest)

    def __str__(self) -> str:
        return f"{SCHEME}${self.iterations}${_b64(self.salt)}${_b64(self.digest)}"


def hash_secret(secret: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> SecretHash:
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8", "surrogatepass"), salt, iterations)
    return SecretHash(iterations, salt, digest)


def parse_hash(text: str) -> SecretHash:
    """Parse a stored hash; ValueError says what is wrong (never echoing the hash)."""
    parts = text.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise ValueError(f"expected {SCHEME}$ITERATIONS$SALT$HASH (make one with `pictl token hash`)")
    try:
        iterations = int(parts[1])
        salt, digest = _unb64(parts[2]), _unb64(parts[3])
    except ValueError:
        raise ValueError("malformed hash: iterations must be a number, salt and hash base64") from None
    if not 1_000 <= iterations <= 10_000_000 or len(salt) < 8 or len(digest) != 32:
        raise ValueError("implausible hash: 1000-10000000 iterations, >= 8 bytes of salt, a 32-byte digest")
    return SecretHash(iterations, salt, digest)


def generate_secret() -> str:
    """A new random secret: 256 bits, URL-safe."""
    return secrets.token_urlsafe(32)


def fingerprint(secret: str) -> bytes:
    """A fast, fixed-length key for the verified-secret cache (memory only)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()

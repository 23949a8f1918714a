"""Token secrets: generated, digested for the config, looked up in microseconds.

A config never holds a secret, only its digest ``sha256$DIGEST`` (URL-safe
base64 of SHA-256 over a fixed prefix and the secret), or the path of a file
holding the secret. Tokens are random secrets (``pictl token create`` makes
256 bits), so a fast digest is as good as a slow password hash against a
leaked config, and it lets the daemon find the token of a presented secret
with one hash and one dictionary lookup: a failed login costs microseconds,
whatever the number of tokens (a slow hash per configured token made every
wrong guess cost tens of milliseconds per token).

The previous format ``pbkdf2-sha256$ITERATIONS$SALT$HASH`` is still read
(:class:`SecretHash`), but each failed login then pays one PBKDF2 run per such
token; the daemon says so at load (see :func:`slow_tokens_warning`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field

SCHEME = "pbkdf2-sha256"  # the previous, slow format: still read
FAST_SCHEME = "sha256"
_DOMAIN = b"pictl-token\0"  # digests of pictl tokens match no other SHA-256 of the same string
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


@dataclass(frozen=True)
class SecretDigest:
    """A parsed ``sha256$...`` string: the token's lookup key."""

    digest: bytes = field(repr=False)

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(fingerprint(secret), self.digest)

    def __str__(self) -> str:
        return f"{FAST_SCHEME}${_b64(self.digest)}"


Verifier = SecretDigest | SecretHash


def digest_secret(secret: str) -> SecretDigest:
    """The config form of a secret (what `pictl token hash` prints)."""
    return SecretDigest(fingerprint(secret))


def hash_secret(secret: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> SecretHash:
    """The previous, slow format (kept for tests of configs that still use it)."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8", "surrogatepass"), salt, iterations)
    return SecretHash(iterations, salt, digest)


def parse_hash(text: str) -> Verifier:
    """Parse a stored digest or hash; ValueError says what is wrong (never echoing it)."""
    parts = text.split("$")
    if len(parts) == 2 and parts[0] == FAST_SCHEME:
        try:
            digest = _unb64(parts[1])
        except ValueError:
            raise ValueError("malformed digest: expected sha256$ and 43 characters of base64") from None
        if len(digest) != 32:
            raise ValueError("malformed digest: expected sha256$ and 43 characters of base64")
        return SecretDigest(digest)
    if len(parts) != 4 or parts[0] != SCHEME:
        raise ValueError(f"expected {FAST_SCHEME}$DIGEST (make one with `pictl token hash`)")
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
    """The fast digest of a secret: the key tokens are looked up by."""
    return hashlib.sha256(_DOMAIN + secret.encode("utf-8", "surrogatepass")).digest()


def slow_tokens_warning(names: list[str]) -> str | None:
    """What to tell the operator about tokens still in the slow format, or None."""
    if not names:
        return None
    return (f"token(s) {', '.join(names)} use the slow {SCHEME} format: every failed login then costs a "
            f"PBKDF2 run per such token (CPU an attacker can burn); replace each hash with the output of "
            f"`echo SECRET | pictl token hash` ({FAST_SCHEME}$...), or make new tokens with `pictl token create`")


def read_secret_file(path: str, *, minimum: int = MIN_SECRET_LENGTH) -> str:
    """The secret held in the file *path* (surrounding white space removed): token secrets, WAMP
    tickets and the MQTT broker password all arrive this one way. ValueError says why not, never
    echoing the secret: unreadable, readable by group or others (it must be chmod 600), or shorter
    than *minimum* characters."""
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
    if info.st_mode & 0o077:
        raise ValueError(f"{path} is readable by group or others: chmod 600 it")
    if len(secret) < minimum:
        raise ValueError(f"the secret in {path} is shorter than {minimum} characters")
    return secret

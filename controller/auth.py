"""Tokens, roles and sessions: who is on a connection and what they may call."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from controller.config import Role, Token


def _digest(secret: str) -> bytes:
    # Comparing fixed-length digests keeps compare_digest constant-time whatever the input length.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


@dataclass
class Session:
    """One connection's identity. ``token`` is None until authenticated."""

    peer: str  # "address:port" of the client, for logs
    token: Token | None = None  # the credential that authenticated it
    role: Role | None = None  # what it may call
    extra: dict[str, object] = field(default_factory=dict)  # per-connection state of other modules

    @property
    def authenticated(self) -> bool:
        return self.role is not None

    @property
    def who(self) -> str:
        """Token name for logs: never the secret."""
        return self.token.name if self.token else "anonymous"


class Authenticator:
    """Checks secrets against the configured tokens and methods against roles."""

    def __init__(self, tokens: tuple[Token, ...], roles: dict[str, Role]) -> None:
        self._tokens = [(t, _digest(t.secret)) for t in tokens]
        self.roles = roles

    def check(self, secret: str) -> Token | None:
        """The token whose secret this is, or None. Looks at every token every time."""
        offered = _digest(secret)
        found = None
        for token, digest in self._tokens:
            if hmac.compare_digest(offered, digest):
                found = token
        return found

    def login(self, session: Session, secret: str) -> bool:
        token = self.check(secret)
        if token is None:
            return False
        session.token = token
        session.role = self.roles[token.role]
        return True

    @staticmethod
    def may_call(role: Role, method: str) -> bool:
        return any(fnmatchcase(method, pattern) for pattern in role.allow)


def bearer(header: str | None) -> str | None:
    """The token from an ``Authorization: Bearer TOKEN`` header, if that is what it is."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()

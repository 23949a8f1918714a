"""Who is on a connection and what they may do: tokens, roles, lockouts, rate limits.

- Secrets are checked against PBKDF2 hashes off the event loop; a secret that
  verified once is remembered (by a SHA-256 fingerprint, in memory) so a
  reconnecting panel costs nothing.
- Repeated failures from one address first slow that address's answers down,
  then lock it out for a while; other addresses are not affected.
- A role's patterns decide per method: the most specific matching pattern wins
  (literal characters count; a tie denies), nothing matching is denied —
  Crossbar's rule of the most specific permission, with shell-style patterns.
- A role may carry a rate: each connection gets a token bucket of that size.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from controller.security.policy import LockoutConfig, Role, Token
from controller.security.secrets import fingerprint

log = logging.getLogger(__name__)
VERIFIED_CACHE = 256  # secrets remembered after a successful check
TRACKED_ADDRESSES = 4096  # addresses with recent failures remembered


@dataclass
class RateBucket:
    """A token bucket: *rate* calls per second, up to *burst* at once."""

    rate: float
    burst: int
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self) -> float:
        """0.0 when a call may go ahead, else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class Session:
    """One connection's identity. ``token`` is None until authenticated."""

    peer: str  # "address:port" of the client, for logs
    address: str = ""  # the client address alone, for per-address limits
    token: Token | None = None  # the credential that authenticated it
    role: Role | None = None  # what it may call
    bucket: RateBucket | None = None  # the role's rate limit, per connection
    extra: dict[str, object] = field(default_factory=dict)  # per-connection state of other modules

    @property
    def authenticated(self) -> bool:
        return self.role is not None

    @property
    def who(self) -> str:
        """Token name for logs: never the secret."""
        return self.token.name if self.token else "anonymous"


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    locked_until: float = 0.0


def specificity(pattern: str) -> int:
    """How specific a pattern is: its literal characters."""
    return sum(1 for c in pattern if c not in "*?[]")


def role_allows(role: Role, method: str) -> bool:
    """The most specific matching pattern decides; a tie between allow and deny denies."""
    best_allow = max((specificity(p) for p in role.allow if fnmatchcase(method, p)), default=-1)
    best_deny = max((specificity(p) for p in role.deny if fnmatchcase(method, p)), default=-1)
    return best_allow > best_deny


class Authenticator:
    """Checks secrets against the configured tokens and tracks failures per address."""

    def __init__(self, tokens: tuple[Token, ...], roles: dict[str, Role],
                 lockout: LockoutConfig | None = None) -> None:
        self._tokens = tokens
        self.roles = roles
        self.lockout = lockout or LockoutConfig()
        self._verified: OrderedDict[bytes, Token] = OrderedDict()  # fingerprint -> token
        self._failures: OrderedDict[str, _Failures] = OrderedDict()  # address -> recent failures
        self.lockouts = 0  # addresses locked out so far (metrics)
        self._decisions: dict[tuple[str, str], bool] = {}  # (role, method) -> allowed; methods come from config

    def update(self, tokens: tuple[Token, ...], roles: dict[str, Role]) -> None:
        """New tokens and roles (a config reload) for new logins; failure counts are kept."""
        self._tokens = tokens
        self.roles = roles
        self._verified.clear()
        self._decisions.clear()

    async def check(self, secret: str) -> Token | None:
        """The token whose secret this is, or None. Hashing runs in a worker thread."""
        key = fingerprint(secret)
        token = self._verified.get(key)
        if token is not None:
            self._verified.move_to_end(key)
            return token
        token = await asyncio.to_thread(self._check_all, secret)
        if token is not None:
            self._verified[key] = token
            if len(self._verified) > VERIFIED_CACHE:
                self._verified.popitem(last=False)
        return token

    def _check_all(self, secret: str) -> Token | None:
        found = None
        for token in self._tokens:  # every token, every time: no early exit to time
            if token.verifier.matches(secret):
                found = token
        return found

    # -- failures per address -------------------------------------------------------------------
    def locked_for(self, address: str) -> float:
        """Seconds this address remains locked out (0 when it is not)."""
        entry = self._failures.get(address)
        if entry is None:
            return 0.0
        return max(0.0, entry.locked_until - time.monotonic())

    def _record_failure(self, address: str) -> float:
        """Count a failure; returns the delay to impose before answering it."""
        now = time.monotonic()
        entry = self._failures.pop(address, None) or _Failures()
        if now - entry.last > self.lockout.lockout_s:
            entry.count = 0  # quiet for a lockout period: start over
        entry.count += 1
        entry.last = now
        self._failures[address] = entry
        if len(self._failures) > TRACKED_ADDRESSES:
            self._failures.popitem(last=False)
        if entry.count >= self.lockout.lockout_after:
            entry.locked_until = now + self.lockout.lockout_s
            self.lockouts += 1
            log.warning("locking out %s for %.0f s after %d failed authentications", address,
                        self.lockout.lockout_s, entry.count)
            return 0.0
        over = entry.count - self.lockout.slowdown_after
        return 0.0 if over < 0 else min(5.0, 0.25 * 2**over)

    def _record_success(self, address: str) -> None:
        self._failures.pop(address, None)

    async def login(self, session: Session, secret: str) -> bool:
        """Authenticate *session* with *secret*. Failures are counted, then slowed down."""
        token = await self.check(secret)
        if token is None:
            delay = self._record_failure(session.address)
            log.warning("failed authentication from %s", session.peer)
            if delay:
                await asyncio.sleep(delay)  # the attacker's answer comes later, nobody else's
            return False
        self._record_success(session.address)
        session.token = token
        session.role = self.roles[token.role]
        if session.role.rate is not None:
            session.bucket = RateBucket(session.role.rate, session.role.burst or 1)
        return True

    def may_call(self, role: Role, method: str) -> bool:
        """Cached: called for every request, with a method name from the method table."""
        key = (role.name, method)
        allowed = self._decisions.get(key)
        if allowed is None:
            allowed = self._decisions[key] = role_allows(role, method)
        return allowed


def bearer(header: str | None) -> str | None:
    """The token from an ``Authorization: Bearer TOKEN`` header, if that is what it is."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()

"""Who is on a connection and what they may do: tokens, roles, lockouts, rate limits.

- A secret is found by its fast digest (one SHA-256, one dictionary lookup:
  microseconds, whatever the number of tokens). Tokens still in the previous
  PBKDF2 format are checked off the event loop, one at a time, and a secret
  that verified once is remembered by its digest.
- Repeated failures from one address first slow that address's answers down,
  then lock it out for a while; other addresses are not affected. An attempt
  takes its slot before anything is verified, so concurrent guesses from one
  address cannot run more checks than the lockout allows.
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase

from controller.security.policy import LockoutConfig, Role, Token
from controller.security.secrets import SecretDigest, SecretHash, fingerprint
from controller.wire.throttle import ThrottledLog

log = logging.getLogger(__name__)
VERIFIED_CACHE = 256  # secrets remembered after a successful check
TRACKED_ADDRESSES = 4096  # addresses with recent failures, not locked out: the least recent is forgotten first
LOCKED_ADDRESSES = 4096  # addresses locked out: never forgotten for a newcomer before their lockout ends


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


@dataclass(eq=False)
class Session:
    """One connection's identity and its per-connection state. ``token`` is None until authenticated.

    A front door makes one per connection (the WebSocket listener, at the handshake) or one for
    itself (:meth:`for_service`: the MQTT and WAMP bridges, whose callers the broker or router
    authenticated).
    """

    peer: str  # the client, for logs and the audit trail ("address:port", or the address behind a proxy)
    address: str = ""  # the client address alone, for per-address limits
    via: str | None = None  # the trusted proxy it came through ("address:port"), if any
    token: Token | None = None  # the credential that authenticated it
    role: Role | None = None  # what it may call
    bucket: RateBucket | None = None  # the role's rate limit, per connection
    auth_pending: bool = False  # a session.auth is being answered on this connection
    # Where events.subscribe sends events: a weak reference to the WebSocket connection (no
    # connection -> session -> connection cycle); None for a front door that publishes every event
    # on its own topics (MQTT, WAMP).
    events_to: Callable[[], object | None] | None = None
    # The connection has ended: requests of it that have not started are dropped (see :attr:`gone`).
    closed: bool = False
    # The front door's own test that its link still stands (a WebSocket still OPEN, not closing): a
    # peer that sent FIN or RST, or that the daemon is closing, is gone before the door's loop sees it.
    link_open: Callable[[], bool] | None = None
    # Device -> this session's actions waiting or running on it (capped per device by the dispatcher's
    # action handler); shared by the per-call copies of :meth:`for_call`.
    queued: dict[str, int] = field(default_factory=dict)
    inflight: int = 0  # this session's messages being answered (capped by the dispatcher)

    @classmethod
    def for_service(cls, who: str, role: Role, *, peer: str, address: str) -> Session:
        """A front door's own session: authenticated as *who* (the audit's token name; no secret
        logs in with it) with *role*, and that role's rate bucket."""
        token = Token(name=who, role=role.name, verifier=SecretDigest(b""))
        session = cls(peer=peer, address=address, token=token, role=role)
        if role.rate is not None:
            session.bucket = RateBucket(role.rate, role.burst or 1)
        return session

    def for_call(self) -> Session:
        """A copy for one call of a front door whose calls end on their own (a WAMP caller that leaves
        cancels only its call): same token, role, rate bucket and per-device count, its own ``closed``."""
        return replace(self, closed=False, link_open=None, inflight=0)

    @property
    def gone(self) -> bool:
        """The caller has gone (or is going): work of it that has not started must not start."""
        if not self.closed and self.link_open is not None and not self.link_open():
            self.closed = True
        return self.closed

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
    pending: int = 0  # attempts being verified right now: they hold a slot toward the lockout


@dataclass(frozen=True)
class Verdict:
    """The outcome of one authentication attempt."""

    token: Token | None = None  # who it is, when the secret was right
    locked_s: float = 0.0  # > 0: refused without a check, the address is locked out for this long

    @property
    def ok(self) -> bool:
        return self.token is not None


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
        self.roles = roles
        self.lockout = lockout or LockoutConfig()
        self._by_digest: dict[bytes, Token] = {}  # fast digest -> token
        self._slow: tuple[Token, ...] = ()  # tokens in the legacy PBKDF2 format
        self._verified: OrderedDict[bytes, Token] = OrderedDict()  # digest -> legacy token that verified
        self._failures: OrderedDict[str, _Failures] = OrderedDict()  # address -> recent failures (least recent first)
        self._locked: dict[str, _Failures] = {}  # address -> its record while locked out (the first to end first)
        self.lockouts = 0  # addresses locked out so far (metrics)
        self.slow_checks = 0  # PBKDF2 runs so far (legacy tokens only)
        self._decisions: dict[tuple[str, str], bool] = {}  # (role, method) -> allowed; methods come from config
        self._hasher: ThreadPoolExecutor | None = None  # one thread: legacy checks never take more than a core
        # Failed logins and lockouts: a peer makes as many as it likes, the journal gets a line per 10 s.
        self.failures_log = ThrottledLog(log, "failed authentication from {peer} ({reason}): {detail}",
                                         "{count} more failed authentication(s) ({reason}) in the last "
                                         "{window:.0f} s; latest from {latest}")
        self.update(tokens, roles)

    def update(self, tokens: tuple[Token, ...], roles: dict[str, Role]) -> None:
        """New tokens and roles (a config reload) for new logins; failure counts are kept."""
        self.roles = roles
        self._by_digest = {t.verifier.digest: t for t in tokens if isinstance(t.verifier, SecretDigest)}
        self._slow = tuple(t for t in tokens if isinstance(t.verifier, SecretHash))
        self._verified.clear()
        self._decisions.clear()

    @property
    def slow_tokens(self) -> list[str]:
        """Names of tokens in the legacy PBKDF2 format (each failed login costs a PBKDF2 run per token)."""
        return [t.name for t in self._slow]

    async def check(self, secret: str) -> Token | None:
        """The token whose secret this is, or None. No lockout bookkeeping: see :meth:`attempt`."""
        key = fingerprint(secret)
        token = self._by_digest.get(key)
        if token is None and key in self._verified:
            self._verified.move_to_end(key)  # least recently used goes first
            token = self._verified[key]
        if token is not None or not self._slow:
            return token  # a digest has no structure to time: a dict lookup leaks nothing useful
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="pictl-pbkdf2")
        token = await asyncio.get_running_loop().run_in_executor(self._hasher, self._check_slow, secret)
        if token is not None:
            self._verified[key] = token
            if len(self._verified) > VERIFIED_CACHE:
                self._verified.popitem(last=False)
        return token

    def _check_slow(self, secret: str) -> Token | None:
        found = None
        for token in self._slow:  # every token, every time: no early exit to time
            self.slow_checks += 1
            if token.verifier.matches(secret):
                found = token
        return found

    def close(self) -> None:
        self.failures_log.close()
        if self._hasher is not None:
            self._hasher.shutdown(wait=False, cancel_futures=True)
            self._hasher = None

    # -- failures per address -------------------------------------------------------------------
    # A flood of single failures from new addresses must not release a locked one (the old table of
    # 4,096 addresses did: 4,100 newcomers evicted it and reset its count). Locked addresses live in
    # a table of their own that newcomers cannot evict; the table of recent failures forgets its
    # least recent entry. Should even the locked table fill up, a newcomer's lock is kept among the
    # recent failures: the limit costs newcomers, never the locked.
    def locked_for(self, address: str) -> float:
        """Seconds this address remains locked out (0 when it is not)."""
        entry = self._locked.get(address) or self._failures.get(address)
        if entry is None:
            return 0.0
        return max(0.0, entry.locked_until - time.monotonic())

    def _take_slot(self, address: str) -> float:
        """Reserve an attempt for *address* before anything is verified: 0.0 when it may go ahead,
        else the seconds to wait (locked out, or its remaining attempts are all being verified)."""
        locked = self.locked_for(address)
        if locked:
            return locked
        now = time.monotonic()
        # A lock that has ended comes back among the recent failures (most recent last).
        entry = self._locked.pop(address, None) or self._failures.pop(address, None) or _Failures()
        if now - entry.last > self.lockout.lockout_s and not entry.pending:
            entry.count = 0  # quiet for a lockout period: start over
        self._failures[address] = entry  # most recent last
        if len(self._failures) > TRACKED_ADDRESSES:
            self._failures.popitem(last=False)
        if entry.count + entry.pending >= self.lockout.lockout_after:
            return 1.0  # every attempt it has left is in flight: ask again when they are answered
        entry.pending += 1
        entry.last = now
        return 0.0

    def _release_slot(self, address: str) -> _Failures:
        entry = self._locked.get(address) or self._failures.get(address)
        if entry is None:  # forgotten meanwhile (TRACKED_ADDRESSES): start a fresh record
            entry = self._failures[address] = _Failures()
        entry.pending = max(0, entry.pending - 1)
        return entry

    def _record_failure(self, address: str) -> float:
        """Count a failure (its slot becomes a failure); returns the delay to impose before answering it."""
        now = time.monotonic()
        entry = self._release_slot(address)
        entry.count += 1
        entry.last = now
        if entry.count >= self.lockout.lockout_after:
            entry.locked_until = now + self.lockout.lockout_s
            self.lockouts += 1
            self._lock(address, entry, now)
            self.failures_log.note("locked_out", address, f"locked out for {self.lockout.lockout_s:.0f} s after "
                                   f"{entry.count} failed authentications")
            return 0.0
        over = entry.count - self.lockout.slowdown_after
        return 0.0 if over < 0 else min(5.0, 0.25 * 2**over)

    def _lock(self, address: str, entry: _Failures, now: float) -> None:
        """Move a locked-out address to the table newcomers cannot evict (the most recent lock last)."""
        self._locked.pop(address, None)
        while self._locked:  # lockouts end in the order they began: drop those that ended
            first, oldest = next(iter(self._locked.items()))
            if oldest.locked_until > now or oldest.pending:
                break
            del self._locked[first]
        if len(self._locked) >= LOCKED_ADDRESSES:
            self.failures_log.note("lock_table_full", address, f"{LOCKED_ADDRESSES} addresses are locked out "
                                   "already: this lock is kept among the recent failures, where newcomers can evict it")
            return
        self._failures.pop(address, None)
        self._locked[address] = entry

    def _record_success(self, address: str) -> None:
        entry = self._release_slot(address)
        if not entry.pending:
            self._failures.pop(address, None)

    async def attempt(self, address: str, secret: str) -> Verdict:
        """One authentication attempt from *address*: the lockout slot first, then the check, then
        the bookkeeping. A failure is answered late once past ``slowdown_after``."""
        wait = self._take_slot(address)
        if wait:
            return Verdict(locked_s=wait)
        try:
            token = await self.check(secret)
        except BaseException:
            self._release_slot(address)
            raise
        if token is None:
            delay = self._record_failure(address)
            if delay:
                await asyncio.sleep(delay)  # the attacker's answer comes later, nobody else's
            return Verdict()
        self._record_success(address)
        return Verdict(token=token)

    async def login(self, session: Session, secret: str) -> Verdict:
        """Authenticate *session* with *secret* (see :meth:`attempt`)."""
        verdict = await self.attempt(session.address, secret)
        if verdict.token is None:
            if not verdict.locked_s:
                self.failures_log.note("bad_token", session.peer, "no token has that secret")
            return verdict
        token = verdict.token
        session.token = token
        session.role = self.roles[token.role]
        if session.role.rate is not None:
            session.bucket = RateBucket(session.role.rate, session.role.burst or 1)
        return verdict

    def may_call(self, role: Role, method: str) -> bool:
        """Cached: called for every request, with a method name from the method table."""
        key = (role.name, method)
        allowed = self._decisions.get(key)
        if allowed is None:
            allowed = self._decisions[key] = role_allows(role, method)
        return allowed



"""Who may do what: roles, tokens and the failed-login policy, as read from the config."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.security.secrets import Verifier


@dataclass(frozen=True)
class Role:
    """Which methods a token of this role may call, and how often.

    ``allow`` and ``deny`` are shell-style method patterns; the most specific
    pattern that matches decides (ties deny); nothing matching means deny.
    """

    name: str
    allow: tuple[str, ...]
    deny: tuple[str, ...] = ()
    rate: float | None = None  # calls per second per connection; None: unlimited
    burst: int | None = None  # bucket size for rate


@dataclass(frozen=True)
class Token:
    """A named credential: only the digest (or legacy hash) of its secret is kept."""

    name: str
    role: str
    verifier: Verifier = field(repr=False)


@dataclass(frozen=True)
class LockoutConfig:
    slowdown_after: int = 3  # failed auths from one address before answers are delayed
    lockout_after: int = 10  # failed auths from one address before it is locked out
    lockout_s: float = 60.0  # how long a lockout lasts

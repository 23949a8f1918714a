"""[auth]: roles, tokens (hashes or secret files, never secrets) and the failed-login policy."""

from __future__ import annotations

import re

from controller.security.policy import LockoutConfig, Role, Token
from controller.security.secrets import MIN_SECRET_LENGTH, Verifier, digest_secret, parse_hash
from controller.settings.reader import Table

_TOKEN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def read_auth(t: Table | None) -> tuple[dict[str, Role], tuple[Token, ...], LockoutConfig]:
    roles: dict[str, Role] = {}
    tokens: list[Token] = []
    if t is None:
        return roles, (), LockoutConfig()
    lockout = LockoutConfig(
        slowdown_after=t.integer("slowdown_after", default=3, low=1, high=1000),
        lockout_after=t.integer("lockout_after", default=10, low=1, high=10000),
        lockout_s=t.number("lockout_s", default=60.0, high=86400.0),
    )
    for name, rt in t.tables("roles"):
        allow = rt.strings("allow", default=())
        deny = rt.strings("deny", default=())
        rate = rt.number("rate", default=None, high=100000.0)
        burst = rt.integer("burst", default=None, low=1, high=1000000)
        rt.finish()
        if burst is not None and rate is None:
            rt.problem("burst", "needs a rate")
        for pattern in (*(allow or ()), *(deny or ())):
            if not 0 < len(pattern) <= 128:
                rt.problem("allow", "patterns are 1-128 characters")
        roles[name] = Role(name=name, allow=allow or (), deny=deny or (), rate=rate,
                           burst=burst if burst is not None else (None if rate is None else max(1, int(rate))))
    for name, tt in t.tables("tokens"):
        if not _TOKEN_NAME.fullmatch(name):
            tt.problem(None, "token name must be 1-64 of letters, digits, '.', '_', '-'")
        role = tt.string("role")
        verifier = _read_verifier(tt)
        tt.finish()
        if role is not None and role not in roles:
            tt.problem("role", f"no role named {role!r} in [auth.roles]")
        elif role is not None and verifier is not None:
            tokens.append(Token(name=name, role=role, verifier=verifier))
    t.finish()
    return roles, tuple(tokens), lockout


def _read_verifier(tt: Table) -> Verifier | None:
    """A token's secret: ``hash`` (from ``pictl token hash``) or ``secret_file``, never the secret."""
    if tt.has("secret"):
        tt.string("secret")
        tt.problem("secret", "secrets do not belong in the config: use hash = \"...\" "
                   "(`pictl token create NAME`) or secret_file = \"PATH\"")
        return None
    given = [k for k in ("hash", "secret_file") if tt.has(k)]
    if len(given) != 1:
        tt.problem(None, "a token needs exactly one of hash or secret_file")
        for key in given:
            tt.string(key)
        return None
    if given[0] == "hash":
        text = tt.string("hash")
        if text is None:
            return None
        try:
            return parse_hash(text)
        except ValueError as exc:
            tt.problem("hash", str(exc))
            return None
    secret = tt.secret_file("secret_file", minimum=MIN_SECRET_LENGTH)
    if secret is None:
        return None
    return digest_secret(secret)  # equal across reloads of an unchanged file: its sessions stay

"""``pictl``: the daemon and its command line (CONTRACT §1)."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import re
import ssl
import sys
from typing import Any

from controller import __version__
from controller.configbase import ConfigError

DEFAULT_URL = "ws://127.0.0.1:8765/ws"
EXIT_OK, EXIT_RPC_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pictl", description="Confirmed hardware actions over JSON-RPC.")
    parser.add_argument("--version", action="version", version=f"pictl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--config", required=True, help="TOML config file")
    serve.add_argument("--simulate", action="store_true", help="run on the simulated plant, not hardware")
    serve.add_argument("--listen", help="HOST:PORT, overriding the config")
    serve.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file")

    call = sub.add_parser("call", help="call one JSON-RPC method and print the result")
    call.add_argument("method")
    call.add_argument("params", nargs="?", help="params as a JSON object")
    call.add_argument("--url", default=os.environ.get("PICTL_URL", DEFAULT_URL))
    call.add_argument("--token", default=os.environ.get("PICTL_TOKEN"))
    call.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the reply")

    token = sub.add_parser("token", help="make token secrets and their hashes for the config")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="a new random secret, and the config lines for it")
    create.add_argument("name", help="the token's name, as logs and the audit trail show it")
    create.add_argument("--role", default="ROLE", help="the role it gets")
    create.add_argument("--secret-file", help="write the secret to this file (mode 600) instead of printing it")
    token_sub.add_parser("hash", help="hash a secret read from standard input")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "serve":
        return serve(args)
    if args.command == "call":
        return call(args)
    if args.command == "token":
        return token(args)
    return EXIT_USAGE  # pragma: no cover - argparse enforces the choices


def check_config(path: str) -> int:
    from controller import config

    try:
        config.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    print(f"{path}: ok")
    return EXIT_OK


def token(args: argparse.Namespace) -> int:
    from controller.secrets import MIN_SECRET_LENGTH, generate_secret, hash_secret

    if args.token_command == "hash":
        secret = sys.stdin.readline().strip()
        if len(secret) < MIN_SECRET_LENGTH:
            print(f"pictl token hash: the secret must be at least {MIN_SECRET_LENGTH} characters", file=sys.stderr)
            return EXIT_USAGE
        print(hash_secret(secret))
        return EXIT_OK
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.name):
        print("pictl token create: NAME must be 1-64 of letters, digits, '.', '_', '-'", file=sys.stderr)
        return EXIT_USAGE
    secret = generate_secret()
    print(f"[auth.tokens.{args.name}]")
    print(f'role = "{args.role}"')
    if args.secret_file:
        fd = os.open(args.secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        print(f'secret_file = "{os.path.abspath(args.secret_file)}"')
    else:
        print(f'hash = "{hash_secret(secret)}"')
        print(f"# the secret (shown once, give it to the client): {secret}", file=sys.stderr)
    return EXIT_OK


def serve(args: argparse.Namespace) -> int:
    from controller import config
    from controller.daemon import Daemon, serve_until_signalled
    from drivers.gpio import GpioUnavailable

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    # When systemd's watchdog kills a wedged daemon (SIGABRT), the journal gets every thread's stack.
    faulthandler.enable()
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    host = port = None
    if args.listen:
        try:
            host, port = config.parse_listen(args.listen)
        except ValueError as exc:
            print(f"pictl: --listen: {exc}", file=sys.stderr)
            return EXIT_USAGE
    daemon = Daemon(cfg, simulate=args.simulate, host=host, port=port)
    try:
        asyncio.run(serve_until_signalled(daemon))
    except GpioUnavailable as exc:
        logging.getLogger("pictl").error("%s", exc)
        return 1
    except ssl.SSLError as exc:
        logging.getLogger("pictl").error("TLS certificate or key unusable: %s", exc.reason or exc)
        return 1
    except OSError as exc:
        logging.getLogger("pictl").error("cannot listen on %s:%s: %s", daemon.host, daemon.port,
                                         exc.strerror or exc)
        return 1
    return EXIT_OK


def call(args: argparse.Namespace) -> int:
    params: Any = None
    if args.params is not None:
        try:
            params = json.loads(args.params)
        except ValueError as exc:
            print(f"pictl call: PARAMS_JSON is not JSON: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not isinstance(params, dict):
            print("pictl call: PARAMS_JSON must be a JSON object", file=sys.stderr)
            return EXIT_USAGE
    return asyncio.run(_call(args.url, args.token, args.method, params, args.wait))


async def _call(url: str, token: str | None, method: str, params: Any, wait: float) -> int:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, WebSocketException

    headers = {"Authorization": f"Bearer {token}"} if token else None
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        request["params"] = params
    try:
        async with asyncio.timeout(wait):
            async with connect(url, additional_headers=headers, compression=None, open_timeout=5) as ws:
                await ws.send(json.dumps(request))
                reply = json.loads(await ws.recv())
    except InvalidStatus as exc:
        status = exc.response.status_code
        code = -32001 if status in (401, 403) else -32603
        print(json.dumps({"code": code, "message": f"handshake refused: HTTP {status}",
                          "data": {"http_status": status}}), file=sys.stderr)
        return EXIT_RPC_ERROR
    except TimeoutError:
        print(f"pictl call: no reply from {url} within {wait:g} s", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (OSError, WebSocketException) as exc:
        print(f"pictl call: cannot connect to {url}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if "error" in reply:
        print(json.dumps(reply["error"]), file=sys.stderr)
        return EXIT_RPC_ERROR
    print(json.dumps(reply.get("result"), indent=2))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

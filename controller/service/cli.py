"""``pictl``: the daemon and its command line (README, *Command line*)."""

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
from controller.service import cli_text
from controller.settings.reader import ConfigError

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
    serve.add_argument("--time-scale", type=float, default=1.0, metavar="FACTOR",
                       help="with --simulate: multiply every simulated duration (travel, feedback, sensor "
                            "interval) by FACTOR; tests and benchmarks use 0.1 (default 1: the demo's timings)")
    serve.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file")

    link = argparse.ArgumentParser(add_help=False)
    link.add_argument("--url", default=os.environ.get("PICTL_URL", DEFAULT_URL),
                      help=f"the daemon's WebSocket URL (env PICTL_URL; default {DEFAULT_URL})")
    link.add_argument("--token", default=os.environ.get("PICTL_TOKEN"), help="the token's secret (env PICTL_TOKEN)")
    link.add_argument("--cafile", default=os.environ.get("PICTL_CAFILE") or None, metavar="PEM",
                      help="for wss://: trust the CA certificate(s) in this PEM file, e.g. a private CA that "
                           "signed the proxy's certificate (env PICTL_CAFILE; default: the system's CAs)")

    call = sub.add_parser("call", parents=[link], help="call one JSON-RPC method and print the result",
                          description="PARAMS is one JSON object, or key=value pairs (a value is parsed as "
                                      "JSON when it parses, else taken as a string): pictl call door.open timeout=3")
    call.add_argument("method", metavar="METHOD", help="e.g. door.open, system.status")
    # default=[]: without it argparse counts a '*' positional as required ("required: method, params").
    call.add_argument("params", nargs="*", default=[], metavar="PARAMS",
                      help="optional: a JSON object, or key=value pairs")
    call.add_argument("--wait", type=float, default=None,
                      help="seconds to wait for the reply (default: 2 x timeout + 5 for actions, else 30)")

    watch = sub.add_parser("watch", parents=[link], help="print events as they happen, one JSON object per line")
    watch.add_argument("patterns", nargs="*", metavar="PATTERN",
                       help='topic patterns, e.g. "door.*" (default: *; with --pretty, all but sensor readings)')
    watch.add_argument("--pretty", action="store_true",
                       help="readable lines instead of JSON; without PATTERN it leaves out *.reading "
                            "(a sensor reads every second or so): name '*' to see them too")
    watch.add_argument("--count", type=int, default=None, help="stop after this many events")

    status = sub.add_parser("status", parents=[link], help="a table of every device")
    status.add_argument("--json", action="store_true", help="the system.status result as JSON instead")

    fleet = sub.add_parser("aggregate", help="the fleet view of every node on a WAMP router, and its wall panel",
                           description="Joins the router, keeps pictl.fleet.status and, with --config (its "
                                       "[server] and [auth] tables: the panel's tokens and listener), serves "
                                       "the wall panel for every node. Needs the wamp extra.")
    fleet.add_argument("--wamp", required=True, metavar="URL", help="the router, e.g. ws://127.0.0.1:8080/ws")
    fleet.add_argument("--realm", required=True)
    fleet.add_argument("--config", help="a pictl config without devices: [server], [auth] roles and tokens")
    fleet.add_argument("--authid", help="WAMP-Ticket: the aggregator's authid on the router")
    fleet.add_argument("--ticket-file", help="WAMP-Ticket: a chmod-600 file holding its ticket")
    fleet.add_argument("--listen", help="HOST:PORT for the panel, overriding the config")
    fleet.add_argument("--max-retry-delay", type=float, default=10.0, metavar="S",
                       help="cap on the rejoin backoff after the router goes (from 0.5 s, x1.5; default 10)")
    fleet.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    token = sub.add_parser("token", help="make token secrets and their hashes for the config")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="a new random secret, and the config lines for it")
    create.add_argument("name", help="the token's name, as logs and the audit trail show it")
    create.add_argument("--role", default="ROLE", help="the role it gets")
    create.add_argument("--secret-file", help="write the secret to this file (mode 600) instead of printing it")
    token_sub.add_parser("hash", help="hash a secret read from standard input")
    return parser


NO_TOKEN = "no token: pass --token or set PICTL_TOKEN"


def _link_problem(args: argparse.Namespace) -> str | None:
    """What stops a client command before it connects, in words for a person (None: nothing)."""
    if not args.token and getattr(args, "method", None) != "session.auth":
        return NO_TOKEN
    if args.cafile and not os.path.isfile(args.cafile):
        return f"--cafile {args.cafile}: no such file"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except BrokenPipeError:  # `pictl watch | head -3`: the reader left, which is how such a pipe ends
        # Point stdout at /dev/null so the interpreter's last flush does not fail (and print) again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "serve":
        return serve(args)
    if args.command == "call":
        return call(args)
    if args.command == "watch":
        return watch(args)
    if args.command == "status":
        return status(args)
    if args.command == "token":
        return token(args)
    if args.command == "aggregate":
        return aggregate(args)
    return EXIT_USAGE  # pragma: no cover - argparse enforces the choices


def _load_config(path: str, **options: Any) -> Any:
    """The validated config, or None after printing every problem (``FILE:LINE: message``)."""
    from controller.service import configfile

    try:
        return configfile.load(path, **options)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _log_to_stderr(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)


def _listen(text: str | None, command: str) -> tuple[str | None, int | None] | None:
    """``--listen HOST:PORT`` (no option: (None, None)), or None after saying what is wrong."""
    from controller.settings.sections import parse_listen

    if not text:
        return None, None
    try:
        return parse_listen(text)
    except ValueError as exc:
        print(f"pictl {command}: --listen: {exc}", file=sys.stderr)
        return None


def check_config(path: str) -> int:
    from controller.security.secrets import SecretHash, slow_tokens_warning

    loaded = _load_config(path)
    if loaded is None:
        return EXIT_USAGE
    warning = slow_tokens_warning([t.name for t in loaded.tokens if isinstance(t.verifier, SecretHash)])
    if warning:
        print(f"{path}: warning: {warning}", file=sys.stderr)
    print(f"{path}: ok")
    return EXIT_OK


def token(args: argparse.Namespace) -> int:
    from controller.security.secrets import MIN_SECRET_LENGTH, digest_secret, generate_secret

    if args.token_command == "hash":
        secret = sys.stdin.readline().strip()
        if len(secret) < MIN_SECRET_LENGTH:
            print(f"pictl token hash: the secret must be at least {MIN_SECRET_LENGTH} characters", file=sys.stderr)
            return EXIT_USAGE
        print(digest_secret(secret))
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
        print(f'hash = "{digest_secret(secret)}"')
        print(f"# the secret (shown once, give it to the client): {secret}", file=sys.stderr)
    return EXIT_OK


def serve(args: argparse.Namespace) -> int:
    from controller.service.daemon import Daemon
    from controller.service.memory import settle_allocator
    from controller.service.supervision import serve_until_signalled
    from controller.settings.mqtt import MqttUnusable
    from controller.settings.wamp import MissingExtra
    from drivers.gpio import GpioUnavailable, gpio_refusal

    _log_to_stderr(args.log_level)
    # When systemd's watchdog kills a wedged daemon (SIGABRT), the journal gets every thread's stack.
    faulthandler.enable()
    trimmer = settle_allocator()  # before any thread starts: glibc's arenas are set per thread
    cfg = _load_config(args.config)
    listen = _listen(args.listen, "serve")
    if cfg is None or listen is None:
        return EXIT_USAGE
    host, port = listen
    if not 0.001 <= args.time_scale <= 100 or (args.time_scale != 1.0 and not args.simulate):
        print("pictl serve: --time-scale takes 0.001-100, and only with --simulate", file=sys.stderr)
        return EXIT_USAGE
    if not args.simulate and (refusal := gpio_refusal(cfg.devices.values(), cfg.gpio_factory)):  # before starting
        print(f"pictl serve: {refusal}", file=sys.stderr)
        return 1
    daemon = Daemon(cfg, simulate=args.simulate, host=host, port=port, time_scale=args.time_scale)
    try:
        asyncio.run(serve_until_signalled(daemon, trimmer=trimmer))
    except (GpioUnavailable, MqttUnusable, MissingExtra) as exc:
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


def aggregate(args: argparse.Namespace) -> int:
    from controller.service.memory import settle_allocator
    from controller.settings.wamp import check_url, read_ticket

    _log_to_stderr(args.log_level)
    if (why := check_url(args.wamp)) is not None:
        print(f"pictl aggregate: --wamp: {why}", file=sys.stderr)
        return EXIT_USAGE
    ticket = None
    if (args.authid is None) != (args.ticket_file is None):
        print("pictl aggregate: --authid and --ticket-file go together (WAMP-Ticket)", file=sys.stderr)
        return EXIT_USAGE
    if args.ticket_file:
        try:
            ticket = read_ticket(args.ticket_file)
        except ValueError as exc:
            print(f"pictl aggregate: --ticket-file: {exc}", file=sys.stderr)
            return EXIT_USAGE
    cfg = None
    if args.config:
        cfg = _load_config(args.config, devices_required=False)
        if cfg is None:
            return EXIT_USAGE
    elif args.listen:
        print("pictl aggregate: the panel needs tokens: --config FILE (its [auth] tables)", file=sys.stderr)
        return EXIT_USAGE
    listen = _listen(args.listen, "aggregate")
    if listen is None:
        return EXIT_USAGE
    host, port = listen
    try:
        from controller.fleet import panel as fleet
    except ImportError as exc:
        print(f"pictl aggregate needs the wamp extra: pip install 'pictl[wamp]' ({exc})", file=sys.stderr)
        return 1
    trimmer = settle_allocator()  # a daemon too: the same memory given back as serve's

    async def aggregate_until_signalled() -> None:
        trimmer.start()
        try:
            await fleet.serve(args.wamp, args.realm, cfg, host=host, port=port, authid=args.authid, ticket=ticket,
                              max_retry_delay=max(0.5, args.max_retry_delay))
        finally:
            await trimmer.stop()

    try:
        asyncio.run(aggregate_until_signalled())
    except OSError as exc:
        logging.getLogger("pictl").error("cannot listen: %s", exc.strerror or exc)
        return 1
    return EXIT_OK


def parse_params(words: list[str]) -> dict[str, Any] | None:
    """``call``'s PARAMS: one JSON object, or key=value pairs (values parsed as JSON when they parse).

    Raises ValueError with a message for the user.
    """
    if not words:
        return None
    if len(words) == 1 and words[0].lstrip().startswith(("{", "[")):
        try:
            params = json.loads(words[0])
        except ValueError as exc:
            raise ValueError(f"PARAMS is not valid JSON: {exc}") from None
        if not isinstance(params, dict):
            raise ValueError("PARAMS must be a JSON object or key=value pairs")
        return params
    params = {}
    for word in words:
        key, sep, text = word.partition("=")
        if not sep or not key:
            raise ValueError(f"{word!r}: PARAMS must be a JSON object or key=value pairs")
        try:
            params[key] = json.loads(text)
        except ValueError:
            params[key] = text
    return params


def _rpc_error(err: Any) -> int:
    """An RPC error (or a refused handshake) as JSON on stderr: exit 1."""
    print(json.dumps(err.to_dict()), file=sys.stderr)
    return EXIT_RPC_ERROR


def _refuse(args: argparse.Namespace) -> bool:
    """Say what stops a client command before it connects (then exit 2)."""
    problem = _link_problem(args)
    if problem:
        print(f"pictl {args.command}: {problem}", file=sys.stderr)
    return problem is not None


def call(args: argparse.Namespace) -> int:
    try:
        params = parse_params(args.params)
    except ValueError as exc:
        print(f"pictl call: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if _refuse(args):
        return EXIT_USAGE
    return asyncio.run(_call(args, params))


def _client(args: argparse.Namespace, **options: Any) -> Any:
    from controller.client import Client

    return Client(args.url, args.token, cafile=args.cafile, **options)


async def _call(args: argparse.Namespace, params: dict[str, Any] | None) -> int:
    from controller.client import ClientError, ReplyTimeout, RpcError

    url, method, wait = args.url, args.method, args.wait
    client = _client(args, reconnect=True)
    try:
        await client.connect()
        result = await client.call(method, params, wait=wait)
    except RpcError as err:
        return _rpc_error(err)
    except ReplyTimeout as exc:
        print(f"pictl call: {exc} (from {url})", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ClientError as exc:
        print(f"pictl call: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        await client.close()
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return EXIT_OK


def watch(args: argparse.Namespace) -> int:
    if _refuse(args):
        return EXIT_USAGE
    try:
        return asyncio.run(_watch(args, args.patterns or ["*"], args.pretty, args.count))
    except KeyboardInterrupt:
        return EXIT_OK


async def _watch(args: argparse.Namespace, patterns: list[str], pretty: bool, count: int | None) -> int:
    from controller.client import ClientError, RpcError

    def link(up: bool, why: str) -> None:
        print(f"pictl watch: {why}" + ("" if up else "; reconnecting"), file=sys.stderr, flush=True)

    url = args.url
    # Following along by eye (`watch --pretty`, as the README offers): readings would be most lines
    # (the demo's sensor, twice a second), burying the changes; a pattern brings them back.
    hide_readings = pretty and not args.patterns
    client = _client(args, reconnect=True, on_link=link)
    seen = 0
    try:
        await client.connect()
        stream = await client.events(*patterns).start()
        hidden = " except *.reading (name '*' to see readings too)" if hide_readings else ""
        print(f"pictl watch: watching {' '.join(patterns)}{hidden} on {url}", file=sys.stderr, flush=True)
        async for event in stream:
            if hide_readings and event.topic.endswith(".reading"):
                continue
            line = cli_text.pretty_event(event) if pretty else json.dumps(event.to_dict(), separators=(",", ":"),
                                                               ensure_ascii=False)
            print(line, flush=True)
            seen += 1
            if count is not None and seen >= count:
                break
    except RpcError as err:
        return _rpc_error(err)
    except ClientError as exc:
        print(f"pictl watch: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        await client.close()
    return EXIT_OK


def status(args: argparse.Namespace) -> int:
    if _refuse(args):
        return EXIT_USAGE
    return asyncio.run(_status(args, args.json))


async def _status(args: argparse.Namespace, as_json: bool) -> int:
    import time

    from controller.client import ClientError, RpcError

    client = _client(args, reconnect=False)
    try:
        await client.connect()
        result = await client.status()
    except RpcError as err:
        return _rpc_error(err)
    except ClientError as exc:
        print(f"pictl status: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        await client.close()
    print(json.dumps(result, indent=2, ensure_ascii=False) if as_json else cli_text.status_table(result, time.time()))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

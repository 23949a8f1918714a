"""The ``pictl`` console script as a user runs it: serve, call, signals (CONTRACT §1)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import ADMIN, DEMO, PANEL

PICTL = str(Path(sys.executable).parent / "pictl")


async def run(*args: str, env: dict[str, str] | None = None, timeout: float = 20.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(PICTL, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env)
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


class Served:
    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        self.log: list[str] = []

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        assert self.proc.stderr is not None
        async with asyncio.timeout(15):
            rest = await self.proc.stderr.read()
            self.log.extend(rest.decode().splitlines())
            return await self.proc.wait()


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    proc = await asyncio.create_subprocess_exec(
        PICTL, "serve", "--config", str(DEMO), "--simulate", "--listen", "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines = []
    async with asyncio.timeout(20):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "pictl serve exited: " + "".join(lines)
            lines.append(line)
            match = re.search(r"serving (ws://\S+)", line)
            if match:
                break
    server = Served(proc, match.group(1))
    server.log.extend(lines)
    yield server
    if proc.returncode is None:
        try:  # SIGTERM, so the daemon removes what the simulated plant made (pty links, temp dir)
            await server.stop()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_call_prints_the_result_and_exits_0(served: Served) -> None:
    code, out, err = await run("call", "door.open", "--url", served.url, "--token", ADMIN)
    assert code == 0, err
    result = json.loads(out)
    assert result["state"] == "open" and result["confirmed"] is True


async def test_call_reads_url_and_token_from_the_environment(served: Served) -> None:
    env = {"PICTL_URL": served.url, "PICTL_TOKEN": PANEL, "PATH": "/usr/bin:/bin"}
    code, out, _ = await run("call", "light.on", '{"timeout": 1}', env=env)
    assert code == 0 and json.loads(out)["state"] == "on"


async def test_rpc_error_goes_to_stderr_as_json_and_exits_1(served: Served) -> None:
    code, out, err = await run("call", "sim.fault", '{"device": "door", "fault": "jammed"}', "--url", served.url,
                               "--token", PANEL)
    assert code == 1 and out == ""
    assert json.loads(err)["code"] == -32001


async def test_refused_token_exits_1_with_an_unauthorized_error(served: Served) -> None:
    code, _, err = await run("call", "system.ping", "--url", served.url, "--token", "wrong-token")
    assert code == 1 and json.loads(err)["data"]["http_status"] == 401


async def test_unreachable_daemon_exits_3() -> None:
    code, _, err = await run("call", "system.ping", "--url", "ws://127.0.0.1:9/ws", "--token", ADMIN)
    assert code == 3 and "cannot connect" in err


async def test_params_must_be_a_json_object() -> None:
    code, _, err = await run("call", "door.open", "[1]", "--url", "ws://127.0.0.1:9/ws")
    assert code == 2 and "JSON object" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_cleanly_with_outputs_safe(served: Served, sig: int) -> None:
    code, _, err = await run("call", "light.on", "--url", served.url, "--token", ADMIN)
    assert code == 0, err
    assert await served.stop(sig) == 0
    assert any("outputs at their safe levels" in line for line in served.log)
    assert not any("Traceback" in line for line in served.log)


async def test_serve_refuses_an_invalid_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[devices.door]\nkind = "portcullis"\n')
    code, _, err = await run("serve", "--config", str(bad), "--simulate")
    assert code == 2 and f"{bad}:2: devices.door.kind: unknown device kind 'portcullis'" in err


async def test_serve_without_gpio_hardware_says_what_to_do() -> None:
    # This machine has no GPIO: without --simulate the daemon must explain, not crash.
    code, _, err = await run("serve", "--config", str(DEMO), "--listen", "127.0.0.1:0",
                             env={"PATH": "/usr/bin:/bin", "GPIOZERO_PIN_FACTORY": "nonesuch"})
    assert code == 1 and "--simulate" in err and "Traceback" not in err


async def test_token_create_makes_config_lines_that_verify(tmp_path: Path) -> None:
    code, out, err = await run("token", "create", "hall-panel", "--role", "panel")
    assert code == 0
    secret = err.strip().rsplit(" ", 1)[-1]
    conf = tmp_path / "t.toml"
    conf.write_text('[auth.roles.panel]\nallow = ["*"]\n' + out
                    + '[devices.light]\nkind = "switch"\noutput = { gpio = 22 }\n')
    from controller import config

    [token] = config.load(str(conf)).tokens
    assert token.name == "hall-panel" and token.verifier.matches(secret) and secret not in out


async def test_token_hash_reads_the_secret_from_stdin() -> None:
    proc = await asyncio.create_subprocess_exec(PICTL, "token", "hash", stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate(b"a secret I chose\n")
    from controller.secrets import parse_hash

    assert proc.returncode == 0 and parse_hash(out.decode().strip()).matches("a secret I chose")


async def test_token_secret_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "backup.secret"
    code, out, _ = await run("token", "create", "backup", "--role", "admin", "--secret-file", str(path))
    assert code == 0 and f'secret_file = "{path}"' in out
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text().strip()) >= 32

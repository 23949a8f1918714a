"""The ``pictl`` console script as a user runs it: serve, call, signals (README, *Command line*)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.client import Client, Unreachable
from controller.devices import door as door_kind
from controller.service import configfile as config
from controller.service.cli import parse_params
from controller.service.daemon import Daemon
from tests.conftest import ADMIN, DEMO, DEMO_GPIO_TEXT, NEW_KEY, PANEL, TEST_TEXT, TIME_SCALE, close_all, on_gpio_demo

demo_config = on_gpio_demo()


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


async def serve(config_file: Path, time_scale: float) -> Served:
    """``pictl serve --simulate`` on *config_file*, once it says where it serves."""
    proc = await asyncio.create_subprocess_exec(
        PICTL, "serve", "--config", str(config_file), "--simulate", "--time-scale", str(time_scale),
        "--listen", "127.0.0.1:0", stderr=asyncio.subprocess.PIPE,
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
    return server


async def stopped(server: Served) -> None:
    if server.proc.returncode is None:
        try:  # SIGTERM, so the daemon removes what the simulated plant made (pty links, temp dir)
            await server.stop()
        except TimeoutError:
            server.proc.kill()
            await server.proc.wait()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """The demo plant as a process, at the tests' time scale and deadlines."""
    config_file = tmp_path / "demo.toml"
    config_file.write_text(TEST_TEXT)
    server = await serve(config_file, TIME_SCALE)
    yield server
    await stopped(server)


@pytest.mark.long
async def test_the_quick_start_as_the_readme_tells_it() -> None:
    """README's quick start on `make demo`'s own daemon (config/demo.toml, the plant at its real time):
    the door answers after its ~0.3 s of travel; jammed, it fails after the demo's 2 s deadline."""
    server = await serve(DEMO, 1.0)
    try:
        link = ("--url", server.url, "--token", ADMIN)
        code, out, err = await run("call", "door.open", *link)
        assert code == 0, err
        opened = json.loads(out)
        assert (opened["state"], opened["changed"], opened["confirmed"]) == ("open", True, True)
        assert door_kind.TRAVEL_S * 1000 <= opened["elapsed_ms"] < 1500
        assert (opened["evidence"]["source"], opened["evidence"]["value"]) == ("door.contact", "open")
        code, _, err = await run("call", "sim.fault", "device=door", "fault=jammed", *link)
        assert code == 0, err
        code, out, err = await run("call", "door.close", *link)
        jammed = json.loads(err)
        assert code == 1 and out == "" and jammed["code"] == -32002
        assert jammed["message"] == "door did not become closed within the deadline"
        assert (jammed["data"]["expected"], jammed["data"]["observed"]) == ("closed", "open")
        assert 2000 <= jammed["data"]["elapsed_ms"] < 3500  # config/demo.toml: the door's timeout = 2.0
        assert jammed["data"]["recovery"] == "actuator released; door is open"
        code, out, err = await run("call", "sim.clear", "device=door", *link)
        assert code == 0 and json.loads(out)["faults"] == [], err
    finally:
        await stopped(server)


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
    from controller.service import configfile as config

    [token] = config.load(str(conf)).tokens
    assert token.name == "hall-panel" and token.verifier.matches(secret) and secret not in out


async def test_token_hash_reads_the_secret_from_stdin() -> None:
    proc = await asyncio.create_subprocess_exec(PICTL, "token", "hash", stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate(b"a secret I chose\n")
    from controller.security.secrets import parse_hash

    assert proc.returncode == 0 and parse_hash(out.decode().strip()).matches("a secret I chose")
    assert out.decode().startswith("sha256$")  # the fast digest, not the old PBKDF2 format


async def test_check_config_warns_about_tokens_in_the_slow_format(tmp_path: Path) -> None:
    from controller.security.secrets import hash_secret

    conf = tmp_path / "old.toml"
    text = DEMO.read_text()
    old = str(hash_secret("demo-panel", iterations=1000))
    conf.write_text(re.sub(r'(\[auth\.tokens\.demo-panel\]\nrole = "panel"\nhash = )"[^"]+"', f'\\1"{old}"', text))
    code, out, err = await run("check-config", str(conf))
    assert code == 0 and out.strip().endswith(": ok")
    assert "demo-panel" in err and "pictl token hash" in err and "demo-admin" not in err


async def test_token_secret_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "backup.secret"
    code, out, _ = await run("token", "create", "backup", "--role", "admin", "--secret-file", str(path))
    assert code == 0 and f'secret_file = "{path}"' in out
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text().strip()) >= 32


# -- call with key=value, watch, status (issue 7) -------------------------------------------------------


def test_params_as_key_value_pairs_parse_values_as_json_when_they_can() -> None:
    assert parse_params(["timeout=1.5", "device=door", "flag=true", 'obj={"a": 1}', "text=hello world",
                         "empty=", "n=null"]) == {
        "timeout": 1.5, "device": "door", "flag": True, "obj": {"a": 1}, "text": "hello world", "empty": "",
        "n": None}
    assert parse_params(['{"timeout": 2}']) == {"timeout": 2}
    assert parse_params([]) is None
    for bad in (["timeout"], ["=3"], ["[1]"], ["{not json"]):
        with pytest.raises(ValueError):
            parse_params(bad)


async def test_call_with_key_value_params_and_an_rpc_error_on_stderr(daemon: Daemon) -> None:
    link = ("--url", daemon.url, "--token", ADMIN)
    code, out, err = await run("call", "sim.fault", "device=door", "fault=jammed", *link)
    assert code == 0, err
    assert json.loads(out)["faults"] == ["jammed"]
    code, out, err = await run("call", "door.open", "timeout=0.3", *link)
    assert code == 1 and out == ""
    error = json.loads(err)
    assert error["code"] == -32002 and error["data"]["expected"] == "open" and error["data"]["observed"] == "closed"
    code, _, err = await run("call", "door.open", "timeout", *link)
    assert code == 2 and "key=value" in err


async def test_watch_prints_one_json_event_per_line_and_resumes_after_a_drop(daemon: Daemon) -> None:
    proc = await asyncio.create_subprocess_exec(
        PICTL, "watch", "*.state", "--count", "6", "--url", daemon.url, "--token", PANEL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(10):
            assert "watching *.state" in (await proc.stderr.readline()).decode()
        async with Client(daemon.url, ADMIN) as c:
            await c.call("light.on")
            lines = []
            async with asyncio.timeout(10):
                for _ in range(2):
                    lines.append(json.loads(await proc.stdout.readline()))
            await close_all(daemon)  # watch's link drops; the door opens while it is away
        async with Client(daemon.url, ADMIN) as c:
            await c.call("door.open")
            async with asyncio.timeout(10):
                assert (await proc.stderr.readline()).decode().strip() == \
                    "pictl watch: link lost (1012: service restart); reconnecting"
                assert (await proc.stderr.readline()).decode().strip() == "pictl watch: reconnected"
            await c.call("light.off")  # live again: the last two events
        async with asyncio.timeout(10):
            for _ in range(4):
                lines.append(json.loads(await proc.stdout.readline()))
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # A light's output changes first (its state still the old one), then its feedback follows.
    assert [(e["topic"], e["data"]["state"]) for e in lines] == [
        ("light.state", "off"), ("light.state", "on"), ("door.state", "moving"), ("door.state", "open"),
        ("light.state", "on"), ("light.state", "off")]
    assert [e["seq"] for e in lines[1:]] == list(range(lines[1]["seq"], lines[1]["seq"] + 5))  # none lost, none twice
    assert set(lines[0]) == {"topic", "seq", "time", "data"}


async def test_watch_pretty_is_readable(daemon: Daemon) -> None:
    proc = await asyncio.create_subprocess_exec(
        PICTL, "watch", "door.*", "--pretty", "--count", "2", "--url", daemon.url, "--token", ADMIN,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    async with asyncio.timeout(10):
        await proc.stderr.readline()
        async with Client(daemon.url, ADMIN) as c:
            await c.call("door.open")
        out = (await proc.stdout.read()).decode().splitlines()
        assert await proc.wait() == 0
    assert len(out) == 2 and "door.state" in out[1] and "state=open" in out[1] and "cause=rpc" in out[1]
    assert re.match(r"\d\d:\d\d:\d\d\.\d{3} ", out[0])


async def test_watch_pretty_follows_changes_not_the_readings_unless_asked() -> None:
    """`pictl watch --pretty`, as the README offers to follow along: the sensor's steady readings
    (here every 0.05 s: the plant at a tenth of its time) do not bury the door; '*' shows them."""
    daemon = Daemon(config.load(str(DEMO)), simulate=True, host="127.0.0.1", port=0, time_scale=0.1)
    await daemon.start()
    readings: list[asyncio.Event] = []  # each set by the next reading

    def reading(device: object, what: str, data: object) -> None:
        if what == "reading":
            for event in readings:
                event.set()

    daemon.devices["hall_temp"].listen(reading)
    link = ("--pretty", "--url", daemon.url, "--token", ADMIN)
    try:
        proc = await asyncio.create_subprocess_exec(PICTL, "watch", "--count", "2", *link,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(10):
                assert "watching * except *.reading" in (await proc.stderr.readline()).decode()
                for _ in range(3):  # readings go on while it watches
                    readings.append(asyncio.Event())
                    await readings[-1].wait()
                async with Client(daemon.url, ADMIN) as c:
                    await c.call("door.open")
                out = (await proc.stdout.read()).decode().splitlines()
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert [line.split()[1] for line in out] == ["door.state", "door.state"], out
        assert "state=open" in out[1]
        code, out_all, _ = await run("watch", "*", "--count", "3", *link)
        assert code == 0 and "hall_temp.reading" in out_all, out_all
    finally:
        await daemon.stop()


async def test_status_is_a_table_with_offline_devices_explained(daemon: Daemon) -> None:
    daemon.devices["light"].points[1].set_online(False, "feedback wire cut")
    env = {"PICTL_URL": daemon.url, "PICTL_TOKEN": PANEL, "PATH": "/usr/bin:/bin"}
    code, out, err = await run("status", env=env)
    assert code == 0, err
    header, door, light = out.splitlines()
    assert header.split() == ["DEVICE", "KIND", "ONLINE", "STATE", "LAST", "UPDATE"]
    assert door.split()[:4] == ["door", "door", "yes", "closed"] and "ago)" in door
    assert light.startswith("light") and "no since" in light and "(feedback wire cut)" in light
    code, out, _ = await run("status", "--json", env=env)
    assert code == 0 and json.loads(out)["devices"]["light"]["online"] is False


@pytest.mark.parametrize("command", [["status"], ["watch"], ["call", "system.ping"]])
async def test_refused_token_and_unreachable_daemon_for_every_client_command(daemon: Daemon,
                                                                             command: list[str]) -> None:
    code, out, err = await run(*command, "--url", daemon.url, "--token", "wrong-token")
    assert code == 1 and out == ""
    error = json.loads(err)
    assert error["code"] == -32001 and error["data"]["http_status"] == 401
    code, _, err = await run(*command, "--url", "ws://127.0.0.1:9/ws", "--token", ADMIN)
    assert code == 3 and "cannot connect" in err


# -- what a newcomer meets ------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["status"], ["watch"], ["call", "system.ping"]])
async def test_a_client_command_without_a_token_says_how_to_give_one(command: list[str]) -> None:
    env = {"PATH": "/usr/bin:/bin", "PICTL_URL": "ws://127.0.0.1:9/ws"}  # nothing listens: not even tried
    code, out, err = await run(*command, env=env)
    assert code == 2 and out == ""
    assert err.strip() == f"pictl {command[0]}: no token: pass --token or set PICTL_TOKEN"


async def test_a_reader_that_leaves_the_pipe_early_gets_no_traceback(served: Served) -> None:
    """`pictl watch | head -n 2`: watch ends quietly when head has what it wanted."""
    pictl_watch = f"{PICTL} watch '*.reading' --url {served.url} --token {ADMIN}"
    done = await asyncio.create_subprocess_exec("bash", "-o", "pipefail", "-c", f"{pictl_watch} | head -n 2",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(20):
        out, err = await done.communicate()
    assert len(out.decode().splitlines()) == 2  # two readings, then head left
    assert "Traceback" not in err.decode() and "Broken pipe" not in err.decode(), err.decode()
    assert done.returncode == 0


async def test_call_needs_a_method_and_nothing_more() -> None:
    code, _, err = await run("call", env={"PATH": "/usr/bin:/bin"})
    assert code == 2 and "required: METHOD" in err and "PARAMS" not in err.splitlines()[-1]


def tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate it signed for 127.0.0.1/localhost: (ca.pem, cert.pem, key.pem)."""
    ca, ca_key, cert, key, csr = (tmp / n for n in ("ca.pem", "ca.key", "cert.pem", "key.pem", "cert.csr"))
    ext = tmp / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    for command in (
        ["req", "-x509", *NEW_KEY, "-nodes", "-days", "1", "-subj", "/CN=pictl test CA",
         "-keyout", ca_key, "-out", ca],
        ["req", *NEW_KEY, "-nodes", "-subj", "/CN=localhost", "-keyout", key, "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "1",
         "-extfile", ext, "-out", cert],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


async def test_cafile_trusts_a_private_ca_for_every_client(tmp_path: Path) -> None:
    ca, cert, key = tls_files(tmp_path)
    text = DEMO_GPIO_TEXT.replace('listen = "127.0.0.1:8765"',
                                  f'listen = "127.0.0.1:0"\ntls_cert = "{cert}"\ntls_key = "{key}"')
    daemon = Daemon(config.loads(text, str(tmp_path / "tls.toml")), simulate=True, time_scale=TIME_SCALE)
    await daemon.start()
    try:
        url = daemon.url
        assert url.startswith("wss://127.0.0.1:")
        # Without the CA: refused, and the message says what to do about it.
        code, _, err = await run("call", "system.ping", "--url", url, "--token", ADMIN)
        assert code == 3 and "certificate verify failed" in err and "--cafile" in err
        code, out, err = await run("call", "system.ping", "--url", url, "--token", ADMIN, "--cafile", str(ca))
        assert code == 0 and json.loads(out) == {"pong": True}, err
        env = {"PATH": "/usr/bin:/bin", "PICTL_URL": url, "PICTL_TOKEN": ADMIN, "PICTL_CAFILE": str(ca)}
        code, out, err = await run("status", env=env)
        assert code == 0 and out.startswith("DEVICE"), err
        code, _, err = await run("status", "--cafile", str(tmp_path / "nope.pem"), env=env)
        assert code == 2 and "nope.pem: no such file" in err
        # The Python client: cafile=..., and the same CA is not trusted without it.
        async with Client(url, ADMIN, cafile=str(ca)) as pictl:
            assert (await pictl.call("door.state"))["state"] == "closed"
        with pytest.raises(Unreachable, match="certificate verify failed"):
            await Client(url, ADMIN, reconnect=False).connect()
    finally:
        await daemon.stop()

"""Config loading and validation (controller/config.py, configbase.py and the kinds' read_config),
and `pictl check-config` (README, *Command line*): every problem as `FILE:LINE: field: message`, exit 2.

Pure: no sockets, no daemon. Line numbers below are those of BASE, numbered in its comment.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller.devices.door import DoorConfig
from controller.devices.registry import REGISTRY
from controller.devices.switch import SwitchConfig
from controller.security.policy import Role
from controller.service import cli
from controller.service import configfile as config
from controller.settings.reader import ConfigError, key_lines
from drivers.gpio import GpioInputSpec, GpioOutputSpec

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "config" / "demo.toml"

HASH = "sha256$lNVoyRMJ57rRxtFtLR_R-59GqU16oZfiH77jQIFMqwI"  # of "long-enough-secret"

# A valid config whose line numbers the tests rely on.
BASE = """\
[server]
listen = "127.0.0.1:8765"

[auth.roles.admin]
allow = ["*"]

[auth.tokens.ops]
role = "admin"
hash = "sha256$lNVoyRMJ57rRxtFtLR_R-59GqU16oZfiH77jQIFMqwI"

[devices.door]
kind = "door"
relay = { gpio = 17 }
contact = { gpio = 27, pull = "up" }
timeout = 2.0

[devices.light]
kind = "switch"
output = { gpio = 22 }
feedback = { gpio = 23, pull = "down" }
timeout = 1.0
"""
#  1 [server]                  8 role = "admin"            15 timeout = 2.0
#  2 listen = ...              9 hash = ...                16
#  3                          10                           17 [devices.light]
#  4 [auth.roles.admin]       11 [devices.door]            18 kind = "switch"
#  5 allow = ["*"]            12 kind = "door"             19 output = { gpio = 22 }
#  6                          13 relay = { gpio = 17 }     20 feedback = { gpio = 23, pull = "down" }
#  7 [auth.tokens.ops]        14 contact = { gpio = 27 ..  21 timeout = 1.0


def edit(old: str, new: str, text: str = BASE) -> str:
    """BASE with one exact, unique fragment replaced."""
    assert text.count(old) == 1, f"{old!r} must occur once"
    return text.replace(old, new)


def problems(text: str) -> list[str]:
    """Every problem loads() reports for *text*, as printed: 'test.toml:LINE: message'."""
    with pytest.raises(ConfigError) as info:
        config.loads(text, "test.toml")
    found = [str(p) for p in info.value.problems]
    assert found, "ConfigError without problems"
    return found


def only_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def assert_problem(text: str, line: int | None, field: str, phrase: str) -> None:
    """Exactly one problem, at *line*, naming *field*, and saying *phrase*."""
    found = only_problem(text)
    where = f"test.toml:{line}" if line is not None else "test.toml"
    assert found.startswith(f"{where}: {field}: "), found
    assert phrase in found, found


# -- valid configs ---------------------------------------------------------------------------------


def test_base_is_valid_and_typed():
    cfg = config.loads(BASE, "test.toml")
    assert cfg.path == "test.toml"
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8765)
    assert cfg.server.max_batch == 50
    assert list(cfg.devices) == ["door", "light"]
    door = cfg.devices["door"]
    assert isinstance(door, DoorConfig)
    assert door.relay == GpioOutputSpec(pin=17, active_high=True)
    assert door.contact == GpioInputSpec(pin=27, pull="up", active_high=None, debounce_s=None)
    assert door.contact.active_level is False  # pulled up: active low
    assert (door.timeout, door.max_timeout) == (2.0, 30.0)
    light = cfg.devices["light"]
    assert isinstance(light, SwitchConfig)
    assert light.output.pin == 22
    assert light.feedback is not None and light.feedback.pin == 23 and light.feedback.active_level is True
    assert (light.timeout, light.max_timeout) == (1.0, 30.0)
    assert cfg.roles == {"admin": Role("admin", ("*",))}
    [token] = cfg.tokens
    assert (token.name, token.role) == ("ops", "admin")
    assert token.verifier.matches("long-enough-secret") and not token.verifier.matches("long-enough-secreT")


def test_demo_config_has_door_and_light_as_in_the_contract():
    """README's demo plant: door on relay GPIO17 + contact GPIO27, timeout 2 s; light on GPIO22 with
    feedback GPIO23, timeout 1 s; tokens demo-admin → admin, demo-panel → panel."""
    cfg = config.load(str(DEMO))
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8765)

    door = cfg.devices["door"]
    assert door.kind == "door"
    assert door.relay.pin == 17 and door.relay.active_high is True
    assert door.contact.pin == 27 and door.contact.pull == "up"
    assert door.open_when_active is False  # a reed switch: closed (active) means the door is shut
    assert door.timeout == 2.0

    light = cfg.devices["light"]
    assert light.kind == "switch"
    assert light.output.pin == 22
    assert light.feedback is not None
    assert (light.feedback.pin, light.feedback.pull) == (23, "down")
    assert light.timeout == 1.0

    assert {t.name: t.role for t in cfg.tokens} == {"demo-admin": "admin", "demo-panel": "panel"}
    assert cfg.roles["admin"].allow == ("*",)
    # README's demo token list, plus system.describe: the wall panel builds itself from it.
    assert set(cfg.roles["panel"].allow) == {
        "door.*", "light.*", "*.state", "system.status", "system.ping", "events.*", "system.describe"}
    assert (cfg.roles["panel"].rate, cfg.roles["panel"].burst) == (20.0, 40)
    tokens = {t.name: t for t in cfg.tokens}
    assert tokens["demo-admin"].verifier.matches("demo-admin")
    assert tokens["demo-panel"].verifier.matches("demo-panel")


def test_load_reads_a_file(tmp_path):
    path = tmp_path / "pictl.toml"
    path.write_text(BASE)
    cfg = config.load(str(path))
    assert cfg.path == str(path)
    assert set(cfg.devices) == {"door", "light"}


@pytest.mark.parametrize("pin", [0, 27])
def test_pin_range_bounds_are_accepted(pin):
    text = edit("contact = { gpio = 27", "contact = { gpio = 26")  # free 27 for the light
    cfg = config.loads(edit("gpio = 22", f"gpio = {pin}", text), "test.toml")
    assert cfg.devices["light"].output.pin == pin


def test_pull_none_with_active_is_valid():
    cfg = config.loads(edit('pull = "up"', 'pull = "none", active = "low"'), "test.toml")
    contact = cfg.devices["door"].contact
    assert (contact.pull, contact.active_high, contact.active_level) == ("none", False, False)


def test_max_timeout_equal_to_timeout_is_valid():
    cfg = config.loads(edit("timeout = 2.0\n", "timeout = 2.0\nmax_timeout = 2.0\n"), "test.toml")
    assert (cfg.devices["door"].timeout, cfg.devices["door"].max_timeout) == (2.0, 2.0)


def _with_secret_file(tmp_path, content: str, mode: int) -> str:
    path = tmp_path / "ops.secret"
    path.write_text(content)
    path.chmod(mode)
    return edit(f'hash = "{HASH}"', 'secret_file = "ops.secret"')


def test_secret_file_of_exactly_8_characters_is_valid(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text(_with_secret_file(tmp_path, "12345678\n", 0o600))
    cfg = config.load(str(conf))
    assert cfg.tokens[0].verifier.matches("12345678")


@pytest.mark.parametrize(("content", "mode", "phrase"), [
    ("1234567\n", 0o600, "shorter than 8 characters"),
    ("long-enough-secret\n", 0o644, "readable by group or others"),
])
def test_bad_secret_files(tmp_path, content, mode, phrase):
    conf = tmp_path / "c.toml"
    conf.write_text(_with_secret_file(tmp_path, content, mode))
    with pytest.raises(ConfigError) as info:
        config.load(str(conf))
    [problem] = info.value.problems
    assert str(problem).startswith(f"{conf}:9: auth.tokens.ops.secret_file: ") and phrase in str(problem)


def test_a_secret_file_token_is_equal_across_loads(tmp_path):
    """A reload compares tokens to find revoked ones: an unchanged secret file must not look new."""
    conf = tmp_path / "c.toml"
    conf.write_text(_with_secret_file(tmp_path, "long-enough-secret\n", 0o600))
    before = config.load(str(conf)).tokens
    assert config.load(str(conf)).tokens == before
    (tmp_path / "ops.secret").write_text("another-long-secret\n")  # the secret rotated
    assert config.load(str(conf)).tokens != before


def test_missing_secret_file(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text(edit(f'hash = "{HASH}"', 'secret_file = "nope"'))
    with pytest.raises(ConfigError) as info:
        config.load(str(conf))
    assert "cannot read" in str(info.value.problems[0])


# -- unknown keys ----------------------------------------------------------------------------------


def test_unknown_top_level_key():
    assert_problem('colour = "red"\n' + BASE, 1, "colour", "unknown field")


def test_unknown_key_in_server_table():
    assert_problem(edit('listen = "127.0.0.1:8765"', 'listen = "127.0.0.1:8765"\nlisten_port = 1'),
                   3, "server.listen_port", "unknown field")


def test_unknown_key_in_a_device():
    assert_problem(BASE + 'colour = "red"\n', 22, "devices.light.colour", "unknown field")


def test_unknown_key_in_the_first_device():
    assert_problem(edit("timeout = 2.0", 'colour = "red"'), 15, "devices.door.colour", "unknown field")


def test_unknown_key_inside_an_inline_point_table():
    assert_problem(edit("relay = { gpio = 17 }", 'relay = { gpio = 17, colour = "red" }'),
                   13, "devices.door.relay.colour", "unknown field")


def test_unknown_key_inside_an_inline_input_table():
    assert_problem(edit('contact = { gpio = 27, pull = "up" }', 'contact = { gpio = 27, pull = "up", bounce = 5 }'),
                   14, "devices.door.contact.bounce", "unknown field")


def test_unknown_key_given_as_dotted_key():
    text = edit("relay = { gpio = 17 }", "relay.gpio = 17")
    text = edit("timeout = 2.0", 'relay.colour = "red"', text)
    assert_problem(text, 15, "devices.door.relay.colour", "unknown field")


def test_unknown_key_in_a_token():
    assert_problem(edit('role = "admin"', 'rolle = "admin"\nrole = "admin"'), 8, "auth.tokens.ops.rolle",
                   "unknown field")


def test_a_misspelled_table_name_has_its_line_and_a_suggestion(tmp_path, capsys):
    """`[device.light]` for `[devices.light]`: every problem says FILE:LINE, and what was meant."""
    path = write(tmp_path, BASE.replace("[devices.light]", "[device.light]").replace("[server]", "[sever]"))
    assert cli.main(["check-config", path]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{path}:1: sever: unknown field (did you mean server?)",
                   f"{path}:17: device: unknown field (did you mean devices?)"]
    dotted = write(tmp_path, 'device.light.kind = "switch"\n' + BASE)
    assert cli.main(["check-config", dotted]) == 2
    assert capsys.readouterr().err == f"{path}:1: device: unknown field (did you mean devices?)\n"


def test_a_file_without_devices_says_so_with_a_line(tmp_path, capsys):
    path = write(tmp_path, '[server]\nlisten = "127.0.0.1:8765"\n')
    assert cli.main(["check-config", path]) == 2
    assert capsys.readouterr().err == f"{path}:2: devices: no devices configured (add a [devices.NAME] table)\n"


# -- wrong types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "phrase"),
    [
        ("timeout = 2.0", 'timeout = "2"', 15, "devices.door.timeout", "expected a number, got string"),
        ("timeout = 1.0", "timeout = true", 21, "devices.light.timeout", "expected a number, got boolean"),
        ("relay = { gpio = 17 }", 'relay = { gpio = "17" }', 13, "devices.door.relay.gpio",
         "expected an integer, got string"),
        ("relay = { gpio = 17 }", "relay = { gpio = 17.0 }", 13, "devices.door.relay.gpio",
         "expected an integer, got number"),
        ("relay = { gpio = 17 }", "relay = { gpio = true }", 13, "devices.door.relay.gpio",
         "expected an integer, got boolean"),
        ("relay = { gpio = 17 }", "relay = 17", 13, "devices.door.relay", "expected a table, got integer"),
        ('kind = "door"', "kind = 1", 12, "devices.door.kind", "expected a string, got integer"),
        (f'hash = "{HASH}"', "hash = 12345678", 9, "auth.tokens.ops.hash", "expected a string, got integer"),
        ('pull = "up"', 'pull = "sideways"', 14, "devices.door.contact.pull", "must be one of"),
    ],
)
def test_wrong_type(old, new, line, field, phrase):
    assert_problem(edit(old, new), line, field, phrase)


def test_wrong_type_for_role_allow():
    found = problems(edit('allow = ["*"]', 'allow = "*"'))
    assert found == ["test.toml:5: auth.roles.admin.allow: expected an array of strings"]


def test_timeout_must_be_positive():
    assert_problem(edit("timeout = 2.0", "timeout = 0"), 15, "devices.door.timeout", "must be > 0")


# -- device kinds and names ------------------------------------------------------------------------


def test_unknown_device_kind():
    assert_problem(edit('kind = "switch"', 'kind = "toaster"'), 18, "devices.light.kind",
                   "unknown device kind 'toaster'")


def test_missing_kind():
    assert_problem(edit('kind = "door"', "# kind forgotten"), 11, "devices.door.kind", "missing required field")


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ('[devices."front-door"]', "devices.front-door"),
        ("[devices.1door]", "devices.1door"),
        ('[devices."light one"]', 'devices."light one"'),
        ("[devices.class]", "devices.class"),  # a Python keyword: not a usable method prefix
    ],
)
def test_device_name_must_be_an_identifier(header, field):
    assert_problem(edit("[devices.light]", header), 17, field, "must be an identifier")


@pytest.mark.parametrize("name", ["system", "events", "session", "sim", "rpc"])
def test_reserved_device_name(name):
    assert_problem(edit("[devices.light]", f"[devices.{name}]"), 17, f"devices.{name}", "reserved")


# -- points ----------------------------------------------------------------------------------------


def test_gpio_pin_used_twice_names_the_first_user():
    assert_problem(edit("output = { gpio = 22 }", "output = { gpio = 17 }"), 19, "devices.light.output.gpio",
                   "GPIO 17 is already used by devices.door.relay.gpio")


def test_gpio_pin_used_twice_within_one_device():
    assert_problem(edit('contact = { gpio = 27, pull = "up" }', 'contact = { gpio = 17, pull = "up" }'),
                   14, "devices.door.contact.gpio", "GPIO 17 is already used by devices.door.relay.gpio")


@pytest.mark.parametrize("pin", [40, 28, -1, 1000])
def test_gpio_pin_out_of_range(pin):
    assert_problem(edit("output = { gpio = 22 }", f"output = {{ gpio = {pin} }}"), 19,
                   "devices.light.output.gpio", f"must be between 0 and 27, got {pin}")


def test_missing_required_point():
    # The line of the device's table header: the field itself is nowhere in the file.
    assert_problem(edit('contact = { gpio = 27, pull = "up" }', "# no contact"), 11, "devices.door.contact",
                   "missing required field")


def test_point_without_driver_key():
    assert_problem(edit("relay = { gpio = 17 }", 'relay = { active = "high" }'), 13, "devices.door.relay",
                   "driver key")


def test_pull_none_requires_active():
    assert_problem(edit('pull = "up"', 'pull = "none"'), 14, "devices.door.contact.active",
                   'required with pull = "none"')


def test_active_with_pull_up_is_rejected():
    assert_problem(edit('pull = "up"', 'pull = "up", active = "low"'), 14, "devices.door.contact.active",
                   'implied by pull = "up"')


def test_active_with_pull_down_is_rejected():
    assert_problem(edit('pull = "down"', 'pull = "down", active = "high"'), 20, "devices.light.feedback.active",
                   'implied by pull = "down"')


def test_on_when_without_feedback_is_rejected():
    text = edit('feedback = { gpio = 23, pull = "down" }', 'on_when = "inactive"')
    assert_problem(text, 20, "devices.light.on_when", "only meaningful with a feedback input")


# -- timeouts --------------------------------------------------------------------------------------


def test_max_timeout_below_timeout():
    assert_problem(edit("timeout = 2.0\n", "timeout = 2.0\nmax_timeout = 1.0\n"), 16, "devices.door.max_timeout",
                   "must be >= timeout (2.0)")


def test_max_timeout_below_default_timeout():
    # The door's default timeout is 5 s: a cap of 1 s alone is already too low.
    assert_problem(edit("timeout = 2.0", "max_timeout = 1.0"), 15, "devices.door.max_timeout",
                   "must be >= timeout (5.0)")


# -- auth ------------------------------------------------------------------------------------------


def test_token_with_unknown_role():
    assert_problem(edit('role = "admin"', 'role = "root"'), 8, "auth.tokens.ops.role", "no role named 'root'")


def test_plaintext_secret_is_refused():
    assert_problem(edit(f'hash = "{HASH}"', 'secret = "long-enough-secret"'), 9, "auth.tokens.ops.secret",
                   "secrets do not belong in the config")


@pytest.mark.parametrize("bad", ["", "md5$1$2$3", "pbkdf2-sha256$10$c2FsdHNhbHQ$AAAA", "pbkdf2-sha256$x$y$z",
                                 "sha256$", "sha256$AAAA", "sha256$" + "A" * 44 + "$x"])
def test_malformed_hash(bad):
    assert_problem(edit(f'hash = "{HASH}"', f'hash = "{bad}"'), 9, "auth.tokens.ops.hash", "hash")


def test_token_missing_hash():
    assert_problem(edit(f'hash = "{HASH}"', "# no hash"), 7, "auth.tokens.ops",
                   "exactly one of hash or secret_file")


def test_token_with_unknown_role_and_bad_hash_reports_both():
    """loads() promises every problem at once: an unknown role does not hide a bad hash."""
    found = problems(edit(f'role = "admin"\nhash = "{HASH}"', 'role = "root"\nhash = "nonsense"'))
    assert len(found) == 2
    assert "test.toml:8: auth.tokens.ops.role: no role named 'root' in [auth.roles]" in found
    assert any(p.startswith("test.toml:9: auth.tokens.ops.hash: ") for p in found)


# -- other problems --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "line", "phrase"),
    [
        ("timeout = 2.0", "timeout = = 2.0", 15, "TOML syntax"),
        ("[devices.light]", "[devices.light", 17, "TOML syntax: Expected ']'"),
        ("timeout = 1.0", "kind = \"switch\"", 21, "TOML syntax: Cannot overwrite a value"),
    ],
)
def test_toml_syntax_error_has_its_line(old, new, line, phrase):
    found = only_problem(edit(old, new))
    assert found.startswith(f"test.toml:{line}: "), found
    assert phrase in found, found


def test_not_utf8():
    found = only_problem(BASE.encode() + b"# \xff\n")
    assert found.startswith("test.toml: not UTF-8 text"), found


def test_no_devices():
    text = BASE[: BASE.index("[devices.door]")]
    assert_problem(text, 10, "devices", "no devices configured")


def test_bad_listen_address():
    assert_problem(edit('listen = "127.0.0.1:8765"', 'listen = "127.0.0.1:99999"'), 2, "server.listen",
                   "got 99999")


def test_file_not_found(tmp_path):
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    [problem] = info.value.problems
    assert problem.line is None
    assert str(problem).startswith(f"{path}: cannot read: ")
    assert "No such file" in str(problem)


def test_several_problems_are_reported_at_once():
    text = edit(f'hash = "{HASH}"', 'secret = "short"')
    text = edit("relay = { gpio = 17 }", 'relay = { gpio = 17, colour = "red" }', text)
    text = edit("timeout = 2.0", 'timeout = "2"', text)
    text = edit("output = { gpio = 22 }", "output = { gpio = 40 }", text)
    text = text + "colour = 1\n"
    found = problems(text)
    assert sorted(found, key=lambda p: int(p.split(":")[1])) == [
        'test.toml:9: auth.tokens.ops.secret: secrets do not belong in the config: use hash = "..." '
        '(`pictl token create NAME`) or secret_file = "PATH"',
        "test.toml:13: devices.door.relay.colour: unknown field",
        "test.toml:15: devices.door.timeout: expected a number, got string",
        "test.toml:19: devices.light.output.gpio: must be between 0 and 27, got 40",
        "test.toml:22: devices.light.colour: unknown field",
    ]


def test_key_lines_maps_headers_keys_and_inline_keys():
    lines = key_lines(BASE)
    assert lines[("server",)] == 1
    assert lines[("auth", "tokens", "ops", "hash")] == 9
    assert lines[("devices", "door")] == 11
    assert lines[("devices", "door", "contact", "pull")] == 14
    assert lines[("devices", "light", "timeout")] == 21


# -- pictl check-config (README, *Command line*) ---------------------------------------------------------------


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pictl.toml"
    path.write_text(text)
    return str(path)


def test_check_config_valid_exits_0_and_stays_quiet_on_stderr(tmp_path, capsys):
    path = write(tmp_path, BASE)
    assert cli.main(["check-config", path]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out == f"{path}: ok\n"


def test_check_config_demo_is_valid(capsys):
    assert cli.main(["check-config", str(DEMO)]) == 0
    assert capsys.readouterr().err == ""


def test_check_config_invalid_exits_2_with_file_line_message(tmp_path, capsys):
    path = write(tmp_path, edit("output = { gpio = 22 }", "output = { gpio = 17 }"))
    assert cli.main(["check-config", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{path}:19: devices.light.output.gpio: GPIO 17 is already used by devices.door.relay.gpio\n"


def test_check_config_prints_every_problem_on_its_own_line(tmp_path, capsys):
    text = edit("relay = { gpio = 17 }", 'relay = { gpio = 17, colour = "red" }')
    text = edit('kind = "switch"', 'kind = "toaster"', text)
    text = edit('role = "admin"', 'role = "root"', text)
    path = write(tmp_path, 'colour = "red"\n' + text)  # everything below moves down one line
    assert cli.main(["check-config", path]) == 2
    err_lines = capsys.readouterr().err.splitlines()
    assert len(err_lines) == 4, err_lines
    for line in err_lines:
        assert re.fullmatch(re.escape(path) + r":\d+: \S+: .+", line), line
    assert sorted(err_lines, key=lambda p: int(p[len(path) + 1 :].split(":")[0])) == [
        f"{path}:1: colour: unknown field",
        f"{path}:9: auth.tokens.ops.role: no role named 'root' in [auth.roles]",
        f"{path}:14: devices.door.relay.colour: unknown field",
        f"{path}:19: devices.light.kind: unknown device kind 'toaster' (known: {', '.join(sorted(REGISTRY))})",
    ]


def test_check_config_syntax_error(tmp_path, capsys):
    path = write(tmp_path, edit("timeout = 2.0", "timeout = = 2.0"))
    assert cli.main(["check-config", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:15: TOML syntax"), err
    assert err.count("\n") == 1


def test_check_config_file_not_found(tmp_path, capsys):
    path = str(tmp_path / "nope.toml")
    assert cli.main(["check-config", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: cannot read: "), err
    assert err.count("\n") == 1

"""Reading a TOML document into typed values, with FILE:LINE for every problem.

tomli gives the data but not where each key stood, so :func:`key_lines` scans
the text once for table headers and ``key =`` lines. It is deliberately
simple (it does not parse values); when a key cannot be placed, the nearest
enclosing table's line is used, or no line at all.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from controller.security.secrets import read_secret_file

Path = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEY_AT_START = re.compile(rf"^\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=")
_INLINE_KEY = re.compile(r"""[{,]\s*([A-Za-z0-9_-]+|"[^"]*")\s*=""")


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


def key_lines(text: str) -> dict[Path, int]:
    """Map each key path found in *text* to the 1-based line it is defined on."""
    lines: dict[Path, int] = {}
    table: Path = ()
    array_counts: dict[Path, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[["):
            header = _split_dotted(line[2 : line.find("]]")])
            index = array_counts.get(header, -1) + 1
            array_counts[header] = index
            table = (*header, index)
            lines.setdefault(header, number)
            lines.setdefault(table, number)
            continue
        if line.startswith("["):
            table = _split_dotted(line[1 : line.find("]")])
            for end in range(1, len(table) + 1):  # [device.light] also names `device` (a typo's line)
                lines.setdefault(table[:end], number)
            continue
        match = _KEY_AT_START.match(raw)
        if not match:
            continue
        path = (*table, *_split_dotted(match.group(1)))
        for end in range(len(table) + 1, len(path) + 1):  # a.b.c = 1 defines a and a.b here too
            lines.setdefault(path[:end], number)
        rest = raw[match.end() :]
        if rest.lstrip().startswith("{"):
            for inner in _INLINE_KEY.finditer(rest):
                key = inner.group(1).strip('"')
                lines.setdefault((*path, key), number)
    return lines


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file."""

    file: str  # the path as given
    line: int | None  # 1-based, when known
    message: str  # names the field: "devices.door.relay.gpio: ..."

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """A config that cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class Document:
    """Collects problems while a parsed TOML document is read into values."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file  # shown in every problem
        self.lines = key_lines(text)  # where each key was written
        self.last_line = max(1, len(text.splitlines()))  # for what is missing from the whole file
        self.problems: list[Problem] = []  # everything found so far

    def line_of(self, path: Path) -> int | None:
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def problem(self, path: Path, message: str) -> None:
        name = dotted(path)
        text = f"{name}: {message}" if name else message
        self.problems.append(Problem(self.file, self.line_of(path), text))


def dotted(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            piece = part if _BARE.fullmatch(part) else f'"{part}"'
            out = f"{out}.{piece}" if out else piece
    return out


class _Missing:
    pass


MISSING: Any = _Missing()


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "table"}.get(
        type(value), type(value).__name__
    )


class Table:
    """A TOML table being read: every key must be taken, or it is reported as unknown."""

    def __init__(self, doc: Document, path: Path, data: dict[str, Any]) -> None:
        self.doc = doc  # where problems go
        self.path = path  # this table's key path
        self.data = data  # the raw parsed table
        self._taken: set[str] = set()  # keys read so far

    def has(self, key: str) -> bool:
        return key in self.data

    def problem(self, key: str | None, message: str) -> None:
        self.doc.problem(self.path if key is None else (*self.path, key), message)

    def _raw(self, key: str, required: bool) -> Any:
        self._taken.add(key)
        if key not in self.data:
            if required:
                self.problem(key, "missing required field")
            return MISSING
        return self.data[key]

    def take(self, key: str) -> None:
        """Mark *key* as handled (its problem, if any, was reported another way)."""
        self._taken.add(key)

    def string(self, key: str, default: Any = MISSING, choices: Iterable[str] | None = None) -> Any:
        value = self._raw(key, default is MISSING)
        if value is MISSING:
            return default if default is not MISSING else None
        if not isinstance(value, str):
            self.problem(key, f"expected a string, got {_type_name(value)}")
            return default if default is not MISSING else None
        if choices is not None and value not in choices:
            options = ", ".join(repr(c) for c in choices)
            self.problem(key, f"must be one of {options}, got {value!r}")
            return default if default is not MISSING else None
        return value

    def integer(self, key: str, default: Any = MISSING, low: int | None = None, high: int | None = None) -> Any:
        value = self._raw(key, default is MISSING)
        if value is MISSING:
            return default if default is not MISSING else None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"expected an integer, got {_type_name(value)}")
            return default if default is not MISSING else None
        if (low is not None and value < low) or (high is not None and value > high):
            self.problem(key, f"must be between {low} and {high}, got {value}")
            return default if default is not MISSING else None
        return value

    def number(self, key: str, default: Any = MISSING, low: float = 0.0, high: float = math.inf,
               low_inclusive: bool = False) -> Any:
        value = self._raw(key, default is MISSING)
        if value is MISSING:
            return default if default is not MISSING else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.problem(key, f"expected a number, got {_type_name(value)}")
            return default if default is not MISSING else None
        too_low = value < low if low_inclusive else value <= low
        if math.isnan(value) or too_low or value > high:
            bound = ">=" if low_inclusive else ">"
            self.problem(key, f"must be {bound} {low} and <= {high}, got {value}")
            return default if default is not MISSING else None
        return float(value)

    def boolean(self, key: str, default: Any = MISSING) -> Any:
        value = self._raw(key, default is MISSING)
        if value is MISSING:
            return default if default is not MISSING else None
        if not isinstance(value, bool):
            self.problem(key, f"expected true or false, got {_type_name(value)}")
            return default if default is not MISSING else None
        return value

    def strings(self, key: str, default: Any = MISSING) -> Any:
        value = self._raw(key, default is MISSING)
        if value is MISSING:
            return default if default is not MISSING else None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(key, "expected an array of strings")
            return default if default is not MISSING else None
        return tuple(value)

    def secret_file(self, key: str, minimum: int) -> str | None:
        """The secret in the file *key* names (relative to the config file), read now, at load:
        mode 600 and at least *minimum* characters, else a problem and None (also when absent)."""
        name = self.string(key, default=None)
        if not name:
            return None
        path = os.path.join(os.path.dirname(os.path.abspath(self.doc.file)), os.path.expanduser(name))
        try:
            return read_secret_file(path, minimum=minimum)
        except ValueError as exc:
            self.problem(key, str(exc))
            return None

    def table(self, key: str, required: bool = False) -> Table | None:
        value = self._raw(key, required)
        if value is MISSING:
            return None
        if not isinstance(value, dict):
            self.problem(key, f"expected a table, got {_type_name(value)}")
            return None
        return Table(self.doc, (*self.path, key), value)

    def section(self, key: str) -> Table:
        """An optional table: empty (all defaults) when absent."""
        return self.table(key) or Table(self.doc, (*self.path, key), {})

    def tables(self, key: str) -> list[tuple[str, Table]]:
        """The sub-tables of table *key* (e.g. every ``[devices.NAME]``), in file order."""
        outer = self.table(key)
        if outer is None:
            return []
        out = []
        for name in list(outer.data):
            inner = outer.table(name)
            if inner is not None:
                out.append((name, inner))
        return out

    def finish(self) -> None:
        """Report every key nobody asked for, with the known key it most resembles."""
        for key in self.data:
            if key not in self._taken:
                close = difflib.get_close_matches(key, sorted(self._taken), n=1, cutoff=0.75)
                self.problem(key, "unknown field" + (f" (did you mean {close[0]}?)" if close else ""))

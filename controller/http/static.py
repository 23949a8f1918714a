"""The wall panel's files, served by the daemon at ``GET /``.

The panel folder is read once, when the server is built: only regular files directly in it, with
a known type, and not symlinks (nor anything resolving outside the folder), become servable. A
request is then a lookup in that table, so no URL — ``/../``, ``%2e%2e``, ``//etc/passwd``, a
backslash — can reach anything else: it is a 404.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

PANEL_DIR = Path(__file__).resolve().parent / "panel"

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json",
}

# No inline script or style, nothing from elsewhere; the WebSocket goes back to where the page came from.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' ws: wss:; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = [
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]
# Revalidate every time (a cheap 304 thanks to the ETag): an upgraded daemon's panel shows at once.
CACHE_CONTROL = "no-cache"


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


class StaticFiles:
    """A read-only table of the panel's files."""

    def __init__(self, root: Path = PANEL_DIR) -> None:
        self.root = root.resolve()
        self.files: dict[str, StaticFile] = {}
        if self.root.is_dir():
            for path in sorted(self.root.iterdir()):
                content_type = TYPES.get(path.suffix.lower())
                if content_type is None or path.is_symlink() or not path.is_file():
                    continue
                if path.resolve().parent != self.root:
                    continue
                body = path.read_bytes()
                etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
                self.files[path.name] = StaticFile(body, content_type, etag)

    @property
    def total_bytes(self) -> int:
        return sum(len(f.body) for f in self.files.values())

    def lookup(self, raw_path: str) -> StaticFile | None:
        """The file a request path names, or None. ``/`` is ``index.html``."""
        path = unquote(raw_path.partition("?")[0].partition("#")[0])
        if not path.startswith("/") or "\\" in path or "\0" in path or ".." in path.split("/"):
            return None
        normal = posixpath.normpath(path)
        if normal == "/":
            return self.files.get("index.html")
        name = normal[1:]
        if "/" in name:
            return None
        return self.files.get(name)

    def response(self, request: Request) -> Response | None:
        """The response for *request*, or None when it names no panel file."""
        found = self.lookup(request.path)
        if found is None:
            return None
        common = [("ETag", found.etag), ("Cache-Control", CACHE_CONTROL), *SECURITY_HEADERS]
        if found.etag in (t.strip() for t in ",".join(request.headers.get_all("If-None-Match")).split(",")):
            status = HTTPStatus.NOT_MODIFIED
            return Response(status.value, status.phrase, Headers(common), b"")
        headers = Headers([("Content-Type", found.content_type), ("Content-Length", str(len(found.body))), *common])
        return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, found.body)

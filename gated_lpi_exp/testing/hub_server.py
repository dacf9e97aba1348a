"""A model-hub protocol server on a loopback port, serving local checkpoint series as hub repositories.

It answers what the ordinary ``huggingface_hub`` client asks, the way the hub does:

- ``GET /api/models/<repo>/refs``: branches with their head commits;
- ``GET /api/models/<repo>/revision/<rev>[?blobs=true]``: a revision's commit and files (sizes, git blob ids,
  LFS sha256);
- ``HEAD|GET /<repo>/resolve/<rev>/<path>``: a regular file with ``ETag`` (git blob id), ``X-Repo-Commit`` and
  ``Content-Length``; an LFS file as a 302 to a "CDN" host with ``X-Linked-Etag`` (sha256), ``X-Linked-Size``
  and ``X-Repo-Commit``; 404s with the hub's ``X-Error-Code`` (``EntryNotFound``, ``RevisionNotFound``) and
  401 ``RepoNotFound``;
- ``HEAD|GET /lfs/<sha256>`` on the CDN host (``localhost``, a different host name for the same loopback
  server, so the client treats it as the hub's off-host storage): the content, with byte ranges (206).

Point a client at it with ``HF_ENDPOINT=<server.url>``. Options for tests and benchmarks: a bandwidth limit
shared by all connections (one link), and faults keyed by a file's ETag: corrupted content (same size, one
byte flipped), failing requests, and connections dropped part-way. Every response is logged
(:attr:`HubServer.log`) so tests can check what was downloaded, and from which byte.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from gated_lpi_exp.testing.hub_repo import HubRepository, RepoFile, Revision

CHUNK = 64 * 1024


@dataclass
class Served:
    """One response of the server."""

    method: str
    path: str
    status: int
    etag: str | None = None
    """The content's ETag, for file bodies."""
    start: int = 0
    """First byte sent (a range request's start)."""
    sent: int = 0
    """Body bytes sent."""


class Throttle:
    """A link of ``rate`` bytes per second shared by every connection: each chunk books the next free slot."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self._lock = threading.Lock()
        self._free_at = time.monotonic()

    def wait(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            start = max(time.monotonic(), self._free_at)
            self._free_at = start + n / self.rate
            done = self._free_at
        time.sleep(max(0.0, done - time.monotonic()))


@dataclass
class Faults:
    """Misbehaviour to inject, keyed by a file's ETag (sha256 for LFS files, git blob id otherwise)."""

    corrupt: set[str] = field(default_factory=set)
    """Serve this content with one byte flipped (same size, so only a hash check can tell)."""
    fail: dict[str, int] = field(default_factory=dict)
    """Answer the next N downloads of this content with HTTP 500."""
    drop_after: dict[str, int] = field(default_factory=dict)
    """Close the connection of the next download of this content after this many bytes (once)."""


class HubServer:
    """Serve ``repos`` on ``127.0.0.1:<port>`` (0: a free port) in background threads.

    Args:
        repos: The repositories to serve.
        rate: Bandwidth limit in bytes per second for file bodies, shared by all connections; None = none.
        port: Port to listen on; 0 picks a free one.
    """

    def __init__(
        self, repos: HubRepository | list[HubRepository], *, rate: float | None = None, port: int = 0
    ):
        repo_list = repos if isinstance(repos, list) else [repos]
        self.repos = {r.repo_id: r for r in repo_list}
        self.throttle = Throttle(rate)
        self.faults = Faults()
        self.log: list[Served] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None
        self.port = self._httpd.server_address[1]
        if "127.0.0.1" not in {a[4][0] for a in socket.getaddrinfo("localhost", self.port)}:
            raise RuntimeError("localhost does not resolve to 127.0.0.1; the LFS 'CDN' host needs it")

    @property
    def url(self) -> str:
        """The endpoint to give the client (``HF_ENDPOINT``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering (a dead hub) and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def set_rate(self, rate: float | None) -> None:
        """Change the bandwidth limit (bytes per second; None = none)."""
        self.throttle = Throttle(rate)

    def bytes_served(self, etag: str) -> int:
        """Body bytes of this content sent so far, over all requests."""
        return sum(s.sent for s in self.log if s.etag == etag)

    def downloads(self, etag: str) -> list[Served]:
        """The GET requests that sent (part of) this content."""
        return [s for s in self.log if s.etag == etag and s.method == "GET" and s.status in (200, 206)]

    def lookup(self, sha256: str) -> RepoFile | None:
        for repo in self.repos.values():
            for revision in repo.revisions.values():
                for f in revision.files.values():
                    if f.is_lfs and f.sha256 == sha256:
                        return f
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args) -> None:  # noqa: A002  # the server is quiet
        pass

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        raw = urlsplit(self.path)
        query = parse_qs(raw.query)
        if raw.path.startswith("/api/models/"):
            return self._api(unquote(raw.path[len("/api/models/") :]), "blobs" in query)
        if raw.path.startswith("/lfs/"):
            found = self.hub.lookup(raw.path[len("/lfs/") :])
            return self._file(found) if found else self._error(404, "EntryNotFound", "no such object")
        if "/resolve/" in raw.path:
            repo_id, _, rest = raw.path.lstrip("/").partition("/resolve/")
            revision, _, filename = rest.partition("/")
            return self._resolve(unquote(repo_id), unquote(revision), unquote(filename))
        self._error(404, None, f"unknown path {raw.path}")

    def _repo(self, repo_id: str) -> HubRepository | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(401, "RepoNotFound", f"Repository Not Found for {repo_id}")
        return repo

    def _revision(self, repo: HubRepository, revision: str) -> Revision | None:
        found = repo.resolve(revision)
        if found is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return found

    def _api(self, rest: str, with_blobs: bool) -> None:
        if rest.endswith("/refs"):
            repo = self._repo(rest[: -len("/refs")])
            if repo is not None:
                branches = [
                    {"name": r.branch, "ref": f"refs/heads/{r.branch}", "targetCommit": r.commit}
                    for r in repo.revisions.values()
                ]
                self._json({"branches": branches, "tags": [], "converts": []})
            return
        repo_id, _, revision = rest.partition("/revision/")
        repo = self._repo(repo_id)
        found = repo and self._revision(repo, revision or "main")
        if repo and found:
            siblings = [f.sibling(with_blobs) for f in found.files.values()]
            self._json(
                {"id": repo.repo_id, "modelId": repo.repo_id, "sha": found.commit, "siblings": siblings}
            )

    def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
        repo = self._repo(repo_id)
        found = repo and self._revision(repo, revision)
        if not (repo and found):
            return
        f = found.files.get(filename)
        if f is None:
            return self._error(
                404, "EntryNotFound", f"{filename} does not exist", {"X-Repo-Commit": found.commit}
            )
        if not f.is_lfs:
            return self._file(f, {"X-Repo-Commit": found.commit})
        self._send(302, {
            "Location": f"http://localhost:{self.hub.port}/lfs/{f.sha256}",
            "ETag": f'"{f.git_id}"',
            "X-Linked-Etag": f'"{f.sha256}"',
            "X-Linked-Size": str(f.size),
            "X-Repo-Commit": found.commit,
            "Content-Length": "0",
        })  # fmt: skip
        self._log(302)

    def _file(self, f: RepoFile, extra: dict[str, str] | None = None) -> None:
        """A file's content (or the requested byte range of it), with the faults set for it."""
        faults = self.hub.faults
        if self.command == "GET" and faults.fail.get(f.etag, 0) > 0:
            faults.fail[f.etag] -= 1
            return self._error(500, None, "injected failure", etag=f.etag)
        start, end = _byte_range(self.headers.get("Range"), f.size)
        if start >= f.size and f.size:
            return self._error(416, None, "range not satisfiable")
        headers = {"ETag": f'"{f.etag}"', "Accept-Ranges": "bytes", "Content-Length": str(end - start)}
        headers["Content-Type"] = "application/octet-stream"
        if self.headers.get("Range"):
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        self._send(206 if self.headers.get("Range") else 200, {**headers, **(extra or {})})
        if self.command == "HEAD":
            return self._log(200, f.etag, start)
        sent = self._stream(f, start, end)
        self._log(206 if self.headers.get("Range") else 200, f.etag, start, sent)

    def _stream(self, f: RepoFile, start: int, end: int) -> int:
        faults, sent = self.hub.faults, 0
        drop_at = faults.drop_after.pop(f.etag, None)
        flip = f.size // 2 if f.etag in faults.corrupt else -1
        try:
            with f.source.open("rb") as fh:
                fh.seek(start)
                while start + sent < end:
                    block = bytearray(fh.read(min(CHUNK, end - start - sent)))
                    if start + sent <= flip < start + sent + len(block):
                        block[flip - start - sent] ^= 0xFF
                    if drop_at is not None and sent + len(block) > drop_at:
                        block = block[: max(0, drop_at - sent)]
                    self.hub.throttle.wait(len(block))
                    self.wfile.write(block)
                    sent += len(block)
                    if drop_at is not None and sent >= drop_at:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        break
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True  # the client went away (killed, or gave up)
        return sent

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self._send(200, {"Content-Type": "application/json", "Content-Length": str(len(data))})
        if self.command == "GET":
            self.wfile.write(data)
        self._log(200)

    def _error(
        self,
        status: int,
        code: str | None,
        message: str,
        extra: dict[str, str] | None = None,
        etag: str | None = None,
    ) -> None:
        data = json.dumps({"error": message}).encode()
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
            "X-Error-Message": message,
        }
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {**headers, **(extra or {})})
        if self.command == "GET":
            self.wfile.write(data)
        self._log(status, etag)

    def _send(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _log(self, status: int, etag: str | None = None, start: int = 0, sent: int = 0) -> None:
        self.hub.log.append(Served(self.command, self.path, status, etag, start, sent))


def _byte_range(header: str | None, size: int) -> tuple[int, int]:
    """``[start, end)`` of a ``Range: bytes=a-b`` / ``bytes=a-`` header (the whole file without one)."""
    if not header or not header.startswith("bytes="):
        return 0, size
    first, _, last = header[len("bytes=") :].split(",")[0].partition("-")
    if not first:  # a suffix range: the last N bytes
        return max(0, size - int(last)), size
    return int(first), min(size, int(last) + 1) if last else size

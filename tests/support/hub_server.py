"""A local HTTP server that speaks the Hugging Face Hub protocol, with fault injection, for tests and demos.

Two listeners on 127.0.0.1, like the Hub and its CDN (different origins, so clients drop the auth header
and HEAD stops at the redirect, as with the real Hub):

hub  GET  /api/{models,datasets,spaces}/{repo}[/revision/{rev}]   -> {"id", "sha", "siblings", ...}
     GET  /api/{type}s/{repo}/tree/{rev}[/{path}]?recursive=&expand= -> entries with oid, size, lfs.oid/size;
          paginated with a Link: <...>; rel="next" header (page_size entries per page)
     HEAD/GET /[datasets/|spaces/]{repo}/resolve/{rev}/{path}
          LFS file: 302 to the CDN with X-Repo-Commit, ETag, X-Linked-Etag (sha256), X-Linked-Size
          small file: 200 (206 for Range) with X-Repo-Commit, ETag (git blob sha1), Content-Length
cdn  HEAD/GET /blobs/{sha256}?expires=..&sig=..  -> bytes, Range -> 206 + Content-Range; expired -> 403

Faults (Fault objects in server.faults) apply to GETs of file bodies: drop the connection at byte offset N
of the file, stall there for some seconds (or until `release()`), corrupt bytes there (each only for a
response whose bytes include offset N), answer 500, ignore Range (200). The server
counts the body bytes it serves, per file path.

Run as a script to serve a folder of repos laid out as DIR/<org>/<name>/files...:
    python -m tests.support.hub_server --root DIR --port 8910 [--cdn-port 8911]
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.support.hub_repos import RepoFile, RepoStore

CHUNK = 64 * 1024
TYPE_PREFIX = {"datasets": "dataset", "spaces": "space"}


@dataclass
class Fault:
    """One injected failure. `path` is a glob on the file path in the repo; `times` counts down to 0."""

    kind: str  # "drop" | "stall" | "status500" | "ignore_range" | "corrupt"
    path: str = "*"
    after: int = 0  # body offset in the file where drop/stall/corrupt happens
    times: int = 1
    seconds: float = 0.0  # stall length; 0 means until release()
    length: int = 16  # corrupted bytes


class HubServer:
    """The test Hub. Use as a context manager; `endpoint` is the URL to give to clients."""

    def __init__(self, store: RepoStore | None = None, *, port: int = 0, cdn_port: int = 0,
                 token: str | None = None, page_size: int = 1000, url_ttl: float = 3600,
                 rate_per_connection: float | None = None) -> None:
        self.store = store or RepoStore()
        self.rate = rate_per_connection  # bytes/s of one response body, like a CDN that limits each connection
        self.token = token
        self.page_size = page_size
        self.url_ttl = url_ttl
        self.faults: list[Fault] = []
        self.bytes_served: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None, int]] = []  # (method, path, Range, status)
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.hub = ThreadingHTTPServer(("127.0.0.1", port), _handler(self, "hub"))
        self.cdn = ThreadingHTTPServer(("127.0.0.1", cdn_port), _handler(self, "cdn"))
        for srv in (self.hub, self.cdn):
            srv.daemon_threads = True
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self.hub, self.cdn)]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.hub.server_address[1]}"

    @property
    def cdn_base(self) -> str:
        return f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def start(self) -> "HubServer":
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        for srv in (self.hub, self.cdn):
            srv.shutdown()
            srv.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_fault(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    def release(self) -> None:
        """End every stall that waits for release (the connection is then closed)."""
        self.released.set()

    def served(self, path: str | None = None) -> int:
        with self.lock:
            return sum(self.bytes_served.values()) if path is None else self.bytes_served.get(path, 0)

    def reset_counters(self) -> None:
        with self.lock:
            self.bytes_served.clear()
            self.requests.clear()

    def take_fault(self, path: str, kinds: tuple[str, ...], span: tuple[int, int] | None = None) -> Fault | None:
        """The first matching fault with uses left; with `span`, only one whose offset lies in the bytes sent."""
        with self.lock:
            for fault in self.faults:
                if span is not None and not span[0] <= fault.after < max(span[1], span[0] + 1):
                    continue
                if fault.kind in kinds and fault.times > 0 and fnmatch.fnmatch(path, fault.path):
                    fault.times -= 1
                    return fault
        return None

    def count(self, path: str, n: int) -> None:
        with self.lock:
            self.bytes_served[path] = self.bytes_served.get(path, 0) + n

    def sign(self, sha256: str, expires: int) -> str:
        return hashlib.sha256(f"{sha256}:{expires}:{id(self)}".encode()).hexdigest()[:32]


def _handler(server: HubServer, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        hub = server
        kind = role

    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer
    kind: str

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep the test output quiet
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # clients hang up mid-transfer on purpose in these tests

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if self.kind == "cdn":
                self._cdn(path, query, head)
            elif path.startswith("/api/"):
                self._api(path, query, url.query)
            else:
                self._resolve(path, head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # --- responses ---------------------------------------------------------------------------------------
    def _send(self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False) -> None:
        self._log(status)
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": "application/json", **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
            headers["X-Error-Message"] = message
        self._send(status, headers, json.dumps({"error": message}).encode())

    def _log(self, status: int) -> None:
        with self.hub.lock:
            self.hub.requests.append((self.command, self.path, self.headers.get("Range"), status))

    def _authorized(self) -> bool:
        return self.hub.token is None or self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    # --- API ---------------------------------------------------------------------------------------------
    def _api(self, path: str, query: dict[str, str], raw_query: str) -> None:
        match = re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+|[^/]+)(?:/(revision|tree)/([^/]+)(/.*)?)?",
                             path)
        if not match:
            return self._error(404, None, "not found")
        plural, repo_id, action, revision, sub = match.groups()
        if not self._authorized():
            return self._error(401, "RepoNotFound", "Invalid credentials in Authorization header")
        repo, commit = self.hub.store.resolve(plural[:-1], repo_id, revision or "main")
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if action == "tree":
            return self._tree(repo, commit, sub or "", query, raw_query)
        files = self.hub.store.repos[(repo.repo_type, repo_id)].commits[commit]
        info = {"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "private": False,
                "sha": commit, "disabled": False, "gated": False, "tags": [], "downloads": 0, "likes": 0,
                "siblings": [{"rfilename": p} for p in sorted(files)]}
        self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode())

    def _tree(self, repo, commit: str, sub: str, query: dict[str, str], raw_query: str) -> None:
        recursive = query.get("recursive", "false").lower() == "true"
        entries = self.hub.store.tree(repo, commit, sub, recursive)
        start = int(query.get("cursor", "0"))
        page = entries[start : start + self.hub.page_size]
        headers = {"Content-Type": "application/json"}
        if start + self.hub.page_size < len(entries):
            base = f"{self.hub.endpoint}{quote(urlsplit(self.path).path)}"
            rest = "&".join(p for p in raw_query.split("&") if p and not p.startswith("cursor="))
            headers["Link"] = f'<{base}?{rest}&cursor={start + self.hub.page_size}>; rel="next"'
        self._send(200, headers, json.dumps(page).encode())

    # --- resolve -----------------------------------------------------------------------------------------
    def _resolve(self, path: str, head: bool) -> None:
        parts = path.lstrip("/").split("/")
        repo_type = TYPE_PREFIX.get(parts[0], "model")
        if repo_type != "model":
            parts = parts[1:]
        try:
            at = parts.index("resolve")
        except ValueError:
            return self._error(404, None, "not found")
        repo_id, revision, file_path = "/".join(parts[:at]), parts[at + 1], "/".join(parts[at + 2 :])
        if not self._authorized():
            return self._error(401, "RepoNotFound", "Invalid credentials in Authorization header")
        repo, commit = self.hub.store.resolve(repo_type, repo_id, revision)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        file = repo.commits[commit].get(file_path)
        if file is None:
            return self._error(404, "EntryNotFound", f"Entry not found: {file_path}", {"X-Repo-Commit": commit})
        store = self.hub.store
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if store.is_lfs(file):
            expires = int(time.time() + self.hub.url_ttl)
            location = (f"{self.hub.cdn_base}/blobs/{file.sha256}?expires={expires}"
                        f"&sig={self.hub.sign(file.sha256, expires)}")
            headers.update({"Location": location, "ETag": f'"{store.blob_id(file)}"',
                            "X-Linked-Etag": f'"{file.sha256}"', "X-Linked-Size": str(file.size)})
            return self._send(302, headers, head=head)
        headers["ETag"] = f'"{file.content_blob_sha1}"'
        self._body(file, headers, head)

    def _cdn(self, path: str, query: dict[str, str], head: bool) -> None:
        match = re.fullmatch(r"/blobs/([0-9a-f]{64})", path)
        if not match:
            return self._error(404, None, "not found")
        sha256 = match.group(1)
        expires = int(query.get("expires", "0"))
        if query.get("sig") != self.hub.sign(sha256, expires) or expires < time.time():
            return self._error(403, None, "Request has expired")
        file = self.hub.store.find_blob(sha256)
        if file is None:
            return self._error(404, None, "no such blob")
        self._body(file, {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"}, head)

    # --- bodies with faults ------------------------------------------------------------------------------
    def _body(self, file: RepoFile, headers: dict[str, str], head: bool) -> None:
        hub, size = self.hub, file.size
        headers["Content-Type"] = "application/octet-stream"
        if not head and hub.take_fault(file.path, ("status500",)):
            return self._error(500, None, "Internal Error (injected)")
        start, end, status = 0, size - 1, 200
        wanted = self.headers.get("Range")
        ignore = not head and wanted and hub.take_fault(file.path, ("ignore_range",))
        if_range = self.headers.get("If-Range")
        if wanted and if_range and if_range.strip('"') != headers.get("ETag", "").strip('"'):
            ignore = True  # RFC 9110: the representation changed, send all of it
        if wanted and not ignore:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
            if not match or int(match.group(1)) >= size and size > 0:
                return self._error(416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1)
        self._log(status)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        fault = hub.take_fault(file.path, ("drop", "stall", "corrupt"), (start, end + 1))
        self._stream(file, start, end + 1, fault)

    def _stream(self, file: RepoFile, start: int, stop: int, fault: Fault | None) -> None:
        began = time.monotonic()
        with file.open() as fh:
            fh.seek(start)
            offset = start
            while offset < stop:
                limit = stop
                if fault and fault.kind in ("drop", "stall") and offset < fault.after:
                    limit = min(stop, fault.after)
                block = fh.read(min(CHUNK, limit - offset))
                if fault and fault.kind == "corrupt" and offset < fault.after + fault.length \
                        and offset + len(block) > fault.after:
                    block = _flip(block, fault.after - offset, fault.length)
                if block:
                    self.wfile.write(block)
                    self.hub.count(file.path, len(block))
                    offset += len(block)
                    if self.hub.rate:
                        time.sleep(max(0.0, began + (offset - start) / self.hub.rate - time.monotonic()))
                if fault and fault.kind in ("drop", "stall") and offset >= fault.after:
                    self.wfile.flush()
                    if fault.kind == "drop":
                        self.close_connection = True
                        return
                    if fault.seconds:
                        time.sleep(fault.seconds)
                    else:
                        self.hub.released.wait(600)
                        self.close_connection = True
                        return
                    fault = None
                if not block:
                    break


def _flip(block: bytes, at: int, length: int) -> bytes:
    data = bytearray(block)
    for i in range(max(at, 0), min(at + length, len(data))):
        data[i] ^= 0xFF
    return bytes(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a folder of repos (DIR/<org>/<name>/...) over the Hub protocol.")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cdn-port", type=int, default=0)
    parser.add_argument("--lfs-threshold", type=int, default=64 * 1024)
    args = parser.parse_args(argv)
    store = RepoStore(lfs_threshold=args.lfs_threshold)
    store.add_folder(args.root)
    with HubServer(store, port=args.port, cdn_port=args.cdn_port) as server:
        print(f"serving {len(store.repos)} repos at {server.endpoint} (cdn {server.cdn_base})", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

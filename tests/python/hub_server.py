"""A local HTTP server that answers like the Hugging Face hub's resolve URLs, for download tests.

  HEAD/GET /<org>/<name>/resolve/<revision>/<file>
    200 with X-Repo-Commit, ETag (git blob sha1 for small files; the sha256 as X-Linked-Etag for "LFS" files,
    i.e. *.safetensors / *.bin), X-Linked-Size / Content-Length; GET honours Range (206).
Behaviours the tests switch on through attributes: `private` repos answer 401 without the right Bearer token,
`cut_after` closes the connection after that many body bytes of the next GET (once), `corrupt` serves flipped
bytes for a file, `status` forces an HTTP status for a path, `requests` records (method, path, Range).
"""
from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin")


class Hub:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # id -> {"commit": str, "files": {name: bytes}, "refs": {rev: commit}}
        self.private: dict[str, str] = {}  # id -> token
        self.cut_after: int | None = None
        self.corrupt: set[str] = set()
        self.status: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []

    def add_repo(self, repo_id: str, folder: Path, commit: str, refs=("main",)):
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
                 if p.is_file() and not p.name.startswith(".")}
        self.repos[repo_id] = {"commit": commit, "files": files, "refs": {r: commit for r in refs}}

    def handler(self):
        hub = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _resolve(self):
                parts = self.path.split("/")
                # ['', org, name, 'resolve', rev, file...]
                if len(parts) < 6 or parts[3] != "resolve":
                    return None, 404
                repo_id, rev, name = f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:])
                if self.path in hub.status:
                    return None, hub.status[self.path]
                if repo_id in hub.private and self.headers.get("Authorization") != f"Bearer {hub.private[repo_id]}":
                    return None, 401
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return None, 404
                commit = repo["refs"].get(rev, rev if rev == repo["commit"] else None)
                if commit is None or name not in repo["files"]:
                    return None, 404
                return (repo, name), 200

            def _headers_for(self, repo, name, data):
                self.send_header("X-Repo-Commit", repo["commit"])
                if name.endswith(LFS_SUFFIXES):
                    self.send_header("X-Linked-Etag", '"' + hashlib.sha256(data).hexdigest() + '"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')

            def do_HEAD(self):
                hub.requests.append(("HEAD", self.path, None))
                found, status = self._resolve()
                self.send_response(status)
                if found:
                    repo, name = found
                    data = repo["files"][name]
                    self._headers_for(repo, name, data)
                    self.send_header("Content-Length", str(len(data)))
                else:
                    self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                rng = self.headers.get("Range")
                hub.requests.append(("GET", self.path, rng))
                found, status = self._resolve()
                if not found:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                repo, name = found
                data = repo["files"][name]
                body = bytes(b ^ 0xFF for b in data) if name in hub.corrupt else data
                start = 0
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self._headers_for(repo, name, data)
                chunk = body[start:]
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                if hub.cut_after is not None and len(chunk) > hub.cut_after:
                    n, hub.cut_after = hub.cut_after, None
                    self.wfile.write(chunk[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(chunk)

        return H

    def start(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

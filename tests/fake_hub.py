"""A fake Hugging Face Hub: a threaded local HTTP server with the endpoints huggingface_hub 2.x calls.

``snapshot_download`` asks ``GET /api/models/{repo}/revision/{rev}`` (the commit ``sha`` and the
``siblings``) and ``GET /api/models/{repo}/tree/{commit}`` (the file list), then per file
``HEAD`` and ``GET /{repo}/resolve/{commit}/{file}`` (``ETag``, ``X-Repo-Commit``,
``Content-Length``; a ``Range`` request to resume). Unknown repos and revisions answer 404 with
the ``X-Error-Code`` the real Hub sends (``RepoNotFound``, ``RevisionNotFound``), which
huggingface_hub turns into its typed errors.

The ``fake_hub`` fixture (:func:`fake_hub_fixture`; import it into a test module) points huggingface_hub at the server (its ``constants.ENDPOINT`` and
URL template, read at call time; the ``HF_ENDPOINT`` variable is read only when huggingface_hub
is imported), puts its cache and vlmzoo's under ``tmp_path``, and stops the server afterwards.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest


class FakeHub:
    """Repos as commits of files (bytes), served by :meth:`serve`."""

    def __init__(self) -> None:
        self.commits: dict[str, dict[str, bytes]] = {}
        self.refs: dict[str, dict[str, str]] = {}  # repo -> branch -> commit
        self.drop_once: set[tuple[str, str]] = set()  # (repo, file): cut the next full GET halfway
        self.broken: set[str] = set()  # repos whose file downloads answer 500
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.url = ""

    def push(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """A new commit of ``repo_id`` holding ``files``, which ``branch`` now points at; its hash."""
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha1(files[name]).digest())
        digest.update(str(len(self.commits)).encode())
        commit = digest.hexdigest()
        self.commits[commit] = dict(files)
        self.refs.setdefault(repo_id, {})[branch] = commit
        return commit

    def push_folder(self, repo_id: str, folder: Path, branch: str = "main") -> str:
        """:meth:`push` of every file under ``folder`` (names relative to it)."""
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.push(repo_id, files, branch)

    def downloads(self, repo_id: str) -> list[str]:
        """The files of ``repo_id`` fetched with GET so far."""
        prefix = f"/{repo_id}/resolve/"
        paths = [
            path[len(prefix) :]
            for method, path, _ in self.requests
            if method == "GET" and path.startswith(prefix)
        ]
        return [path.split("/", 1)[1] for path in paths]

    def _commit(self, repo_id: str, revision: str) -> str | None:
        if revision in self.commits and revision in self.refs.get(repo_id, {}).values():
            return revision
        return self.refs.get(repo_id, {}).get(revision)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._answer(body=True)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def _json(self, document: object, status: int = 200, error: str | None = None) -> None:
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if error:
                    self.send_header("X-Error-Code", error)
                    self.send_header(
                        "X-Error-Message", document.get("error", "") if isinstance(document, dict) else ""
                    )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _answer(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                if (
                    path == "/api/agent-harnesses"
                ):  # huggingface_hub's user-agent registry, not a repo request
                    return self._json({"error": "not found"}, 404)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                if path.startswith("/api/models/"):
                    return self._api(path[len("/api/models/") :])
                if "/resolve/" in path:
                    repo_id, rest = path.lstrip("/").split("/resolve/", 1)
                    revision, _, name = rest.partition("/")
                    return self._file(repo_id, revision, name, body)
                self._json({"error": "not found"}, 404)

            def _api(self, rest: str) -> None:
                for marker in ("/revision/", "/tree/"):
                    if marker in rest:
                        repo_id, revision = rest.split(marker, 1)
                        revision = revision.split("/", 1)[0]
                        break
                else:
                    return self._json({"error": "not found"}, 404)
                if repo_id not in hub.refs:
                    return self._json({"error": "Repository not found"}, 404, "RepoNotFound")
                commit = hub._commit(repo_id, revision)
                if commit is None:
                    return self._json({"error": f"Invalid rev id: {revision}"}, 404, "RevisionNotFound")
                files = hub.commits[commit]
                if marker == "/tree/":
                    tree = [
                        {
                            "type": "file",
                            "oid": hashlib.sha1(data).hexdigest(),
                            "size": len(data),
                            "path": name,
                        }
                        for name, data in sorted(files.items())
                    ]
                    return self._json(tree)
                return self._json(
                    {
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": commit,
                        "private": False,
                        "tags": [],
                        "siblings": [{"rfilename": name} for name in sorted(files)],
                    }
                )

            def _file(self, repo_id: str, revision: str, name: str, body: bool) -> None:
                commit = hub._commit(repo_id, revision) if repo_id in hub.refs else None
                if commit is None or name not in hub.commits[commit]:
                    return self._json({"error": "Entry not found"}, 404, "EntryNotFound")
                if repo_id in hub.broken:
                    return self._json({"error": "Internal Error"}, 500)
                data = hub.commits[commit][name]
                start, status = 0, 200
                ranged = self.headers.get("Range")
                if ranged and ranged.startswith("bytes="):
                    start, status = int(ranged[len("bytes=") :].split("-")[0]), 206
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", commit)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                if (repo_id, name) in hub.drop_once and start == 0:
                    hub.drop_once.discard((repo_id, name))
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # the transfer is cut in the middle
                    return
                self.wfile.write(data[start:])

        return Handler


@pytest.fixture(name="fake_hub")
def fake_hub_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running :class:`FakeHub` that huggingface_hub talks to; both caches under ``tmp_path``."""
    from huggingface_hub import constants

    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), hub.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("VLMZOO_CACHE", str(tmp_path / "vlmzoo-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()

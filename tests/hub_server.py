"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for push-then-pull tests.

It implements the part of the Hub's HTTP API that ``huggingface_hub`` (2.x, with
``HF_HUB_DISABLE_XET=1``) uses to create a repo, commit a folder and download it again:

* ``POST /api/repos/create``; ``GET /api/whoami-v2``;
* ``POST /api/validate-yaml``: the README front matter must be a YAML mapping and its
  ``model-index`` well formed (task type, dataset type and name, metric type and value);
* ``POST /api/models/{repo}/preupload/{rev}``: ``lfs`` for binary suffixes, else ``regular``;
* ``POST /{repo}.git/info/lfs/objects/batch``, ``PUT /lfs-objects/{sha256}`` (single-part basic
  transfer, body by ``Content-Length`` or chunked), ``POST /lfs-verify``;
* ``POST /api/models/{repo}/commit/{rev}``: the NDJSON payload (``header``, ``file`` in base64,
  ``lfsFile`` by sha256 of an uploaded object, ``deletedFile``, ``deletedFolder``);
* ``GET /api/models/{repo}[/revision/{rev}]`` with ``siblings`` and ``cardData``;
  ``GET /api/models/{repo}/tree/{rev}[/{path}]``;
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with the headers ``hf_hub_download`` checks:
  ``X-Repo-Commit``, ``ETag`` (git blob sha1, or sha256 for LFS files, also sent as
  ``X-Linked-Etag``/``X-Linked-Size``) and ``Content-Length``; missing things answer 404 with
  ``X-Error-Code`` ``RepoNotFound``, ``RevisionNotFound`` or ``EntryNotFound``.

Writes need ``Authorization: Bearer <token>``; private repos need it for reads too. Only the
``main`` branch exists; any earlier commit sha is a valid revision.

``huggingface_hub`` reads ``HF_ENDPOINT`` and friends once, at import, and a module-level
``HfApi`` keeps the endpoint it saw then (as do transformers and timm through it), so the
clients of this server run in a fresh subprocess with :meth:`LoopbackHub.client_env` in its
environment. :meth:`LoopbackHub.add_folder` seeds a repo in-process, for tests whose subject
is not the upload itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.hub_metadata import front_matter, metadata_errors

logger = logging.getLogger(__name__)

USER_NAME = "hf-kd-tester"
TOKEN = "hf_loopback_test_token"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".png", ".jpg", ".jpeg", ".parquet")
LFS_POINTER_SIZE = 134  # a git-lfs pointer file for a sha256 oid is ~134 bytes
MAIN = "main"


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a blob: ``sha1(b"blob <size>\\0" + content)``."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass(frozen=True)
class StoredFile:
    content: bytes
    is_lfs: bool

    @property
    def blob_id(self) -> str:
        return git_blob_sha1(self.content)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.is_lfs else self.blob_id


@dataclass(frozen=True)
class Commit:
    oid: str
    title: str
    files: dict[str, StoredFile]
    date: datetime


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def commit_at(self, revision: str) -> Commit | None:
        if revision == MAIN:
            return self.head
        return next((commit for commit in self.commits if commit.oid == revision), None)


class HubError(Exception):
    """An HTTP error answer, with the ``X-Error-Code`` header ``huggingface_hub`` dispatches on,
    and ``details`` added to its JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        error_code: str | None = None,
        commit: str = "",
        details: dict | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.commit = commit
        self.details = details or {}


class LoopbackHub:
    """The server's state (repos, LFS objects) and its lifecycle; use as a context manager."""

    def __init__(self, token: str = TOKEN, user: str = USER_NAME):
        self.token = token
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._commit_counter = 0
        # A slow link: every preupload call (made after the client has hashed the files it
        # will send, before it sends them) waits this long, without blocking other requests.
        self.preupload_delay_s = 0.0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def client_env(self, hf_home: Path) -> dict[str, str]:
        """Environment variables that point ``huggingface_hub`` (and timm, transformers) here."""
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(hf_home / "hub"),
            "HF_TOKEN": self.token,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0",
        }

    def read_file(self, repo_id: str, path: str, revision: str = MAIN) -> bytes:
        """A file's content at ``revision``, read straight from the server state."""
        with self._lock:
            commit = self._repo(repo_id).commit_at(revision)
            if commit is None or path not in commit.files:
                raise KeyError(f"{repo_id}@{revision}: no file {path!r}")
            return commit.files[path].content

    def files(self, repo_id: str, revision: str = MAIN) -> dict[str, StoredFile]:
        with self._lock:
            commit = self._repo(repo_id).commit_at(revision)
            if commit is None:
                raise KeyError(f"{repo_id}: no revision {revision!r}")
            return dict(commit.files)

    def add_folder(self, repo_id: str, folder: Path, *, private: bool = False) -> str:
        """Create ``repo_id`` holding the files of ``folder`` (no HTTP); returns the commit."""
        with self._lock:
            namespace, name = repo_id.split("/")
            visibility = "private" if private else "public"
            self.create_repo({"name": name, "organization": namespace, "visibility": visibility})
            repo = self.repos[repo_id]
            files = dict(repo.head.files)
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    relative = path.relative_to(folder).as_posix()
                    files[relative] = StoredFile(
                        path.read_bytes(), is_lfs=relative.lower().endswith(LFS_SUFFIXES)
                    )
            oid = self._new_commit_oid(repo_id, "seed")
            repo.commits.append(Commit(oid, "seed", files, datetime.now(timezone.utc)))
            return oid

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _new_commit_oid(self, repo_id: str, title: str) -> str:
        self._commit_counter += 1
        return hashlib.sha1(f"{repo_id}\n{title}\n{self._commit_counter}".encode()).hexdigest()

    # -- API operations, each called with the lock held -------------------------------------

    def create_repo(self, payload: dict) -> dict:
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, "this loopback Hub only hosts model repos")
        name = payload.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
            raise HubError(400, f"invalid repo name {name!r}")
        repo_id = f"{payload.get('organization') or self.user}/{name}"
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self.repos:
            # as the Hub: create_repo(exist_ok=True) reads the url from this 409 answer
            raise HubError(409, "You already created this model repo", details={"url": url})
        repo = Repo(repo_id, private=payload.get("visibility") == "private")
        repo.commits.append(
            Commit(
                self._new_commit_oid(repo_id, "initial commit"),
                "initial commit",
                {".gitattributes": StoredFile(b"*.safetensors filter=lfs\n", is_lfs=False)},
                datetime.now(timezone.utc),
            )
        )
        self.repos[repo_id] = repo
        return {"url": url, "name": repo_id, "id": repo_id}

    def preupload(self, repo: Repo, payload: dict) -> dict:
        files = []
        for entry in payload.get("files", []):
            path = entry["path"]
            is_lfs = path.lower().endswith(LFS_SUFFIXES) and entry.get("size", 0) > 0
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if is_lfs else "regular",
                    "shouldIgnore": False,
                    "oid": None,
                }
            )
        return {"files": files, "commitOid": repo.head.oid}

    def lfs_batch(self, payload: dict) -> dict:
        if payload.get("operation") != "upload":
            raise HubError(400, "only the 'upload' LFS operation is supported")
        objects = []
        for entry in payload.get("objects", []):
            oid, size = entry["oid"], entry["size"]
            answer: dict = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.lfs_objects:
                answer["actions"] = {
                    "upload": {"href": f"{self.endpoint}/lfs-objects/{oid}", "header": {}},
                    "verify": {"href": f"{self.endpoint}/lfs-verify", "header": {}},
                }
            objects.append(answer)
        return {"transfer": "basic", "objects": objects}

    def store_lfs_object(self, oid: str, content: bytes) -> None:
        if hashlib.sha256(content).hexdigest() != oid:
            raise HubError(400, f"uploaded content does not hash to {oid}")
        self.lfs_objects[oid] = content

    def commit(self, repo: Repo, revision: str, ndjson: bytes) -> dict:
        if revision != MAIN:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        lines = [json.loads(line) for line in ndjson.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        title = header.get("summary") or ""
        if not title:
            raise HubError(400, "the commit needs a summary")
        parent = header.get("parentCommit")
        if parent is not None and parent != repo.head.oid:
            raise HubError(412, f"parent commit {parent} is not the head {repo.head.oid}")
        files = dict(repo.head.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unsupported encoding for {path}")
                files[path] = StoredFile(base64.b64decode(value["content"]), is_lfs=False)
            elif key == "lfsFile":
                content = self.lfs_objects.get(value["oid"])
                if content is None or len(content) != value.get("size", len(content)):
                    raise HubError(422, f"LFS object {value['oid']} for {path} was not uploaded")
                files[path] = StoredFile(content, is_lfs=True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                files = {name: f for name, f in files.items() if not name.startswith(prefix)}
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        oid = self._new_commit_oid(repo.repo_id, title)
        repo.commits.append(Commit(oid, title, files, datetime.now(timezone.utc)))
        return {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self.endpoint}/{repo.repo_id}/commit/{oid}",
            "pullRequestUrl": None,
        }

    def model_info(self, repo: Repo, commit: Commit) -> dict:
        readme = commit.files.get("README.md")
        card_data = front_matter(readme.content.decode()) if readme is not None else {}
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date.isoformat().replace("+00:00", "Z"),
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": card_data.get("tags", []),
            "pipeline_tag": card_data.get("pipeline_tag"),
            "library_name": card_data.get("library_name"),
            "cardData": card_data,
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    def tree(self, commit: Commit, path: str, recursive: bool) -> list[dict]:
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries: dict[str, dict] = {}
        for name, stored in sorted(commit.files.items()):
            if not name.startswith(prefix):
                continue
            relative_parts = name[len(prefix) :].split("/")
            for depth in range(1, len(relative_parts)):
                folder = prefix + "/".join(relative_parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(
                        folder,
                        {
                            "type": "directory",
                            "oid": hashlib.sha1(folder.encode()).hexdigest(),
                            "path": folder,
                        },
                    )
            if recursive or len(relative_parts) == 1:
                entry = {
                    "type": "file",
                    "oid": stored.blob_id,
                    "size": len(stored.content),
                    "path": name,
                }
                if stored.is_lfs:
                    entry["lfs"] = {
                        "oid": stored.sha256,
                        "size": len(stored.content),
                        "pointerSize": LFS_POINTER_SIZE,
                    }
                entries[name] = entry
        if prefix and not entries:
            raise HubError(404, f"{path} does not exist", "EntryNotFound", commit.oid)
        return list(entries.values())


def _make_handler(hub: LoopbackHub) -> type[BaseHTTPRequestHandler]:
    class HubRequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 60  # idle keep-alive connections end instead of holding a thread forever

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("loopback hub: " + format, *args)

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        # -- plumbing -------------------------------------------------------------------------

        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            body = self._read_body()
            if "/preupload/" in url.path:
                time.sleep(hub.preupload_delay_s)
            try:
                with hub._lock:
                    status, payload, headers = self._route(method, url.path, url.query, body)
            except HubError as error:
                status, headers = error.status, {}
                if error.error_code:
                    headers["X-Error-Code"] = error.error_code
                if error.commit:
                    headers["X-Repo-Commit"] = error.commit
                headers["X-Error-Message"] = error.message
                payload = json.dumps({"error": error.message, **error.details}).encode()
                headers["Content-Type"] = "application/json"
            hub.requests.append((method, url.path, status))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(payload)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return b"".join(self._read_chunks())
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _read_chunks(self) -> Iterator[bytes]:
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():  # optional trailers, then the blank line
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline()

        def _authorized(self) -> bool:
            return self.headers.get("Authorization", "") == f"Bearer {hub.token}"

        def _require_auth(self) -> None:
            if not self._authorized():
                raise HubError(401, "Invalid credentials in Authorization header")

        def _readable_repo(self, repo_id: str) -> Repo:
            repo = hub._repo(repo_id)
            if repo.private and not self._authorized():
                raise HubError(401, f"Repository {repo_id} not found", "RepoNotFound")
            return repo

        def _commit(self, repo: Repo, revision: str) -> Commit:
            commit = repo.commit_at(unquote(revision))
            if commit is None:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return commit

        @staticmethod
        def _json(payload: object, status: int = 200) -> tuple[int, bytes, dict[str, str]]:
            return status, json.dumps(payload).encode(), {"Content-Type": "application/json"}

        # -- routes ---------------------------------------------------------------------------

        def _route(
            self, method: str, path: str, query: str, body: bytes
        ) -> tuple[int, bytes, dict[str, str]]:
            repo_pattern = r"(?P<repo>[\w.-]+/[\w.-]+)"
            routes = [
                ("POST", r"/api/repos/create", self._create_repo),
                ("GET", r"/api/whoami-v2", self._whoami),
                ("POST", r"/api/validate-yaml", self._validate_yaml),
                ("POST", rf"/api/models/{repo_pattern}/preupload/(?P<rev>[^/]+)", self._preupload),
                ("POST", rf"/api/models/{repo_pattern}/commit/(?P<rev>[^/]+)", self._commit_files),
                (
                    "GET",
                    rf"/api/models/{repo_pattern}/tree/(?P<rev>[^/]+)(?P<path>/.*)?",
                    self._tree,
                ),
                ("GET", rf"/api/models/{repo_pattern}(/revision/(?P<rev>[^/]+))?", self._info),
                ("POST", rf"/{repo_pattern}\.git/info/lfs/objects/batch", self._lfs_batch),
                ("PUT", r"/lfs-objects/(?P<oid>[0-9a-f]{64})", self._lfs_upload),
                ("POST", r"/lfs-verify", self._lfs_verify),
                ("GET", rf"/{repo_pattern}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve),
                ("HEAD", rf"/{repo_pattern}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve),
            ]
            for route_method, pattern, handler in routes:
                match = re.fullmatch(pattern, path)
                if route_method == method and match is not None:
                    params = {k: v for k, v in match.groupdict().items() if v is not None}
                    return handler(body=body, query=parse_qs(query), **params)
            raise HubError(404, f"no route for {method} {path}")

        def _create_repo(self, body: bytes, query: dict) -> tuple[int, bytes, dict[str, str]]:
            self._require_auth()
            return self._json(hub.create_repo(json.loads(body)))

        def _whoami(self, body: bytes, query: dict) -> tuple[int, bytes, dict[str, str]]:
            self._require_auth()
            return self._json(
                {"type": "user", "name": hub.user, "orgs": [], "auth": {"type": "access_token"}}
            )

        def _validate_yaml(self, body: bytes, query: dict) -> tuple[int, bytes, dict[str, str]]:
            errors = metadata_errors(json.loads(body)["content"])
            payload = {"errors": [{"message": message} for message in errors], "warnings": []}
            return self._json(payload, status=400 if errors else 200)

        def _preupload(
            self, body: bytes, query: dict, repo: str, rev: str
        ) -> tuple[int, bytes, dict[str, str]]:
            self._require_auth()
            return self._json(hub.preupload(hub._repo(repo), json.loads(body)))

        def _commit_files(
            self, body: bytes, query: dict, repo: str, rev: str
        ) -> tuple[int, bytes, dict[str, str]]:
            self._require_auth()
            if query.get("create_pr"):
                raise HubError(400, "pull requests are not supported by the loopback Hub")
            return self._json(hub.commit(hub._repo(repo), unquote(rev), body))

        def _tree(
            self, body: bytes, query: dict, repo: str, rev: str, path: str = ""
        ) -> tuple[int, bytes, dict[str, str]]:
            commit = self._commit(self._readable_repo(repo), rev)
            recursive = query.get("recursive", ["False"])[0].lower() in ("1", "true")
            return self._json(hub.tree(commit, unquote(path), recursive))

        def _info(
            self, body: bytes, query: dict, repo: str, rev: str = MAIN
        ) -> tuple[int, bytes, dict[str, str]]:
            readable = self._readable_repo(repo)
            return self._json(hub.model_info(readable, self._commit(readable, rev)))

        def _lfs_batch(
            self, body: bytes, query: dict, repo: str
        ) -> tuple[int, bytes, dict[str, str]]:
            self._require_auth()
            hub._repo(repo)
            status, payload, _ = self._json(hub.lfs_batch(json.loads(body)))
            return status, payload, {"Content-Type": "application/vnd.git-lfs+json"}

        def _lfs_upload(
            self, body: bytes, query: dict, oid: str
        ) -> tuple[int, bytes, dict[str, str]]:
            hub.store_lfs_object(oid, body)
            return 200, b"", {}

        def _lfs_verify(self, body: bytes, query: dict) -> tuple[int, bytes, dict[str, str]]:
            self._require_auth()
            request = json.loads(body)
            content = hub.lfs_objects.get(request["oid"])
            if content is None or len(content) != request["size"]:
                raise HubError(404, f"LFS object {request['oid']} is missing")
            return self._json({"success": True})

        def _resolve(
            self, body: bytes, query: dict, repo: str, rev: str, path: str
        ) -> tuple[int, bytes, dict[str, str]]:
            commit = self._commit(self._readable_repo(repo), rev)
            stored = commit.files.get(unquote(path))
            if stored is None:
                raise HubError(404, f"{path} not found", "EntryNotFound", commit.oid)
            headers = {
                "X-Repo-Commit": commit.oid,
                "ETag": f'"{stored.etag}"',
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "none",
            }
            if stored.is_lfs:
                headers["X-Linked-Etag"] = f'"{stored.sha256}"'
                headers["X-Linked-Size"] = str(len(stored.content))
            return 200, stored.content, headers

    return HubRequestHandler


@pytest.fixture(scope="module")
def loopback_hub() -> Iterator[LoopbackHub]:
    """A running :class:`LoopbackHub`, shared by a test module (tests use distinct repo ids).

    Clients run in subprocesses started with ``env={**os.environ, **hub.client_env(home)}``
    and a temporary ``home``, so nothing touches the user's cache, token or environment.
    """
    with LoopbackHub() as hub:
        yield hub

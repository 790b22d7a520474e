"""A fake Hugging Face Hub on localhost, for testing uploads with the real client.

It speaks the HTTP routes ``huggingface_hub`` uses to publish a folder: create a repo,
read its info, create a branch, list its tree, ask for upload modes (``preupload``),
the git LFS batch API with the ``basic`` transfer, the LFS ``PUT`` itself and the
NDJSON commit. Every request is recorded (method, path, headers, body), so a test can
assert what was committed and what was sent. Requests without the accepted bearer
token get 401; a route it does not know gets 404 and is listed in ``unhandled``.

huggingface_hub 2.x talks HTTP through ``httpx2``, which respx and pytest-httpx do not
patch, hence a server. Large files go through git LFS here, so tests set
``HF_HUB_DISABLE_XET=1``: the Xet storage protocol is not faked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_LFS_SUFFIXES = (".safetensors", ".parquet", ".png", ".bin", ".pt", ".pth")
_REPO = r"(?P<type>model|dataset|space)s/(?P<repo>[^/]+/[^/]+)"


@dataclass
class Repo:
    """One repository: visibility and, per branch, its files and commit history."""

    repo_type: str
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeHub:
    """A threaded HTTP server faking the Hub routes used by ``upload_folder``.

    Use as a context manager; ``url`` is its endpoint (set ``HF_ENDPOINT`` to it).

    Args:
        token: the one token the fake accepts.
    """

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.unhandled: list[str] = []
        #: Reasons the metadata check gives for every card (a test sets them to see a
        #: card refused); empty: only the checks below apply.
        self.yaml_errors: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ what tests read

    def files(self, repo_id: str, repo_type: str = "model", branch: str = "main") -> dict:
        """The files of a branch: path -> bytes."""
        return dict(self.repos[(repo_type, repo_id)].branches[branch])

    # ------------------------------------------------------------------ routes

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if method == "PUT" and (m := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)):
            if hashlib.sha256(body).hexdigest() != m.group(1):
                return 400, {"error": "LFS upload: content does not match its oid"}
            self.lfs[m.group(1)] = body
            return 200, {}
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        if m := re.fullmatch(
            r"/(?P<prefix>datasets/|spaces/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch",
            path,
        ):
            kind = {"datasets/": "dataset", "spaces/": "space"}.get(
                m.group("prefix") or "", "model"
            )
            if (kind, m.group("repo")) not in self.repos:
                return 404, {"error": "Repository not found"}
            return self._lfs_batch(json.loads(body))
        if not (m := re.fullmatch(rf"/api/{_REPO}(?P<rest>/.*)?", path)):
            return self._unknown(method, path)
        key = (m.group("type"), m.group("repo"))
        repo = self.repos.get(key)
        if repo is None:
            return 404, {"error": "Repository not found"}
        rest = m.group("rest") or ""
        if method == "GET" and rest in ("", "/revision/main"):
            return 200, self._info(key[1], repo)
        if method == "POST" and (b := re.fullmatch(r"/branch/(.+)", rest)):
            name = unquote(b.group(1))
            if name in repo.branches:
                return 409, {"error": f"Branch {name} already exists"}
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            repo.branches[name] = dict(repo.branches[start])
            return 200, {}
        if (t := re.fullmatch(r"/(preupload|commit|tree)/([^/]+)(/.*)?", rest)) is None:
            return self._unknown(method, path)
        verb, rev = t.group(1), unquote(t.group(2))
        if rev not in repo.branches:
            return 404, {"error": f"Invalid rev id: {rev}"}
        if method == "POST" and verb == "preupload":
            return 200, self._preupload(json.loads(body))
        if method == "POST" and verb == "commit":
            return self._commit(key, repo, rev, body)
        if method == "GET" and verb == "tree":
            under = (t.group(3) or "").strip("/")
            return 200, [
                {"type": "file", "path": p, "size": len(v), "oid": hashlib.sha1(v).hexdigest()}
                for p, v in sorted(repo.branches[rev].items())
                if not under or p.startswith(under + "/")
            ]
        return self._unknown(method, path)

    def _unknown(self, method: str, path: str) -> tuple[int, Any]:
        self.unhandled.append(f"{method} {path}")
        return 404, {"error": f"fake hub: no route for {method} {path}"}

    def _create_repo(self, payload: dict) -> tuple[int, Any]:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or 'me'}/{payload['name']}"
        url = f"{self.url}/{_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            return 409, {"error": f"You already created this {repo_type} repo", "url": url}
        private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
        self.repos[(repo_type, repo_id)] = Repo(repo_type, private)
        return 200, {"url": url, "name": repo_id}

    def _validate_yaml(self, payload: dict) -> tuple[int, Any]:
        """The Hub's checks of README metadata that a card can fail: YAML that parses,
        a license, string tags, and ``base_model`` as Hub repo ids."""
        import yaml

        text = payload["content"]
        if not text.startswith("---\n"):
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}
        try:
            meta = yaml.safe_load(text.split("---\n", 2)[1]) or {}
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": f"YAML: {exc}"}]}
        errors = list(self.yaml_errors)
        if not meta.get("license"):
            errors.append("license is required")
        if not all(isinstance(t, str) for t in meta.get("tags") or []):
            errors.append("tags must be strings")
        bases = meta.get("base_model") or []
        for base in [bases] if isinstance(bases, str) else bases:
            if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(base)):
                errors.append(f"base_model {base!r} is not a model id")
        return (400 if errors else 200), {
            "errors": [{"message": m} for m in errors],
            "warnings": [],
        }

    def _info(self, repo_id: str, repo: Repo) -> dict:
        sha = repo.commits[-1]["oid"] if repo.commits else "0" * 40
        files = sorted(repo.branches["main"])
        return {
            "id": repo_id,
            "private": repo.private,
            "sha": sha,
            "siblings": [{"rfilename": p} for p in files],
        }

    def _preupload(self, payload: dict) -> dict:
        files = []
        for f in payload["files"]:
            lfs = f["path"].endswith(_LFS_SUFFIXES) or f["size"] > 10_000_000
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                }
            )
        return {"files": files}

    def _lfs_batch(self, payload: dict) -> tuple[int, Any]:
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", []):
            return 422, {"error": "fake hub: only basic LFS uploads"}
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs:  # already stored: the client skips it
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}

    def _commit(self, key: tuple, repo: Repo, rev: str, body: bytes) -> tuple[int, Any]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            return 400, {"error": "commit: the first NDJSON line must be the header"}
        tree = dict(repo.branches[rev])
        for item in lines[1:]:
            value = item["value"]
            if item["key"] == "file":
                tree[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.lfs:
                    return 400, {"error": f"commit: LFS object {value['oid']} was never uploaded"}
                tree[value["path"]] = self.lfs[value["oid"]]
            elif item["key"] == "deletedFile":
                tree.pop(value["path"], None)
            elif item["key"] == "deletedFolder":
                for p in [p for p in tree if p.startswith(value["path"].rstrip("/") + "/")]:
                    del tree[p]
            else:
                return 400, {"error": f"commit: unknown key {item['key']}"}
        oid = hashlib.sha1(body).hexdigest()
        repo.branches[rev] = tree
        repo.commits.append(
            {"oid": oid, "branch": rev, "header": lines[0]["value"], "ops": lines[1:]}
        )
        url = f"{self.url}/{_PREFIX[key[0]]}{key[1]}/commit/{oid}"
        return 200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None}

    # ------------------------------------------------------------------ server plumbing

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                url = urlsplit(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with hub._lock:
                    hub.requests.append(Request(self.command, url.path, headers, body))
                    is_lfs_put = url.path.startswith("/lfs-upload/")
                    if url.path == "/api/agent-harnesses":  # a public, best-effort lookup
                        status, payload = 404, {"error": "not served by the fake hub"}
                    elif not is_lfs_put and headers.get("authorization") != f"Bearer {hub.token}":
                        status, payload = (
                            401,
                            {"error": "Invalid credentials in Authorization header"},
                        )
                    else:
                        status, payload = hub._route(self.command, url.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 404 and "Repository not found" in data.decode():
                    self.send_header("X-Error-Code", "RepoNotFound")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _serve

        return Handler

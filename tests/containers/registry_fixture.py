"""Real tools for the image tests: skopeo, umoci, a real `docker-registry` on loopback (one open,
one with htpasswd auth), a busybox base image, and a proxy that cuts a push off midway.

Missing Debian packages are installed with apt-get, the way scripts/test-cluster installs Slurm.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

TOOLS = {
    "skopeo": "skopeo",
    "umoci": "umoci",
    "docker-registry": "docker-registry",
    "busybox": "busybox-static",
    "htpasswd": "apache2-utils",
}
_apt_lock = threading.Lock()


def ensure_tools() -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    with _apt_lock:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            capture_output=True,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    root: Path  # storage root
    process: subprocess.Popen[bytes]

    def blob_digests(self) -> set[str]:
        """Every blob the registry stores (on disk, whatever the API says)."""
        blobs = self.root / "docker" / "registry" / "v2" / "blobs" / "sha256"
        return (
            {f"sha256:{p.parent.name}" for p in blobs.glob("*/*/data")} if blobs.is_dir() else set()
        )

    def manifest(self, repo: str, ref: str, auth: str | None = None) -> tuple[int, bytes, str]:
        conn = http.client.HTTPConnection(self.host, timeout=10)
        headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        if auth:
            headers["Authorization"] = auth
        conn.request("GET", f"/v2/{repo}/manifests/{ref}", headers=headers)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status, body, response.headers.get("Docker-Content-Digest", "")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_registry(folder: Path, htpasswd: Path | None = None) -> Registry:
    ensure_tools()
    port = free_port()
    root = folder / "storage"
    root.mkdir(parents=True, exist_ok=True)
    auth = ""
    if htpasswd is not None:
        auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )
    log = (folder / "registry.log").open("wb")
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    registry = Registry(f"127.0.0.1:{port}", root, process)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {(folder / 'registry.log').read_text()}")
        try:
            conn = http.client.HTTPConnection(registry.host, timeout=2)
            conn.request("GET", "/v2/")
            status = conn.getresponse().status
            conn.close()
            if status in (200, 401):
                return registry
        except OSError:
            time.sleep(0.1)
    registry.stop()
    raise RuntimeError("docker-registry did not answer within 20 s")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real CNCF distribution registry on 127.0.0.1:<free port>, no auth."""
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, str, str]]:
    """A registry with htpasswd (bcrypt) auth; yields (registry, user, password)."""
    ensure_tools()
    folder = tmp_path_factory.mktemp("auth-registry")
    user, password = "deployer", "s3cret-Pa55"
    line = subprocess.run(
        ["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True
    ).stdout.strip()
    (folder / "htpasswd").write_text(line + "\n")
    reg = start_registry(folder, folder / "htpasswd")
    yield reg, user, password
    reg.stop()


def _tar_layer(entries: list[tuple[str, bytes | None, str | None, int]]) -> bytes:
    """(name, data, symlink target, mode) entries -> uncompressed tar bytes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, link, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 0
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture(scope="session")
def busybox_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout (tag `latest`) of one layer: /bin/busybox (static) and sh/cat/echo links."""
    ensure_tools()
    folder = tmp_path_factory.mktemp("busybox") / "layout"
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    busybox = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()
    applets = ["sh", "cat", "echo", "env", "test", "ls"]
    layer = _tar_layer(
        [("bin", None, None, 0o755), ("bin/busybox", busybox, None, 0o755)]
        + [(f"bin/{a}", None, "busybox", 0o777) for a in applets]
        + [("tmp", None, None, 0o1777)]
    )

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    layer_digest = put(layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_bytes = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": put(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": len(layer),
            }
        ],
    }
    manifest_bytes = json.dumps(manifest).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": put(manifest_bytes),
                "size": len(manifest_bytes),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (folder / "index.json").write_text(json.dumps(index))
    (folder / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return folder


class CutProxy:
    """An HTTP proxy in front of a registry that lets ``allow_puts`` blob uploads through, then
    drops the connection in the middle of the next one (and every later request)."""

    def __init__(self, upstream: str, allow_puts: int) -> None:
        self.upstream = upstream
        self.allow_puts = allow_puts
        self.puts = 0
        self.cut = False
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                is_blob_put = self.command == "PUT" and "/blobs/uploads/" in self.path
                if proxy.cut or (is_blob_put and proxy.puts >= proxy.allow_puts):
                    proxy.cut = True
                    self.rfile.read(min(length, 100))  # part of the body, then the line drops
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if is_blob_put and response.status == 201:
                    proxy.puts += 1
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

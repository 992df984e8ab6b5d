"""Talk the OCI distribution API over HTTP(S) with the stdlib: references, credentials, push, pull.

A push HEADs every blob first and uploads only what the registry lacks (monolithic POST + PUT),
and PUTs the manifest last: a push cut off midway never leaves a tag pointing at a missing blob,
and running it again finishes it. Credentials come from ``--registry-user`` with the password in
``PIXI_DEPLOY_REGISTRY_PASSWORD``, or from docker's ``config.json``; they never appear in messages.
Plain HTTP is used only for loopback registries or with ``insecure=True``.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixi_deploy.containers.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEX,
    MANIFEST,
    BlobStore,
    BuiltImage,
    Descriptor,
    resolve_manifest,
)
from pixi_deploy.containers.reference import (
    PASSWORD_ENV,
    Credentials,
    Reference,
    is_loopback,
)
from pixi_deploy.errors import ContainerError
from pixi_deploy.progress import NullReporter, Reporter

ACCEPT = ", ".join([MANIFEST, INDEX, DOCKER_MANIFEST, DOCKER_LIST])
CHUNK = 1 << 20


@dataclass
class PushResult:
    reference: str
    digest: str
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    bytes_skipped: int = 0


class RegistryClient:
    """One repository on one registry, over one keep-alive connection."""

    def __init__(
        self,
        reference: Reference,
        credentials: Credentials | None = None,
        *,
        insecure: bool = False,
        push: bool = False,
        timeout: float = 60,
    ) -> None:
        self.ref = reference
        self.credentials = credentials
        self.insecure = insecure
        self.scope = f"repository:{reference.repository}:{'pull,push' if push else 'pull'}"
        self.timeout = timeout
        self._scheme: str | None = None
        self._auth: str | None = None
        self._conn: http.client.HTTPConnection | None = None

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self.ref.api_host

    def _unreachable(self, error: BaseException) -> ContainerError:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return ContainerError(
            f"registry {self.ref.registry} is unreachable ({reason})",
            "check the address and that the registry is running, then run the command again",
        )

    def _connection(self, scheme: str, host: str) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(
                host, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(host, timeout=self.timeout)

    def _ping(self) -> None:
        plain_ok = self.insecure or is_loopback(self.host)
        last: BaseException | None = None
        for scheme in ("https", "http") if plain_ok else ("https",):
            self._scheme = scheme
            self._conn = self._connection(scheme, self.host)
            try:
                status, _, _ = self._raw("GET", "/v2/", {})
            except (ssl.SSLError, ConnectionResetError, http.client.BadStatusLine) as error:
                last = error
                self._close()
                continue
            except (OSError, http.client.HTTPException) as error:
                raise self._unreachable(error) from error
            if status in (200, 401):
                return
            raise ContainerError(
                f"{self.ref.registry} does not speak the registry API (GET /v2/ -> {status})",
                "check the registry address",
            )
        hint = "" if plain_ok else "; for a plain-HTTP registry pass --insecure-registry"
        raise ContainerError(
            f"cannot talk to registry {self.ref.registry} over HTTPS ({last})",
            f"check the address{hint}",
        )

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _raw(
        self, method: str, url: str, headers: dict[str, str], body: Any = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        response = self._open(method, url, headers, body)
        return response.status, response.headers, response.read()

    def _open(
        self, method: str, url: str, headers: dict[str, str], body: Any = None
    ) -> http.client.HTTPResponse:
        if self._conn is None:
            assert self._scheme is not None
            self._conn = self._connection(self._scheme, self.host)
        headers = {"User-Agent": "pixi-deploy", **headers}
        if self._auth:
            headers["Authorization"] = self._auth
        try:
            self._conn.request(method, url, body=body, headers=headers)
            return self._conn.getresponse()
        except (OSError, http.client.HTTPException) as error:
            self._close()
            raise error

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: Any = None,
        *,
        stream: bool = False,
    ) -> http.client.HTTPResponse:
        """Send with auth (answering a 401 challenge once); map network failures to one line."""
        if self._scheme is None:
            self._ping()
        for attempt in range(2):
            if hasattr(body, "seek"):
                body.seek(0)
            try:
                response = self._open(method, path, headers or {}, body)
            except (OSError, http.client.HTTPException) as error:
                raise self._unreachable(error) from error
            if response.status != 401 or attempt == 1:
                if response.status == 401:
                    response.read()
                    raise self._refused()
                return response
            challenge = response.headers.get("WWW-Authenticate", "")
            response.read()
            self._authenticate(challenge)
        raise AssertionError("unreachable")

    def _refused(self) -> ContainerError:
        who = f"user {self.credentials.username}" if self.credentials else "anonymous access"
        return ContainerError(
            f"registry {self.ref.registry} refused {who} for {self.ref.repository}",
            f"check --registry-user and ${PASSWORD_ENV} (or `docker login {self.ref.registry}`)",
        )

    def _authenticate(self, challenge: str) -> None:
        kind, _, params_text = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', params_text))
        basic = None
        if self.credentials:
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            basic = "Basic " + base64.b64encode(pair).decode()
        if kind.lower() == "basic":
            if basic is None:
                raise self._refused()
            self._auth = basic
            return
        if kind.lower() != "bearer" or "realm" not in params:
            raise ContainerError(f"registry {self.ref.registry} asks for unknown auth '{kind}'")
        self._auth = "Bearer " + self._token(params, basic)

    def _token(self, params: dict[str, str], basic: str | None) -> str:
        realm = urllib.parse.urlsplit(params["realm"])
        query = {"scope": self.scope}
        if "service" in params:
            query["service"] = params["service"]
        path = (realm.path or "/") + "?" + urllib.parse.urlencode(query)
        conn = self._connection(realm.scheme or "https", realm.netloc)
        headers = {"User-Agent": "pixi-deploy"}
        if basic:
            headers["Authorization"] = basic
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            raise self._unreachable(error) from error
        finally:
            conn.close()
        if response.status in (401, 403):
            raise self._refused()
        try:
            answer = json.loads(data)
            return str(answer.get("token") or answer["access_token"])
        except (ValueError, KeyError, TypeError) as error:
            raise ContainerError(
                f"the token service of {self.ref.registry} answered {response.status} "
                "without a token"
            ) from error

    def _fail(self, what: str, response: http.client.HTTPResponse) -> ContainerError:
        body = response.read()
        detail = ""
        try:
            errors = json.loads(body).get("errors") or []
            if errors:
                detail = f": {errors[0].get('code', '')} {errors[0].get('message', '')}".rstrip()
        except (ValueError, AttributeError):
            pass
        return ContainerError(
            f"registry {self.ref.registry} answered {response.status} to {what}{detail}",
            "check the image name and your permissions on the registry",
        )

    # -- the distribution API ---------------------------------------------------------------
    @property
    def _base(self) -> str:
        return f"/v2/{self.ref.repository}"

    def has_blob(self, digest: str) -> bool:
        response = self.request("HEAD", f"{self._base}/blobs/{digest}")
        response.read()
        if response.status == 200:
            return True
        if response.status == 404:
            return False
        raise self._fail(f"HEAD blob {digest[:19]}…", response)

    def upload_blob(self, path: Path, digest: str, size: int) -> None:
        response = self.request("POST", f"{self._base}/blobs/uploads/", {"Content-Length": "0"})
        response.read()
        location = response.headers.get("Location")
        if response.status != 202 or not location:
            raise self._fail("starting a blob upload", response)
        location = self._local(location)
        sep = "&" if "?" in location else "?"
        url = f"{location}{sep}digest={urllib.parse.quote(digest)}"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        with path.open("rb") as body:
            response = self.request("PUT", url, headers, body)
        if response.status != 201:
            raise self._fail(f"uploading blob {digest[:19]}…", response)
        response.read()

    def _local(self, location: str) -> str:
        """An upload Location as a path on this registry (absolute URLs of another host refused)."""
        parts = urllib.parse.urlsplit(location)
        if parts.netloc and parts.netloc != self.host:
            raise ContainerError(
                f"registry {self.ref.registry} sent the upload to another host ({parts.netloc})",
                "pushing through redirecting registries is not supported yet",
            )
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def put_manifest(self, data: bytes, media_type: str, target: str) -> str:
        headers = {"Content-Type": media_type, "Content-Length": str(len(data))}
        response = self.request("PUT", f"{self._base}/manifests/{target}", headers, data)
        if response.status not in (200, 201):
            raise self._fail(f"storing the manifest {target}", response)
        response.read()
        return response.headers.get("Docker-Content-Digest") or ""

    def get_manifest(self, target: str) -> tuple[bytes, str]:
        response = self.request("GET", f"{self._base}/manifests/{target}", {"Accept": ACCEPT})
        if response.status == 404:
            response.read()
            raise ContainerError(
                f"image {self.ref} does not exist on the registry", "check the name and tag"
            )
        if response.status != 200:
            raise self._fail(f"GET manifest {target}", response)
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        return response.read(), media_type

    def fetch_blob(self, digest: str, store: BlobStore) -> None:
        """Stream a blob into ``store`` (following a redirect to storage without credentials)."""
        if store.has(digest):
            return
        response = self.request("GET", f"{self._base}/blobs/{digest}")
        if response.status in (301, 302, 303, 307, 308):
            response.read()
            response = _get_url(response.headers["Location"], self.timeout)
        if response.status != 200:
            raise self._fail(f"GET blob {digest[:19]}…", response)
        with store.writer() as (_, hasher):
            for chunk in _chunks(response):
                hasher.write(chunk)
        if not store.has(digest):
            raise ContainerError(f"blob {digest[:19]}… from {self.ref.registry} is corrupt")


def _chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    while chunk := response.read(CHUNK):
        yield chunk


def _get_url(url: str, timeout: float) -> http.client.HTTPResponse:
    parts = urllib.parse.urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.netloc, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        return conn.getresponse()
    except (OSError, http.client.HTTPException) as error:
        raise ContainerError(f"blob storage {parts.netloc} is unreachable ({error})") from error


def push_image(
    image: BuiltImage,
    reference: Reference,
    credentials: Credentials | None = None,
    *,
    insecure: bool = False,
    reporter: Reporter | None = None,
) -> PushResult:
    """Upload the blobs the registry lacks, then the manifest under the tag (last)."""
    reporter = reporter or NullReporter()
    client = RegistryClient(reference, credentials, insecure=insecure, push=True)
    result = PushResult(str(reference), image.manifest.digest)
    blobs = list({b.digest: b for b in image.blobs()}.values())
    try:
        with reporter.task("push", sum(b.size for b in blobs)) as advance:
            for blob in blobs:
                if client.has_blob(blob.digest):
                    result.skipped.append(blob.digest)
                    result.bytes_skipped += blob.size
                else:
                    client.upload_blob(image.store.path(blob.digest), blob.digest, blob.size)
                    result.uploaded.append(blob.digest)
                    result.bytes_uploaded += blob.size
                advance(blob.size)
        data = image.store.read(image.manifest.digest)
        got = client.put_manifest(data, MANIFEST, reference.target)
    finally:
        client._close()
    if got and got != image.manifest.digest:
        raise ContainerError(
            f"registry {reference.registry} stored the manifest as {got[:19]}…, "
            f"not {image.manifest.digest[:19]}…",
            "the registry rewrote the manifest; push to an OCI-compliant registry",
        )
    reporter.step(
        f"pushed {reference}: {len(result.uploaded)} blobs uploaded "
        f"({result.bytes_uploaded} bytes), {len(result.skipped)} already there"
    )
    return result


def pull_base(
    reference: Reference,
    store: BlobStore,
    platform: str,
    credentials: Credentials | None = None,
    *,
    insecure: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, config) of a registry image for ``platform``, its blobs fetched into ``store``."""
    client = RegistryClient(reference, credentials, insecure=insecure)
    try:
        data, media_type = client.get_manifest(reference.target)
        top = store.add_bytes(data, media_type)

        def read(digest: str) -> bytes:
            if not store.has(digest):
                try:  # a config blob, or a platform's manifest (which lives under /manifests/)
                    client.fetch_blob(digest, store)
                except ContainerError:
                    raw, _ = client.get_manifest(digest)
                    store.add_bytes(raw, "")
            return store.read(digest)

        return resolve_manifest(
            Descriptor(media_type, top.digest, top.size),
            read,
            lambda d: client.fetch_blob(d, store),
            platform,
        )
    finally:
        client._close()


__all__ = ["PushResult", "RegistryClient", "pull_base", "push_image"]

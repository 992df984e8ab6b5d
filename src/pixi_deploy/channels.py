"""Fetch package URLs over HTTP(S) the way pixi would: with its mirrors and its credentials.

Mirrors come from pixi's configuration (``[mirrors]`` in, lowest priority first,
``/etc/pixi/config.toml``, ``$XDG_CONFIG_HOME/pixi/config.toml``, ``~/.pixi/config.toml`` or
``$PIXI_HOME/config.toml``, and the workspace's ``.pixi/config.toml``): a URL under a mirrored
prefix is fetched from the mirrors in order, and the first that answers wins.

Credentials are looked up per host where pixi and rattler keep them: rattler's authentication file
(``RATTLER_AUTH_FILE``, else pixi's ``authentication-override-file``, else
``~/.rattler/credentials.json``), then ``~/.netrc`` (or ``NETRC``). Keys of the authentication
file are host names, optionally with a port or a path prefix, or ``*.domain`` wildcards; values are
``{"BasicHTTP": {"username", "password"}}``, ``{"BearerToken": "..."}`` or
``{"CondaToken": "..."}``.

Secrets never leave this module in text form: every URL the project writes or prints (messages,
pack metadata, the embedded lock, ``conda-meta``, ``inspect``) goes through :func:`redact`,
which drops user info, ``/t/<token>/`` segments and query strings; the URL with its
credentials lives only in memory, for the download.
"""

from __future__ import annotations

import base64
import json
import netrc
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

import tomli

from pixi_deploy.errors import FetchError

USER_AGENT = "pixi-deploy"
_TOKEN_SEGMENT = re.compile(r"/t/[^/]+(?=/|$)")
_HASH_FRAGMENT = re.compile(r"(sha256|md5)=[0-9a-fA-F]+")
_RETRY_ON_MIRROR = {404, 408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Credentials:
    """One way to authenticate; the secret is never part of ``repr``."""

    kind: str  # "basic" | "bearer" | "conda"
    username: str = ""
    secret: str = field(default="", repr=False)

    def apply(self, url: str, headers: dict[str, str]) -> str:
        """Add these credentials to a request; returns the URL to use (CondaToken changes it)."""
        if self.kind == "basic":
            pair = f"{self.username}:{self.secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        elif self.kind == "bearer":
            headers["Authorization"] = f"Bearer {self.secret}"
        elif self.kind == "conda":
            parsed = urllib.parse.urlsplit(url)
            if not _TOKEN_SEGMENT.match(parsed.path):
                quoted = urllib.parse.quote(self.secret, safe="")
                url = urllib.parse.urlunsplit(parsed._replace(path=f"/t/{quoted}{parsed.path}"))
        return url


def redact(url: str) -> str:
    """A URL fit for messages, metadata and files: user info, conda tokens (``/t/<token>/``)
    and the query string (``?token=...``, pre-signed ``X-Amz-Signature=...``) removed; a
    ``#sha256=`` fragment is kept, any other fragment dropped."""
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parsed.netloc
    if "@" in netloc:
        netloc = netloc.rsplit("@", 1)[1]
    path = _TOKEN_SEGMENT.sub("/t/***", parsed.path)
    fragment = parsed.fragment if _HASH_FRAGMENT.fullmatch(parsed.fragment) else ""
    return urllib.parse.urlunsplit(
        parsed._replace(netloc=netloc, path=path, query="", fragment=fragment)
    )


def pixi_config_files(workspace_root: Path | None = None) -> list[Path]:
    """pixi's configuration files, lowest priority first (later ones override earlier ones)."""
    files = [Path("/etc/pixi/config.toml")]
    xdg = os.environ.get("XDG_CONFIG_HOME")
    files.append(
        Path(xdg) / "pixi" / "config.toml" if xdg else Path.home() / ".config/pixi/config.toml"
    )
    pixi_home = os.environ.get("PIXI_HOME")
    files.append(
        Path(pixi_home) / "config.toml" if pixi_home else Path.home() / ".pixi/config.toml"
    )
    if workspace_root is not None:
        files.append(workspace_root / ".pixi" / "config.toml")
    return files


@dataclass
class ChannelSettings:
    """Mirrors and credential sources; :meth:`load` reads them from pixi's and rattler's files."""

    mirrors: dict[str, list[str]] = field(default_factory=dict)
    auth_file: Path | None = None
    netrc_file: Path | None = None
    timeout: float = 60.0

    @classmethod
    def load(cls, workspace_root: Path | None = None) -> ChannelSettings:
        mirrors: dict[str, list[str]] = {}
        override: Path | None = None
        for path in pixi_config_files(workspace_root):
            config = _read_config(path)
            table = config.get("mirrors")
            if isinstance(table, dict):
                for key, value in table.items():
                    if isinstance(value, list):
                        mirrors[_norm(str(key))] = [str(v) for v in value]
            value = config.get("authentication-override-file")
            if isinstance(value, str) and value:
                override = (path.parent / Path(value).expanduser()).resolve()
        explicit = os.environ.get("RATTLER_AUTH_FILE")
        auth_file = (
            Path(explicit).expanduser()
            if explicit
            else override or Path.home() / ".rattler" / "credentials.json"
        )
        netrc_env = os.environ.get("NETRC")
        netrc_file = Path(netrc_env).expanduser() if netrc_env else Path.home() / ".netrc"
        return cls(mirrors, auth_file, netrc_file)

    # -- mirrors ----------------------------------------------------------------------------
    def candidates(self, url: str) -> list[str]:
        """Where to fetch ``url`` from, in order: its mirrors (longest matching prefix), or itself."""
        best = ""
        for prefix in self.mirrors:
            if (url == prefix or url.startswith(prefix + "/")) and len(prefix) > len(best):
                best = prefix
        if not best or not self.mirrors[best]:
            return [url]
        rest = url[len(best) :]
        return [_norm(mirror) + rest for mirror in self.mirrors[best]]

    # -- credentials ------------------------------------------------------------------------
    def credentials_for(self, url: str) -> Credentials | None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.username is not None:
            return Credentials(
                "basic",
                urllib.parse.unquote(parsed.username),
                urllib.parse.unquote(parsed.password or ""),
            )
        host = (parsed.hostname or "").lower()
        if not host:
            return None
        found = _lookup(self._auth_entries(), host, parsed.port, parsed.path)
        if found is not None:
            return found
        return self._netrc(host)

    def _auth_entries(self) -> dict[str, Any]:
        if self.auth_file is None or not self.auth_file.is_file():
            return {}
        try:
            data = json.loads(self.auth_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise FetchError(
                f"cannot read the credentials file {self.auth_file} ({type(error).__name__})",
                "fix its JSON, or point RATTLER_AUTH_FILE at a valid one",
            ) from None
        return data if isinstance(data, dict) else {}

    def _netrc(self, host: str) -> Credentials | None:
        if self.netrc_file is None or not self.netrc_file.is_file():
            return None
        try:
            found = netrc.netrc(str(self.netrc_file)).authenticators(host)
        except (OSError, netrc.NetrcParseError):
            return None
        if not found:
            return None
        login, _account, password = found
        return Credentials("basic", login or "", password or "")

    # -- fetching ---------------------------------------------------------------------------
    def open(self, url: str, what: str) -> HTTPResponse:
        """An open response for ``url`` (or the first mirror that answers); FetchError otherwise.

        ``what`` names the file in messages.
        """
        candidates = self.candidates(url)
        last: FetchError | None = None
        for candidate in candidates:
            try:
                return self._open_one(candidate, what)
            except _Retryable as error:
                last = error.error
        assert last is not None
        if len(candidates) > 1:
            raise FetchError(
                f"{what}: none of the {len(candidates)} mirrors of {redact(url)} answered "
                f"(last: {last.message})",
                last.hint,
            )
        raise last

    def _open_one(self, url: str, what: str) -> HTTPResponse:
        headers = {"User-Agent": USER_AGENT}
        credentials = self.credentials_for(url)
        request_url = _strip_userinfo(url)
        if credentials is not None:
            request_url = credentials.apply(request_url, headers)
        request = urllib.request.Request(request_url, headers=headers)  # noqa: S310
        opener = urllib.request.build_opener(_SameHostAuthRedirects())
        shown = redact(url)
        try:
            response = opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            error.close()
            raise _http_error(error.code, what, shown, credentials) from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", None) or error
            raise _Retryable(
                FetchError(
                    f"{what}: not in the download cache and {shown} is unreachable ({reason})",
                    "connect to the network, or copy a filled cache (PIXI_DEPLOY_CACHE_DIR) here",
                )
            ) from None
        return response


class _Retryable(Exception):  # internal signal: try the next mirror
    def __init__(self, error: FetchError) -> None:
        super().__init__(error.message)
        self.error = error


def _http_error(code: int, what: str, shown: str, credentials: Credentials | None) -> Exception:
    if code in (401, 403):
        if credentials is None:
            return FetchError(
                f"{what}: {shown} needs credentials (HTTP {code})",
                "add them with `pixi auth login <host>`, to RATTLER_AUTH_FILE or ~/.netrc",
            )
        return FetchError(
            f"{what}: {shown} refused the credentials for "
            f"{urllib.parse.urlsplit(shown).netloc} (HTTP {code})",
            "check the username/password or token stored for this host",
        )
    error = FetchError(f"{what}: {shown} answered HTTP {code}", "check the channel URL and mirrors")
    if code in _RETRY_ON_MIRROR:
        return _Retryable(error)
    return error


class _SameHostAuthRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never carry credentials to another host."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            old_host = urllib.parse.urlsplit(req.full_url).netloc
            if urllib.parse.urlsplit(newurl).netloc != old_host:
                for name in ("Authorization", "authorization"):
                    new.headers.pop(name, None)
                    new.unredirected_hdrs.pop(name, None)
        return new


def _lookup(
    entries: Mapping[str, Any], host: str, port: int | None, path: str
) -> Credentials | None:
    keys = {k.lower().rstrip("/"): v for k, v in entries.items()}
    hostport = f"{host}:{port}" if port else host
    # most specific first: host[:port]/path prefixes, host:port, host, then wildcard domains
    segments = [s for s in path.split("/") if s]
    for base in dict.fromkeys((hostport, host)):
        for n in range(len(segments), 0, -1):
            key = base + "/" + "/".join(segments[:n])
            if key in keys:
                return _parse_entry(keys[key], key)
    for key in dict.fromkeys((hostport, host)):
        if key in keys:
            return _parse_entry(keys[key], key)
    parts = host.split(".")
    for n in range(1, len(parts)):
        key = "*." + ".".join(parts[n:])
        if key in keys:
            return _parse_entry(keys[key], key)
    return None


def _parse_entry(entry: Any, key: str) -> Credentials:
    if isinstance(entry, dict):
        if isinstance(entry.get("BasicHTTP"), dict):
            basic = entry["BasicHTTP"]
            return Credentials(
                "basic", str(basic.get("username", "")), str(basic.get("password", ""))
            )
        if isinstance(entry.get("BearerToken"), str):
            return Credentials("bearer", secret=entry["BearerToken"])
        if isinstance(entry.get("CondaToken"), str):
            return Credentials("conda", secret=entry["CondaToken"])
    raise FetchError(
        f"the credentials for '{key}' are of an unknown kind",
        "use BasicHTTP, BearerToken or CondaToken as rattler's credentials file does",
    )


def _strip_userinfo(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if "@" not in parsed.netloc:
        return url
    return urllib.parse.urlunsplit(parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[1]))


def _norm(url: str) -> str:
    return url.rstrip("/")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return tomli.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomli.TOMLDecodeError) as error:
        raise FetchError(
            f"cannot read pixi's configuration {path} ({type(error).__name__})",
            "fix the file (it is read for [mirrors] and authentication-override-file)",
        ) from None

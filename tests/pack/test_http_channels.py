"""Channels over HTTP: a real server on 127.0.0.1 serving the test channel, with and without
basic auth, credentials from rattler's file / pixi's override / netrc, pixi mirrors, and errors
that never show a secret."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.channel_server import CONDA_FORGE, Server, point_lock_at, serve_channel
from pixi_deploy.channels import ChannelSettings, Credentials, redact
from pixi_deploy.errors import FetchError
from pixi_deploy.pack import DownloadCache, unpack, write_pack
from pixi_deploy.testing.channel import make_demo_workspace
from pixi_deploy.workspace import load_workspace

USER, PASSWORD = "alice", "s3cret-Pa55word"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "demo"
    make_demo_workspace(root, platforms=("linux-64",))
    with serve_channel(root / "channel") as state:
        yield state


@pytest.fixture(autouse=True)
def clean_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No pixi/rattler configuration of this machine leaks in: a fresh HOME, no overrides."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("PIXI_HOME", "RATTLER_AUTH_FILE", "NETRC", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    return home


def _point_lock_at(server: Server, base_url: str) -> Path:
    """The demo workspace with every package URL in its lock rewritten to ``base_url``."""
    return point_lock_at(server.root.parent / "workspace", server.root, base_url)


def _pack(workspace: Path, tmp_path: Path, settings: ChannelSettings | None = None) -> Path:
    resolved = load_workspace(workspace).resolve("default", "linux-64")
    cache = DownloadCache(tmp_path / "cache", settings or ChannelSettings.load(workspace))
    return write_pack(resolved, tmp_path / "p.tar", cache=cache).path


def _auth_file(path: Path, entries: dict[str, object]) -> Path:
    path.write_text(json.dumps(entries))
    return path


def _basic() -> str:
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def test_open_http_channel(server: Server, tmp_path: Path) -> None:
    workspace = _point_lock_at(server, server.url)
    pack = _pack(workspace, tmp_path)
    assert len(server.requests) == 4
    prefix = unpack(pack, tmp_path / "env").prefix
    assert (prefix / "bin" / "greet").is_file()


def test_basic_auth_from_rattler_auth_file(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.auth = _basic()
    workspace = _point_lock_at(server, server.url)
    auth = {"127.0.0.1": {"BasicHTTP": {"username": USER, "password": PASSWORD}}}
    monkeypatch.setenv("RATTLER_AUTH_FILE", str(_auth_file(tmp_path / "auth.json", auth)))
    pack = _pack(workspace, tmp_path)
    assert all(header == server.auth for _, header in server.requests)
    assert PASSWORD.encode() not in pack.read_bytes()
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_missing_and_wrong_credentials_are_clear_and_secret_free(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_config: Path
) -> None:
    server.auth = _basic()
    workspace = _point_lock_at(server, server.url)
    with pytest.raises(FetchError, match=r"needs credentials \(HTTP 401\)"):
        _pack(workspace, tmp_path)

    wrong = {"127.0.0.1": {"BasicHTTP": {"username": USER, "password": "not-" + PASSWORD}}}
    monkeypatch.setenv("RATTLER_AUTH_FILE", str(_auth_file(tmp_path / "auth.json", wrong)))
    with pytest.raises(FetchError) as caught:
        _pack(workspace, tmp_path)
    message = str(caught.value)
    assert "refused the credentials" in message and "HTTP 401" in message
    assert PASSWORD not in message and USER not in message and "\n" not in message
    assert not (tmp_path / "p.tar").exists()

    # credentials written into the URL itself are used, and never shown
    (clean_config / ".netrc").write_text("")  # (no netrc fallback either)
    monkeypatch.delenv("RATTLER_AUTH_FILE")
    url = f"http://{USER}:wrong{PASSWORD}@{server.url.removeprefix('http://')}"
    settings = ChannelSettings.load()
    with pytest.raises(FetchError) as caught:
        settings.open(url + "/linux-64/repodata.json", "repodata.json")
    assert "wrong" not in str(caught.value) and PASSWORD not in str(caught.value)


def test_netrc_and_pixi_override_file(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_config: Path
) -> None:
    server.auth = _basic()
    workspace = _point_lock_at(server, server.url)
    (clean_config / ".netrc").write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    _pack(workspace, tmp_path)
    assert server.requests and all(h == server.auth for _, h in server.requests)

    # pixi's authentication-override-file wins over netrc; RATTLER_AUTH_FILE over both
    (clean_config / ".netrc").unlink()
    override = _auth_file(tmp_path / "override.json", {"127.0.0.1": {"BearerToken": "tok-123"}})
    (clean_config / ".pixi").mkdir()
    (clean_config / ".pixi" / "config.toml").write_text(
        f'authentication-override-file = "{override}"\n'
    )
    settings = ChannelSettings.load(workspace)
    assert settings.credentials_for(server.url + "/x") == Credentials("bearer", secret="tok-123")
    explicit = _auth_file(tmp_path / "explicit.json", {"*.0.0.1": {"CondaToken": "ct"}})
    monkeypatch.setenv("RATTLER_AUTH_FILE", str(explicit))
    assert ChannelSettings.load(workspace).credentials_for(server.url + "/x") == Credentials(
        "conda", secret="ct"
    )


def test_conda_token_goes_into_the_path_and_is_redacted() -> None:
    headers: dict[str, str] = {}
    url = Credentials("conda", secret="tok/en").apply(f"{CONDA_FORGE}/linux-64/x.conda", headers)
    assert url == "https://conda.anaconda.org/t/tok%2Fen/conda-forge/linux-64/x.conda"
    assert headers == {}
    assert redact(url) == "https://conda.anaconda.org/t/***/conda-forge/linux-64/x.conda"
    assert redact("https://u:p@host:8080/c/x") == "https://host:8080/c/x"
    assert "tok" not in repr(Credentials("bearer", secret="tok"))


def test_mirror_from_pixi_config_serves_a_conda_forge_lock(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = _point_lock_at(server, CONDA_FORGE)
    pixi_home = tmp_path / "pixi-home"
    pixi_home.mkdir()
    monkeypatch.setenv("PIXI_HOME", str(pixi_home))
    dead = "http://127.0.0.1:9"  # discard port: nothing listens; the next mirror must win
    (pixi_home / "config.toml").write_text(
        f'[mirrors]\n"{CONDA_FORGE}" = ["{dead}/conda-forge", "{server.url}/"]\n'
    )
    pack = _pack(workspace, tmp_path)
    assert sorted(p for p, _ in server.requests) == sorted(
        f"/{r.subdir}/{r.file_name}"
        for r in load_workspace(workspace).resolve("default", "linux-64").conda_records
    )
    assert (unpack(pack, tmp_path / "env").prefix / "bin" / "greet").is_file()


def test_workspace_config_mirror_overrides_global_and_all_mirrors_down(
    server: Server, tmp_path: Path, clean_config: Path
) -> None:
    workspace = _point_lock_at(server, CONDA_FORGE)
    (clean_config / ".pixi").mkdir()
    (clean_config / ".pixi" / "config.toml").write_text(
        f'[mirrors]\n"{CONDA_FORGE}/" = ["http://127.0.0.1:9/"]\n'
    )
    with pytest.raises(FetchError, match=r"is unreachable"):
        _pack(workspace, tmp_path)
    (workspace / ".pixi").mkdir()
    (workspace / ".pixi" / "config.toml").write_text(
        f'[mirrors]\n"{CONDA_FORGE}" = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]\n'
        f'"{CONDA_FORGE}/linux-64" = ["{server.url}/linux-64"]\n'  # longest prefix wins
        f'"{CONDA_FORGE}/noarch" = ["{server.url}/noarch"]\n'
    )
    _pack(workspace, tmp_path)
    assert len(server.requests) == 4

    (workspace / ".pixi" / "config.toml").write_text(
        f'[mirrors]\n"{CONDA_FORGE}" = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]\n'
    )
    resolved = load_workspace(workspace).resolve("default", "linux-64")
    with pytest.raises(FetchError, match=r"none of the 2 mirrors of .* answered"):
        write_pack(
            resolved,
            tmp_path / "q.tar",
            cache=DownloadCache(tmp_path / "cache2", ChannelSettings.load(workspace)),
        )


def test_unreachable_channel_with_nothing_cached(server: Server, tmp_path: Path) -> None:
    workspace = _point_lock_at(server, "http://127.0.0.1:9/channel")
    with pytest.raises(FetchError) as caught:
        _pack(workspace, tmp_path)
    assert "not in the download cache" in str(caught.value)
    assert "http://127.0.0.1:9/channel/" in str(caught.value)
    assert not (tmp_path / "p.tar").exists()


def test_http_404_is_reported(server: Server, tmp_path: Path) -> None:
    workspace = _point_lock_at(server, server.url + "/nothing-here")
    with pytest.raises(FetchError, match=r"answered HTTP 404"):
        _pack(workspace, tmp_path)

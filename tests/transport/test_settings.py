"""SSHSettings: environment names, exactly-one credential rule, no password leaks."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from pixi_deploy.errors import ConfigError
from pixi_deploy.transport import Secret, SSHSettings

PASSWORD = "s3cr3t-Pa55-word"


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "id_test"
    path.write_text("not really a key\n")
    return path


def env(**values: str) -> dict[str, str]:
    return {f"SLURM_EDGE_NODE_{k.upper()}": v for k, v in values.items()}


def test_from_env_with_key(key: Path) -> None:
    s = SSHSettings.from_env(
        {
            **env(host="login1", user="alice", key_path=str(key), port="2200"),
            "SLURM_DEPLOYMENT_BASE_PATH": "/scratch/alice/deploy",
        }
    )
    assert (s.host, s.port, s.user, s.key_path, s.password) == ("login1", 2200, "alice", key, None)
    assert s.base_path == "/scratch/alice/deploy"
    assert s.accept_new_host_key is False
    assert s.known_hosts == Path("~/.ssh/known_hosts").expanduser()


def test_port_defaults_to_ssh_config_then_22(key: Path) -> None:
    assert SSHSettings.from_env(env(host="h", key_path=str(key))).port is None


def test_key_path_tilde_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "k").write_text("x")
    assert SSHSettings.from_env(env(host="h", key_path="~/k")).key_path == tmp_path / "k"


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"host": "h"}, "neither SLURM_EDGE_NODE_KEY_PATH nor SLURM_EDGE_NODE_PASSWORD"),
        ({"host": "h", "key_path": "KEY", "password": PASSWORD}, "both"),
        ({"key_path": "KEY"}, "SLURM_EDGE_NODE_HOST is not set"),
        ({"host": "h", "key_path": "/nonexistent/key"}, "not a readable file"),
        ({"host": "h", "key_path": "KEY", "port": "ssh"}, "SLURM_EDGE_NODE_PORT"),
        ({"host": "h", "key_path": "KEY", "port": "70000"}, "not a TCP port"),
        ({"host": "h", "key_path": "KEY", "accept_new_host_key": "maybe"}, "yes/no"),
    ],
)
def test_from_env_rejects(values: dict[str, str], needle: str, key: Path) -> None:
    values = {k: (str(key) if v == "KEY" else v) for k, v in values.items()}
    with pytest.raises(ConfigError) as info:
        SSHSettings.from_env(env(**values))
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
    assert PASSWORD not in message


def test_accept_new_opt_in(key: Path) -> None:
    s = SSHSettings.from_env(env(host="h", key_path=str(key), accept_new_host_key="1"))
    assert s.accept_new_host_key is True


def test_password_never_printed() -> None:
    s = SSHSettings.from_env(env(host="h", password=PASSWORD))
    assert isinstance(s.password, Secret)
    assert s.password.reveal() == PASSWORD
    for text in (repr(s), str(s), repr(s.password), str(s.password), f"{s.password}"):
        assert PASSWORD not in text
    with pytest.raises(TypeError):
        pickle.dumps(s.password)


def test_explicit_alias_needs_no_credentials() -> None:
    s = SSHSettings(host="cluster-alias")
    assert s.key_path is None and s.password is None and s.port is None


def test_explicit_both_credentials_rejected(key: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        SSHSettings(host="h", key_path=key, password=Secret(PASSWORD))


def test_settings_are_hashable_keys() -> None:
    a = SSHSettings(host="h", password=Secret("x"))
    b = SSHSettings(host="h", password="x")  # type: ignore[arg-type]
    assert a == b and hash(a) == hash(b)
    assert a != SSHSettings(host="h", password=Secret("y"))

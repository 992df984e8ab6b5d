"""Host-key policy decisions without a network: unknown, changed, accept-new."""

from __future__ import annotations

from pathlib import Path

import asyncssh

from pixi_deploy.transport.failures import connect_error
from pixi_deploy.transport.hostkeys import HostKeyPolicy, host_pattern


def pub(key: asyncssh.SSHKey) -> str:
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def test_host_pattern() -> None:
    assert host_pattern("h", 22) == "h"
    assert host_pattern("127.0.0.1", 2222) == "[127.0.0.1]:2222"


def test_unknown_key_is_refused_with_keyscan_hint(tmp_path: Path) -> None:
    policy = HostKeyPolicy(tmp_path / "missing_known_hosts", accept_new=False)
    key = asyncssh.generate_private_key("ssh-ed25519")
    assert policy.validate("127.0.0.1", "127.0.0.1", 2222, key) is False
    assert policy.verdict == "unknown"
    err = connect_error(asyncssh.HostKeyNotVerifiable("x"), "u@h:2222", policy, 5)
    assert "ssh-keyscan -p 2222 127.0.0.1 >>" in str(err)
    assert "SLURM_EDGE_NODE_ACCEPT_NEW_HOST_KEY=1" in str(err)
    assert not (tmp_path / "missing_known_hosts").exists()


def test_changed_key_is_refused_even_with_accept_new(tmp_path: Path) -> None:
    old, new = (asyncssh.generate_private_key("ssh-ed25519") for _ in range(2))
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:2222 {pub(old)}\n")
    policy = HostKeyPolicy(known, accept_new=True)
    assert policy.validate("127.0.0.1", "127.0.0.1", 2222, new) is False
    assert policy.verdict == "changed"
    message = str(connect_error(asyncssh.HostKeyNotVerifiable("x"), "h", policy, 5))
    assert "CHANGED" in message and "attack" in message and "ssh-keygen -R" in message
    assert known.read_text() == f"[127.0.0.1]:2222 {pub(old)}\n"


def test_accept_new_appends_like_openssh(tmp_path: Path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    key = asyncssh.generate_private_key("ssh-ed25519")
    policy = HostKeyPolicy(known, accept_new=True)
    assert policy.validate("login.example", "10.0.0.1", 22, key) is True
    assert known.read_text() == f"login.example {pub(key)}\n"
    again = HostKeyPolicy(known, accept_new=False)
    trusted = asyncssh.match_known_hosts(again.known, "login.example", "10.0.0.1", None)[0]
    assert [pub(k) for k in trusted] == [pub(key)]

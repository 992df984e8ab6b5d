"""SSH user certificates, auth providers and jump hosts against real OpenSSH servers.

An extra sshd (helpers/sshd.py) trusts a test CA made with ``ssh-keygen`` (TrustedUserCAKeys);
the client keys signed by it are in no authorized_keys, so only a valid certificate lets them
in. Certificates are offered beside the key, from a real ssh-agent, and through CertificateFile
in an ssh config file; an auth provider renews an expiring one before connecting.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.sshd import CertAuthority, Sshd, extra_sshd
from pixi_deploy.errors import ConfigError, TransportError
from pixi_deploy.transport import CertificateCommandProvider, SSHSettings, Transport
from pixi_deploy.transport.certificates import certificate_for_key, format_time

pytestmark = pytest.mark.cluster


@pytest.fixture
def ca(tmp_path: Path) -> CertAuthority:
    return CertAuthority(tmp_path / "ca")


@pytest.fixture
def ca_sshd(test_cluster, ca: CertAuthority, tmp_path: Path) -> Iterator[Sshd]:  # type: ignore[no-untyped-def]
    with extra_sshd(test_cluster, tmp_path / "sshd", trusted_ca=ca.public) as sshd:
        yield sshd


def _settings(sshd: Sshd, user: str, **changes: object) -> SSHSettings:
    base = SSHSettings(
        host=sshd.host,
        port=sshd.port,
        user=user,
        known_hosts=sshd.known_hosts,
        ssh_config=None,
        connect_timeout=20,
    )
    return base.with_changes(**changes) if changes else base


def _login_user(settings: SSHSettings) -> str:
    with Transport(settings) as t:
        return t.run(["whoami"]).stdout.strip()


def test_valid_certificate_beside_the_key_logs_in(ca, ca_sshd, test_cluster) -> None:  # type: ignore[no-untyped-def]
    key = ca.new_key("id_valid")
    ca.sign(key, test_cluster.user, "-5m:+1h")
    assert _login_user(_settings(ca_sshd, test_cluster.user, key_path=key)) == test_cluster.user
    assert "Accepted publickey" in ca_sshd.log.read_text()  # the certificate, not a password


def test_key_without_its_certificate_is_refused(ca, ca_sshd, test_cluster) -> None:  # type: ignore[no-untyped-def]
    key = ca.new_key("id_plain")
    with pytest.raises(TransportError, match="permission denied"):
        _login_user(_settings(ca_sshd, test_cluster.user, key_path=key))


def test_expired_certificate_is_one_line_saying_when(ca, ca_sshd, test_cluster) -> None:  # type: ignore[no-untyped-def]
    key = ca.new_key("id_expired")
    cert = ca.sign(key, test_cluster.user, "-3h:-1h")
    info = certificate_for_key(key)
    assert info is not None
    with pytest.raises(TransportError) as raised:
        _login_user(_settings(ca_sshd, test_cluster.user, key_path=key))
    text = str(raised.value)
    assert "\n" not in text
    assert f"the SSH certificate {cert} expired at {format_time(info.valid_before)}" in text
    assert "renew" in text


def test_not_yet_valid_certificate_says_from_when(ca, ca_sshd, test_cluster) -> None:  # type: ignore[no-untyped-def]
    key = ca.new_key("id_future")
    ca.sign(key, test_cluster.user, "+1h:+3h")
    info = certificate_for_key(key)
    assert info is not None
    with pytest.raises(TransportError, match=f"not valid until {format_time(info.valid_after)}"):
        _login_user(_settings(ca_sshd, test_cluster.user, key_path=key))


def test_certificate_for_another_principal_is_named(ca, ca_sshd, test_cluster) -> None:  # type: ignore[no-untyped-def]
    key = ca.new_key("id_other")
    ca.sign(key, "somebody-else", "-5m:+1h")
    with pytest.raises(TransportError, match="is for somebody-else, not for the login user"):
        _login_user(_settings(ca_sshd, test_cluster.user, key_path=key))


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real ssh-agent on its own socket, made the process's SSH_AUTH_SOCK."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
    try:
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)


def _ssh_add(key: Path, sock: Path) -> None:
    # ssh-add loads <key>-cert.pub together with the key
    out = subprocess.run(
        ["ssh-add", str(key)],
        env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Certificate added" in out.stderr


def test_certificate_from_ssh_agent(ca, ca_sshd, test_cluster, agent: Path) -> None:  # type: ignore[no-untyped-def]
    key = ca.new_key("id_agent")
    ca.sign(key, test_cluster.user, "-5m:+1h")
    _ssh_add(key, agent)
    key.unlink()  # only the agent holds it now
    Path(str(key) + "-cert.pub").unlink()
    assert _login_user(_settings(ca_sshd, test_cluster.user)) == test_cluster.user


def test_expired_certificate_in_ssh_agent_is_explained(ca, ca_sshd, test_cluster, agent) -> None:  # type: ignore[no-untyped-def]
    key = ca.new_key("id_agent_old")
    ca.sign(key, test_cluster.user, "-3h:-2h")
    info = certificate_for_key(key)
    assert info is not None
    _ssh_add(key, agent)
    with pytest.raises(TransportError) as raised:
        _login_user(_settings(ca_sshd, test_cluster.user))
    assert f"ssh-agent expired at {format_time(info.valid_before)}" in str(raised.value)


def test_certificate_file_in_ssh_config(ca, ca_sshd, test_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key = ca.new_key("id_cfg")
    elsewhere = tmp_path / "certs" / "issued-cert.pub"
    elsewhere.parent.mkdir()
    ca.sign(key, test_cluster.user, "-5m:+1h", out=elsewhere)  # not beside the key
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host hpc-cert\n  HostName 127.0.0.1\n  Port {ca_sshd.port}\n  User {test_cluster.user}\n"
        f"  IdentityFile {key}\n  CertificateFile {elsewhere}\n  IdentitiesOnly yes\n"
    )
    settings = SSHSettings(host="hpc-cert", ssh_config=config, known_hosts=ca_sshd.known_hosts)
    assert _login_user(settings) == test_cluster.user
    # without the CertificateFile line the same key is refused
    config.write_text(config.read_text().replace(f"  CertificateFile {elsewhere}\n", ""))
    with pytest.raises(TransportError, match="permission denied"):
        _login_user(settings)


class CountingProvider(CertificateCommandProvider):
    calls = 0

    def ensure(self) -> None:
        type(self).calls += 1
        super().ensure()


def test_auth_provider_renews_an_expiring_certificate_before_each_connect(  # type: ignore[no-untyped-def]
    ca, ca_sshd, test_cluster
) -> None:
    key = ca.new_key("id_renew")
    ca.sign(key, test_cluster.user, "-1h:+2m")  # two minutes left: inside the 30 min skew
    before = certificate_for_key(key)
    assert before is not None
    renew = ["ssh-keygen", "-q", "-s", str(ca.key), "-I", "renewed", "-n", test_cluster.user]
    provider = CountingProvider(cert_path=str(key), command=[*renew, "-V", "-5m:+8h", f"{key}.pub"])
    settings = _settings(ca_sshd, test_cluster.user, key_path=key, auth_provider=provider)
    with Transport(settings) as t:
        assert t.run(["whoami"]).stdout.strip() == test_cluster.user
        after = certificate_for_key(key)
        assert after is not None and after.valid_before > before.valid_before + 3600
        assert CountingProvider.calls == 1
        t.disconnect()
        t.run(["true"])  # a reconnect asks the provider again (nothing to renew now)
        assert CountingProvider.calls == 2
    assert after.valid_before == certificate_for_key(key).valid_before  # type: ignore[union-attr]


def test_failing_auth_provider_is_one_clear_line(ca, ca_sshd, test_cluster) -> None:  # type: ignore[no-untyped-def]
    key = ca.new_key("id_nocert")
    provider = CertificateCommandProvider(cert_path=str(key), command=["false"])
    settings = _settings(ca_sshd, test_cluster.user, key_path=key, auth_provider=provider)
    with pytest.raises(ConfigError, match="renewal command exited with status 1") as raised:
        _login_user(settings)
    assert "\n" not in str(raised.value)


def test_settings_with_different_providers_do_not_share_a_connection(tmp_path: Path) -> None:
    one = CertificateCommandProvider(cert_path=str(tmp_path / "k"), command=["true"])
    two = CertificateCommandProvider(cert_path=str(tmp_path / "k"), command=["true"])
    a = SSHSettings(host="h", auth_provider=one)
    assert a == SSHSettings(host="h", auth_provider=one) and hash(a) == hash(a.with_changes())
    assert a != SSHSettings(host="h", auth_provider=two) != SSHSettings(host="h")
    with pytest.raises(ConfigError, match="ensure"):
        SSHSettings(host="h", auth_provider=object())  # type: ignore[arg-type]


# -- jump hosts ----------------------------------------------------------------------------


def _via_jump(test_cluster, jump: Sshd) -> SSHSettings:  # type: ignore[no-untyped-def]
    c = test_cluster
    hop = SSHSettings(
        host=jump.host,
        port=jump.port,
        user=c.user,
        key_path=c.key_path,
        known_hosts=jump.known_hosts,
        ssh_config=None,
    )
    return SSHSettings(
        host=c.host,
        port=c.port,
        user=c.user,
        key_path=c.key_path,
        known_hosts=c.known_hosts,
        ssh_config=None,
        jump=hop,
    )


def test_jump_host_with_its_own_login_and_known_hosts(test_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with extra_sshd(test_cluster, tmp_path / "jump", forwarding=True) as jump:
        settings = _via_jump(test_cluster, jump)
        with Transport(settings) as t:
            assert t.run(["whoami"]).stdout.strip() == test_cluster.user
            t.put_bytes(b"through the jump", f"/tmp/pd-jump-{os.getpid()}")
            assert t.read_bytes(f"/tmp/pd-jump-{os.getpid()}") == b"through the jump"
            t.run(["rm", "-f", f"/tmp/pd-jump-{os.getpid()}"])
        assert "Accepted publickey" in jump.log.read_text()  # we really logged in there


def test_jump_host_that_refuses_forwarding_fails_clearly(test_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with extra_sshd(test_cluster, tmp_path / "jump", forwarding=False) as jump:
        with Transport(_via_jump(test_cluster, jump)) as t, pytest.raises(TransportError):
            t.connect()
        assert "Accepted publickey" in jump.log.read_text()


def test_jump_host_key_is_checked_against_its_own_known_hosts(test_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with extra_sshd(test_cluster, tmp_path / "jump", forwarding=True) as jump:
        settings = _via_jump(test_cluster, jump)
        empty = tmp_path / "empty_known_hosts"
        empty.write_text("")
        assert settings.jump is not None
        bad = settings.with_changes(jump=settings.jump.with_changes(known_hosts=empty))
        with Transport(bad) as t, pytest.raises(TransportError, match=f"127.0.0.1]:{jump.port}"):
            t.connect()


def test_host_key_checking_off_is_explicit(test_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    c = test_cluster
    settings = SSHSettings(
        host=c.host,
        port=c.port,
        user=c.user,
        key_path=c.key_path,
        known_hosts=empty,
        ssh_config=None,
    )
    with Transport(settings) as t, pytest.raises(TransportError, match="is not in"):
        t.connect()
    with Transport(settings.with_changes(check_host_keys=False)) as t:
        assert t.run(["whoami"]).stdout.strip() == c.user
    assert empty.read_text() == ""  # nothing was written either

"""The hostile packages of issue 13, one function per case: ``case(decoys) -> packages``.

``decoys`` is the absolute folder of the decoy files (see conftest.Decoys); a case names them
by absolute path or by enough ``../`` to climb out of any target. `REFUSED` cases must stop
every install path with a one-line error and touch nothing; `SANITIZED` ones install, but
without their owner, world-write or setuid bits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from security.hostile import (
    TEXT_PLACEHOLDER,
    HostilePackage,
    Member,
    device,
    fifo,
    file,
    hardlink,
    symlink,
)

Case = Callable[[Path], list[HostilePackage]]
UP = "../" * 24  # from any target, up to "/"


def _climb(path: Path) -> str:
    return UP + str(path).lstrip("/")


def _tool() -> Member:
    return file("bin/tool", f"#!/bin/sh\necho {TEXT_PLACEHOLDER}\n", mode=0o755)


def hardlink_absolute(d: Path, fmt: str = ".conda") -> list[HostilePackage]:
    """Issue 13.1: a hard link to a root-only file (tarfile's filter let it through)."""
    return [
        HostilePackage(
            "evil",
            [file("lib/a", "a"), hardlink("lib/pw", str(d / "secret"))],
            archive_format=fmt,
            extra_paths=[{"_path": "lib/pw", "path_type": "hardlink", "size_in_bytes": 0}],
        )
    ]


def hardlink_relative(d: Path) -> list[HostilePackage]:
    return [HostilePackage("evil", [file("lib/a", "a"), hardlink("lib/pw", _climb(d / "secret"))])]


def paths_json_absolute(d: Path, fmt: str = ".conda") -> list[HostilePackage]:
    """Issue 13.2: paths.json names a file outside with a placeholder (rattler panicked)."""
    outside = {
        "_path": str(d / "victim.txt"),
        "path_type": "hardlink",
        "prefix_placeholder": TEXT_PLACEHOLDER,
        "file_mode": "text",
    }
    return [HostilePackage("evil", [_tool()], archive_format=fmt, extra_paths=[outside])]


def paths_json_relative(d: Path, fmt: str = ".conda") -> list[HostilePackage]:
    outside = {
        "_path": _climb(d / "victim.txt"),
        "path_type": "hardlink",
        "prefix_placeholder": TEXT_PLACEHOLDER,
        "file_mode": "text",
    }
    return [HostilePackage("evil", [_tool()], archive_format=fmt, extra_paths=[outside])]


def undeclared_symlink_listing_outside(d: Path) -> list[HostilePackage]:
    """Issue 13.2: an undeclared symlink sent the package to a fallback that deleted every
    file paths.json lists, outside ones included."""
    return [
        HostilePackage(
            "evil",
            [file("lib/a", "a"), symlink("lib/link", "/etc")],
            paths_override=[
                {"_path": "lib/a", "path_type": "hardlink"},
                {"_path": str(d / "secret"), "path_type": "hardlink"},
            ],
        )
    ]


def member_absolute(d: Path) -> list[HostilePackage]:
    planted = str(d / "planted")
    return [HostilePackage("evil", [file(planted, "x")])]


def member_dotdot(d: Path) -> list[HostilePackage]:
    return [HostilePackage("evil", [file(_climb(d / "planted"), "x")])]


def char_device(d: Path, fmt: str = ".conda") -> list[HostilePackage]:
    """Issue 13.4: char 1,1 is /dev/mem."""
    return [
        HostilePackage("evil", [file("lib/a", "a"), device("lib/mem", 1, 1)], archive_format=fmt)
    ]


def fifo_member(d: Path) -> list[HostilePackage]:
    return [HostilePackage("evil", [file("lib/a", "a"), fifo("lib/fifo")])]


def symlink_absolute_out(d: Path, fmt: str = ".conda") -> list[HostilePackage]:
    return [HostilePackage("evil", [symlink("lib/out", str(d))], archive_format=fmt)]


def symlink_climbing_out(d: Path) -> list[HostilePackage]:
    return [HostilePackage("evil", [symlink("lib/out", _climb(d))])]


def symlink_chain_out(d: Path) -> list[HostilePackage]:
    """Each link looks harmless alone: ``d -> .`` and ``e -> d/..``; together, one level up."""
    return [HostilePackage("evil", [symlink("d", "."), symlink("e", "d/..")])]


def file_beneath_symlink(d: Path) -> list[HostilePackage]:
    """A declared symlink to the decoys, then a file through it."""
    return [
        HostilePackage(
            "evil",
            [symlink("lib64", str(d)), file("lib64/planted", "x")],
        )
    ]


def file_beneath_other_packages_symlink(d: Path) -> list[HostilePackage]:
    return [
        HostilePackage("evil-link", [symlink("lib64", str(d))]),
        HostilePackage("evil-file", [file("lib64/planted", "x")]),
    ]


def component_too_long(d: Path) -> list[HostilePackage]:
    """Issue 13.10: a path component over 255 bytes gave a traceback."""
    return [HostilePackage("evil", [file("lib/" + "x" * 300, "x")])]


def owner_mode_setuid(d: Path) -> list[HostilePackage]:
    """Issue 13.4: uid 4242, mode 0777 and setuid were kept; they install without them."""
    return [
        HostilePackage(
            "evil",
            [
                file("bin/owned", "o", mode=0o755, uid=4242, gid=4242),
                file("bin/world", "w", mode=0o777),
                file("bin/setuid", "s", mode=0o4755),
            ],
        )
    ]


REFUSED: dict[str, Case] = {
    "hardlink-absolute": hardlink_absolute,
    "hardlink-relative": hardlink_relative,
    "paths-json-absolute": paths_json_absolute,
    "paths-json-relative": paths_json_relative,
    "undeclared-symlink": undeclared_symlink_listing_outside,
    "member-absolute": member_absolute,
    "member-dotdot": member_dotdot,
    "char-device": char_device,
    "fifo": fifo_member,
    "symlink-absolute": symlink_absolute_out,
    "symlink-climbing": symlink_climbing_out,
    "symlink-chain": symlink_chain_out,
    "beneath-symlink": file_beneath_symlink,
    "beneath-other-symlink": file_beneath_other_packages_symlink,
    "long-component": component_too_long,
    # .tar.bz2: rattler's path (validated before rattler sees it)
    "bz2-hardlink": lambda d: hardlink_absolute(d, ".tar.bz2"),
    "bz2-paths-json-absolute": lambda d: paths_json_absolute(d, ".tar.bz2"),
    "bz2-paths-json-relative": lambda d: paths_json_relative(d, ".tar.bz2"),
    "bz2-char-device": lambda d: char_device(d, ".tar.bz2"),
    "bz2-symlink-absolute": lambda d: symlink_absolute_out(d, ".tar.bz2"),
}
SANITIZED: dict[str, Case] = {"owner-mode-setuid": owner_mode_setuid}
ALL_CASES: dict[str, Case] = {**REFUSED, **SANITIZED}

"""A small channel that exercises every way a package gets installed: text and binary
placeholders, a shebang, symlinks and activation scripts (the direct path), and a `.tar.bz2`
and a `noarch: python` package (rattler's path). Used by the direct installer's tests and by
the raw-payload deploy tests, which compare both against rattler's own layout."""

from __future__ import annotations

from pixi_deploy.testing.channel import (
    BINARY_PLACEHOLDER,
    TEXT_PLACEHOLDER,
    PackageSpec,
    fake_binary,
)
from pixi_deploy.testing.python_pkg import python_wrapper_spec

NAMES = ["python", "libshared", "oldformat", "purepy"]


def linking_specs(platform: str = "linux-64", interpreter: str | None = None) -> list[PackageSpec]:
    tool = f'#!{TEXT_PLACEHOLDER}/bin/python -E\nimport sys\nprint("{TEXT_PLACEHOLDER}")\n'
    return [
        python_wrapper_spec(platform, "3.11", interpreter=interpreter),
        PackageSpec(
            name="libshared",
            version="1.2.0",
            subdir=platform,
            files={
                "lib/libshared.so.1.2.0": fake_binary([BINARY_PLACEHOLDER + "/share/x"]),
                "share/libshared/data.txt": "plain data\n",
                "bin/shared-tool": tool,
            },
            symlinks={
                "lib/libshared.so.1": "libshared.so.1.2.0",
                "lib/libshared.so": "libshared.so.1",
            },
            prefix_files={"lib/libshared.so.1.2.0": "binary", "bin/shared-tool": "text"},
            executables=frozenset({"bin/shared-tool"}),
            activate={"libshared": f'export LIBSHARED_HOME="{TEXT_PLACEHOLDER}/share"\n'},
        ),
        PackageSpec(
            name="oldformat",
            version="0.1",
            subdir=platform,
            depends=["libshared"],
            files={"bin/oldformat": f"#!/bin/sh\necho {TEXT_PLACEHOLDER}\n"},
            prefix_files={"bin/oldformat": "text"},
            executables=frozenset({"bin/oldformat"}),
            archive_format=".tar.bz2",
        ),
        PackageSpec(
            name="purepy",
            version="2.0",
            subdir="noarch",
            noarch="python",
            depends=["python"],
            files={"site-packages/purepy/__init__.py": "VALUE = 2\n"},
        ),
    ]

"""Real conda packages, channels and locks built offline, for tests, benchmarks and the demo."""

from pixi_deploy.testing.channel import (
    BINARY_PLACEHOLDER,
    DEMO_ENVIRONMENTS,
    TEXT_PLACEHOLDER,
    GeneratedBytes,
    PackageSpec,
    build_channel,
    build_package,
    channel_url,
    demo_specs,
    fake_binary,
    lock_workspace,
    make_demo_workspace,
    synthetic_specs,
    with_bumped,
)

__all__ = [
    "BINARY_PLACEHOLDER",
    "DEMO_ENVIRONMENTS",
    "TEXT_PLACEHOLDER",
    "GeneratedBytes",
    "PackageSpec",
    "build_channel",
    "build_package",
    "channel_url",
    "demo_specs",
    "fake_binary",
    "lock_workspace",
    "make_demo_workspace",
    "synthetic_specs",
    "with_bumped",
]

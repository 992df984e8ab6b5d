"""The generated Dockerfile, parsed into stages and checked instruction by instruction."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixi_deploy.containers import ContainerOptions, plan_image, render_dockerfile, write_dockerfile
from pixi_deploy.containers.parsing import Dockerfile, Stage, parse_dockerfile
from pixi_deploy.errors import ContainerError
from pixi_deploy.workspace import Workspace


def generate(workspace: Workspace, env: str | None = None, **options: object) -> Dockerfile:
    paths = write_dockerfile(workspace, env, ContainerOptions(**options))  # type: ignore[arg-type]
    assert paths[0].name == "Dockerfile"
    return parse_dockerfile(paths[0].read_text())


def copies(stage: Stage) -> list[tuple[str | None, list[str], str]]:
    """(from-stage, sources, destination) of every COPY."""
    return [(c.flags.get("from"), c.args[:-1], c.args[-1]) for c in stage.all("COPY")]


def test_two_stages_build_installs_locked_env(simple: Workspace) -> None:
    dockerfile = generate(simple)
    assert dockerfile.directives == {"syntax": "docker/dockerfile:1"}
    assert [(s.name, s.image) for s in dockerfile.stages] == [
        ("build", "ghcr.io/prefix-dev/pixi:0.72.0"),
        ("production", "ubuntu:24.04"),
    ]
    build = dockerfile.stage("build")
    assert build.first("WORKDIR").args == ["/app"]  # type: ignore[union-attr]
    # only manifest + lock before the install: the layer caches until the lock changes
    assert copies(build) == [(None, ["pixi.toml", "pixi.lock"], "./")]
    runs = [r.value for r in build.all("RUN")]
    assert runs[0] == "pixi install --locked --environment default"
    hook = runs[1]
    assert "pixi shell-hook --locked --environment default --shell bash" in hook
    assert hook.index("'#!/bin/bash'") < hook.index("cat /shell-hook.sh") < hook.index("exec")
    assert "echo 'exec \"$@\"' >> /app/entrypoint.sh" in hook
    assert "CONDA_OVERRIDE_CUDA" not in build.pairs("ENV")


def test_production_stage_copies_only_env_manifest_lock_entrypoint_source(
    simple: Workspace,
) -> None:
    production = generate(simple).stage("production")
    assert production.first("WORKDIR").args == ["/app"]  # type: ignore[union-attr]
    assert copies(production) == [
        ("build", ["/app/.pixi/envs/default"], "/app/.pixi/envs/default"),
        ("build", ["/app/.pixi/.gitignore"], "/app/.pixi/.gitignore"),
        ("build", ["/app/pixi.toml", "/app/pixi.lock"], "/app/"),
        ("build", ["/app/entrypoint.sh"], "/app/entrypoint.sh"),
        (None, ["src"], "/app/src"),
    ]
    entry = next(c for c in production.all("COPY") if c.args[0] == "/app/entrypoint.sh")
    assert entry.flags["chmod"] == "0755"
    entrypoint = production.first("ENTRYPOINT")
    assert entrypoint is not None and entrypoint.exec_form
    assert entrypoint.args == ["/app/entrypoint.sh"]
    cmd = production.first("CMD")
    assert cmd is not None and cmd.exec_form and cmd.args == ["bash"]
    assert production.all("EXPOSE") == []
    assert production.all("RUN") == []  # nothing is installed at run time, no pixi needed
    assert "CONDA_OVERRIDE_CUDA" not in production.pairs("ENV")


def test_labels_carry_the_lock_hash_of_each_platform(simple: Workspace) -> None:
    plan = plan_image(simple)
    production = generate(simple).stage("production")
    args = production.pairs("ARG")
    labels = production.pairs("LABEL")
    assert args["PIXI_DEPLOY_LOCK_HASH"] == plan.lock_hashes["linux-64"]
    assert labels["org.pixi-deploy.lock-hash"] == "${PIXI_DEPLOY_LOCK_HASH}"
    assert labels["org.pixi-deploy.lock-hash.linux-64"] == plan.lock_hashes["linux-64"]
    assert labels["org.pixi-deploy.lock-hash.linux-aarch64"] == plan.lock_hashes["linux-aarch64"]
    assert labels["org.pixi-deploy.environment"] == "default"
    assert labels["org.opencontainers.image.title"] == "test-project"
    assert plan.platforms[:2] == ("linux-64", "linux-aarch64")
    assert "linux-ppc64le" in plan.platforms
    assert plan.oci_platforms == ("linux/amd64", "linux/arm64")


def test_cuda_port_cmd_and_base_image(gpu: Workspace) -> None:
    dockerfile = generate(gpu, cuda="12", port=8000, cmd=("uvicorn", "app:main"))
    build, production = dockerfile.stages
    assert build.pairs("ENV") == {"CONDA_OVERRIDE_CUDA": "12"}
    assert production.image == "nvidia/cuda:12.9.1-base-ubuntu24.04"
    assert [e.args for e in production.all("EXPOSE")] == [["8000"]]
    assert production.first("CMD").args == ["uvicorn", "app:main"]  # type: ignore[union-attr]
    assert production.pairs("LABEL")["org.pixi-deploy.cuda"] == "12"
    # gpu fixture has no src/: nothing but the build outputs is copied
    assert all(c.flags.get("from") == "build" for c in production.all("COPY"))


def test_cuda_environment_without_cuda_option_gets_a_note(gpu: Workspace) -> None:
    assert plan_image(gpu).needs_cuda
    assert any("--cuda" in note for note in plan_image(gpu).notes)
    assert plan_image(gpu, options=ContainerOptions(cuda="12.4")).notes == ()
    text = render_dockerfile(plan_image(gpu, options=ContainerOptions(base_image="debian:12")))
    assert parse_dockerfile(text).stages[1].image == "debian:12"


def test_pyproject_manifest_and_named_environment(pyproject: Workspace) -> None:
    dockerfile = generate(pyproject, "opstooling")
    build, production = dockerfile.stages
    assert copies(build) == [(None, ["pyproject.toml", "pixi.lock"], "./")]
    assert build.all("RUN")[0].value == "pixi install --locked --environment opstooling"
    assert ("build", ["/app/pyproject.toml", "/app/pixi.lock"], "/app/") in copies(production)
    assert copies(production)[0][2] == "/app/.pixi/envs/opstooling"


def test_dockerignore_excludes_local_state(simple: Workspace) -> None:
    write_dockerfile(simple)
    lines = (simple.root / ".dockerignore").read_text().splitlines()
    for pattern in (".pixi", ".git", "**/__pycache__"):
        assert pattern in lines
    assert "pixi.lock" not in lines and "pixi.toml" not in lines


def test_output_dir_gets_a_per_dockerfile_ignore_file(simple: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "docker"
    written = write_dockerfile(simple, options=ContainerOptions(output_dir=out))
    assert written == [out / "Dockerfile", out / "Dockerfile.dockerignore"]
    assert not (simple.root / "Dockerfile").exists()


def test_existing_file_is_kept_without_force(simple: Workspace) -> None:
    (simple.root / ".dockerignore").write_text("mine\n")
    with pytest.raises(ContainerError, match=r"\.dockerignore already exists.*--force"):
        write_dockerfile(simple)
    assert (simple.root / ".dockerignore").read_text() == "mine\n"
    assert not (simple.root / "Dockerfile").exists()  # all or nothing
    write_dockerfile(simple, options=ContainerOptions(force=True))
    assert (simple.root / ".dockerignore").read_text() != "mine\n"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cuda": "abc"}, "--cuda 'abc' is not a CUDA version"),
        ({"port": 70000}, "--port 70000 is out of range"),
        ({"pixi_version": "latest"}, "--pixi-version 'latest'"),
        ({"src": ("missing",)}, "--src missing does not exist"),
        ({"src": ("../..",)}, "is outside the workspace"),
    ],
)
def test_invalid_options(simple: Workspace, options: dict[str, object], message: str) -> None:
    with pytest.raises(ContainerError, match=message.replace("(", r"\(")):
        write_dockerfile(simple, options=ContainerOptions(**options))  # type: ignore[arg-type]
    assert not (simple.root / "Dockerfile").exists()


def test_parser_handles_continuations_comments_and_json(tmp_path: Path) -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=ubuntu:24.04\n"
        "FROM ${BASE} AS one\n"
        "RUN echo a \\\n"
        "  # a comment inside a continuation\n"
        "  && echo b\n"
        'ENV A=1 B="two words"\n'
        'CMD ["python", "-c", "print(1)"]\n'
        "FROM one\n"
        "COPY --from=one --chmod=0644 /x /y\n"
    )
    parsed = parse_dockerfile(text)
    assert [i.keyword for i in parsed.preamble] == ["ARG"]
    assert [(s.image, s.name) for s in parsed.stages] == [("${BASE}", "one"), ("one", None)]
    assert parsed.stages[0].all("RUN")[0].value == "echo a && echo b"
    assert parsed.stages[0].pairs("ENV") == {"A": "1", "B": "two words"}
    assert parsed.stages[0].first("CMD").args == ["python", "-c", "print(1)"]  # type: ignore[union-attr]
    assert parsed.stages[1].all("COPY")[0].flags == {"from": "one", "chmod": "0644"}
    with pytest.raises(ContainerError):
        parse_dockerfile('FROM x\nCMD ["unterminated"\n')

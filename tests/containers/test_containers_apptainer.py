"""The generated Apptainer definition file, parsed into stages and sections."""

from __future__ import annotations

import pytest

from pixi_deploy.containers import ContainerOptions, plan_image, write_apptainer
from pixi_deploy.containers.parsing import DefinitionStage, parse_apptainer_def
from pixi_deploy.errors import ContainerError
from pixi_deploy.workspace import Workspace


def generate(
    workspace: Workspace, env: str | None = None, **options: object
) -> list[DefinitionStage]:
    (path,) = write_apptainer(workspace, env, ContainerOptions(**options))  # type: ignore[arg-type]
    return parse_apptainer_def(path.read_text())


def test_two_stages_build_and_final(simple: Workspace) -> None:
    build, final = generate(simple)
    assert build.header == {
        "Bootstrap": "docker",
        "From": "ghcr.io/prefix-dev/pixi:0.72.0",
        "Stage": "build",
    }
    assert final.header == {"Bootstrap": "docker", "From": "ubuntu:24.04", "Stage": "final"}
    assert list(build.sections) == ["files", "post"]
    assert {"files from build", "environment", "runscript", "test", "labels"} <= set(final.sections)
    assert build.files() == [
        ("pixi.toml", "/app/pixi.toml"),
        ("pixi.lock", "/app/pixi.lock"),
        ("src", "/app/src"),
    ]
    post = build.sections["post"]
    assert "pixi install --locked --environment default" in post
    assert any(
        line.startswith("pixi shell-hook --locked --environment default --shell bash >")
        for line in post
    )
    assert any('exec "$@"' in line for line in post)
    assert not any("CONDA_OVERRIDE_CUDA" in line for line in post)


def test_final_stage_copies_only_the_environment_and_activates(simple: Workspace) -> None:
    _, final = generate(simple)
    sources = [source for source, _ in final.files("files from build")]
    assert sources == [
        "/app/.pixi/envs/default",
        "/app/.pixi/.gitignore",
        "/app/pixi.toml",
        "/app/pixi.lock",
        "/app/src",
        "/app/activate.sh",
        "/app/entrypoint.sh",
    ]
    assert all(source == target for source, target in final.files("files from build"))
    runscript = "\n".join(final.sections["runscript"])
    assert ". /app/activate.sh" in runscript and 'exec "$@"' in runscript
    test = "\n".join(final.sections["test"])
    assert ". /app/activate.sh" in test and '"$CONDA_PREFIX/conda-meta"' in test
    assert "export PATH=/app/.pixi/envs/default/bin:$PATH" in final.sections["environment"]


def test_labels_and_cuda(gpu: Workspace) -> None:
    build, final = generate(gpu, cuda="12")
    assert "export CONDA_OVERRIDE_CUDA=12" in build.sections["post"]
    assert final.header["From"] == "nvidia/cuda:12.9.1-base-ubuntu24.04"
    labels = final.labels()
    assert labels["org.pixi-deploy.lock-hash"] == plan_image(gpu).lock_hash
    assert labels["org.pixi-deploy.cuda"] == "12"
    assert any("--nv" in line for line in final.sections["help"])


def test_named_environment_gets_its_own_file(pyproject: Workspace) -> None:
    (path,) = write_apptainer(pyproject, "opstooling")
    assert path.name == "opstooling.def"
    build, final = parse_apptainer_def(path.read_text())
    assert ("pyproject.toml", "/app/pyproject.toml") in build.files()
    assert final.files("files from build")[0][0] == "/app/.pixi/envs/opstooling"
    (default,) = write_apptainer(pyproject)
    assert default.name == "pixi.def"


def test_existing_definition_is_kept(simple: Workspace) -> None:
    (simple.root / "pixi.def").write_text("mine\n")
    with pytest.raises(ContainerError, match=r"pixi\.def already exists"):
        write_apptainer(simple)
    assert (simple.root / "pixi.def").read_text() == "mine\n"


def test_parser_rejects_sections_outside_a_stage() -> None:
    with pytest.raises(ContainerError):
        parse_apptainer_def("%post\n    echo hi\n")

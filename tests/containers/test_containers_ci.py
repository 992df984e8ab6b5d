"""GitHub and GitLab pipelines: validated against the official JSON schemas, then checked for
the triggers, permissions, login conditions and path filters that make them safe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pixi_deploy.containers import CIOptions, ContainerOptions, write_github_workflows
from pixi_deploy.containers.ci import write_gitlab_ci
from pixi_deploy.errors import ContainerError
from pixi_deploy.workspace import Workspace

from .conftest import SCHEMAS


def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / name / "schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


GITHUB = _validator("github-workflow")
GITLAB = _validator("gitlab-ci")


def load(path: Path, validator: jsonschema.protocols.Validator) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
    return data


def github(workspace: Workspace, env: str | None = None, **options: Any) -> dict[str, Any]:
    container = ContainerOptions(cuda=options.pop("cuda", None))
    (path,) = write_github_workflows(workspace, env, CIOptions(container=container, **options))
    assert path.parent == workspace.root / ".github" / "workflows"
    return load(path, GITHUB)


def steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]


def test_schema_rejects_a_broken_workflow() -> None:
    """The vendored schema really validates (a typo'd key must fail)."""
    broken = {"on": "push", "jobs": {"x": {"runs-on": "ubuntu-latest", "stepz": []}}}
    assert list(GITHUB.iter_errors(broken))
    assert list(GITLAB.iter_errors({"job": {"script": "x", "stage": 3}}))


def test_github_triggers_paths_and_concurrency(simple: Workspace) -> None:
    workflow = github(simple)
    on = workflow["on"]
    assert on["push"]["branches"] == ["main"]
    assert on["push"]["tags"] == ["v*"]
    assert on["release"] == {"types": ["published"]}
    watched = {"pixi.toml", "pixi.lock", "Dockerfile", ".dockerignore"}
    assert watched <= set(on["push"]["paths"])
    assert watched <= set(on["pull_request"]["paths"])
    assert "src/**" in on["push"]["paths"]
    assert ".github/workflows/container.yml" in on["pull_request"]["paths"]
    assert "cancel-in-progress" in workflow["concurrency"]
    assert "pull_request" in workflow["concurrency"]["cancel-in-progress"]
    assert workflow["permissions"] == {"contents": "read"}


def test_github_least_permissions_and_login_only_outside_prs(simple: Workspace) -> None:
    jobs = github(simple)["jobs"]
    assert set(jobs) == {"test", "push"}
    assert jobs["test"]["permissions"] == {"contents": "read"}
    assert steps_using(jobs["test"], "docker/login-action") == []
    (build,) = steps_using(jobs["test"], "docker/build-push-action")
    assert build["with"]["load"] is True and build["with"]["push"] is False
    smoke = [s["run"] for s in jobs["test"]["steps"] if "run" in s]
    assert any("docker run --rm" in run and "conda-meta" in run for run in smoke)

    push = jobs["push"]
    assert push["permissions"] == {"contents": "read", "packages": "write"}
    assert push["if"] == "github.event_name != 'pull_request'"
    assert push["needs"] == "test"
    (login,) = steps_using(push, "docker/login-action")
    assert login["if"] == "github.event_name != 'pull_request'"
    assert login["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"
    assert steps_using(push, "docker/setup-qemu-action")
    assert steps_using(push, "docker/setup-buildx-action")
    (publish,) = steps_using(push, "docker/build-push-action")
    assert publish["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert publish["with"]["push"] is True
    (meta,) = steps_using(push, "docker/metadata-action")
    tags = meta["with"]["tags"]
    for tag in ("type=semver,pattern={{version}}", "type=ref,event=branch", "type=sha"):
        assert tag in tags
    assert "cuda" not in tags + meta["with"]["flavor"]
    # every action pinned to a major tag
    for job in jobs.values():
        for step in job["steps"]:
            if "uses" in step:
                assert step["uses"].rsplit("@", 1)[1].startswith("v")


def test_github_cuda_tags_and_single_platform(gpu: Workspace) -> None:
    push = github(gpu, cuda="12")["jobs"]["push"]
    (meta,) = steps_using(push, "docker/metadata-action")
    assert "suffix=-cuda12" in meta["with"]["flavor"]
    assert "type=raw,value=cuda12" in meta["with"]["tags"]
    (publish,) = steps_using(push, "docker/build-push-action")
    assert publish["with"]["platforms"] == "linux/amd64"  # the lock has no linux-aarch64
    assert steps_using(push, "docker/setup-qemu-action") == []


def test_github_apptainer_jobs(simple: Workspace) -> None:
    jobs = github(simple, apptainer=True)["jobs"]
    pr_job, release_job = jobs["apptainer-test"], jobs["apptainer"]
    assert pr_job["if"] == "github.event_name == 'pull_request'"
    assert pr_job["permissions"] == {"contents": "read"}
    assert release_job["if"] == "github.event_name != 'pull_request'"
    assert release_job["permissions"] == {"contents": "read", "packages": "write"}
    for job in (pr_job, release_job):
        assert steps_using(job, "eWaterCycle/setup-apptainer")
        runs = " ".join(s.get("run", "") for s in job["steps"])
        assert "build default.sif pixi.def" in runs and "test default.sif" in runs
    assert "oras://" not in " ".join(s.get("run", "") for s in pr_job["steps"])
    (push,) = [s for s in release_job["steps"] if "oras://" in s.get("run", "")]
    assert push["if"] == "github.event_name != 'pull_request'"
    assert "--password-stdin" in push["run"]
    assert "GITHUB_TOKEN" not in push["run"]  # the token only reaches the step's env


def test_github_deploy_cluster_job(simple: Workspace) -> None:
    job = github(simple, deploy_cluster=True)["jobs"]["deploy-cluster"]
    assert "github.event_name != 'pull_request'" in job["if"]
    assert "refs/heads/main" in job["if"] and "refs/tags/" in job["if"]
    assert job["permissions"] == {"contents": "read"}
    for name in ("SLURM_EDGE_NODE_HOST", "SLURM_EDGE_NODE_PORT", "SLURM_EDGE_NODE_USER"):
        assert name in job["env"]
    assert "secrets.SLURM_DEPLOYMENT_BASE_PATH" in job["env"]["SLURM_DEPLOYMENT_BASE_PATH"]
    assert "vars.SLURM_DEPLOYMENT_BASE_PATH" in job["env"]["SLURM_DEPLOYMENT_BASE_PATH"]
    (key_step,) = [s for s in job["steps"] if "SSH_PRIVATE_KEY" in s.get("env", {})]
    script = key_step["run"]
    assert "umask 077" in script and 'chmod 0600 "$key"' in script
    assert "SLURM_EDGE_NODE_KEY_PATH=$key" in script
    assert "SLURM_EDGE_NODE_KNOWN_HOSTS=$known" in script
    assert 'echo "$SSH_PRIVATE_KEY' not in script and "set -x" not in script
    assert "secrets." not in script  # secrets only through env, never interpolated into scripts
    runs = [s.get("run", "") for s in job["steps"]]
    assert any("pixi-deploy deploy --target ssh --manifest-path . -e default" in r for r in runs)
    (upload,) = steps_using(job, "actions/upload-artifact")
    assert upload["with"]["path"] == "deployment_metadata.json"


def test_github_named_environment_and_other_registry(pyproject: Workspace) -> None:
    workflow = github(pyproject, "opstooling", registry="docker.io", image="me/tools")
    assert workflow["env"] == {
        "REGISTRY": "docker.io",
        "IMAGE_NAME": "me/tools",
        "PIXI_ENVIRONMENT": "opstooling",
    }
    assert "pyproject.toml" in workflow["on"]["push"]["paths"]
    assert (pyproject.root / ".github/workflows/container-opstooling.yml").is_file()
    (login,) = steps_using(workflow["jobs"]["push"], "docker/login-action")
    assert login["with"]["password"] == "${{ secrets.REGISTRY_PASSWORD }}"


def test_github_existing_workflow_is_kept(simple: Workspace) -> None:
    path = simple.root / ".github" / "workflows" / "container.yml"
    path.parent.mkdir(parents=True)
    path.write_text("mine\n")
    with pytest.raises(ContainerError, match=r"container\.yml already exists"):
        write_github_workflows(simple)
    assert path.read_text() == "mine\n"
    write_github_workflows(simple, options=CIOptions(container=ContainerOptions(force=True)))
    load(path, GITHUB)


@pytest.mark.parametrize(
    "options",
    [{"registry": "https://ghcr.io"}, {"image": "Upper/Case"}, {"name": "../escape"}],
)
def test_invalid_ci_options(simple: Workspace, options: dict[str, str]) -> None:
    with pytest.raises(ContainerError):
        write_github_workflows(simple, options=CIOptions(**options))  # type: ignore[arg-type]


def test_gitlab_pipeline(simple: Workspace) -> None:
    options = CIOptions(apptainer=True, deploy_cluster=True)
    (path,) = write_gitlab_ci(simple, None, options)
    assert path == simple.root / ".gitlab-ci.yml"
    pipeline = load(path, GITLAB)
    rules = [r["if"] for r in pipeline["workflow"]["rules"]]
    assert '$CI_PIPELINE_SOURCE == "merge_request_event"' in rules
    assert "$CI_COMMIT_TAG =~ /^v/" in rules
    assert "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH" in rules
    test = pipeline["image-test"]
    assert test["services"] == ["docker:27-dind"]
    mr_rule = test["rules"][0]
    assert {"pixi.toml", "pixi.lock", "Dockerfile", ".dockerignore"} <= set(mr_rule["changes"])
    assert any("docker run --rm" in line for line in test["script"])
    assert "docker login" not in " ".join(test["script"] + test.get("before_script", []))
    push = pipeline["image-push"]
    assert [r["if"] for r in push["rules"]] == rules[2:]  # never on merge requests
    assert "--password-stdin" in push["before_script"][0]
    assert "$CI_REGISTRY_USER" in push["before_script"][0]
    assert any("--platform linux/amd64,linux/arm64 --push" in line for line in push["script"])
    assert pipeline["apptainer-test"]["rules"][0]["if"] == rules[0]
    assert any("oras://" in line for line in pipeline["apptainer-push"]["script"])
    deploy = pipeline["deploy-cluster"]
    assert [r["if"] for r in deploy["rules"]] == rules[2:]
    assert deploy["artifacts"]["paths"] == ["deployment_metadata.json"]
    assert any('chmod 0600 "$key"' in line for line in deploy["before_script"])
    assert deploy["script"] == ["pixi-deploy deploy --target ssh --manifest-path . -e default"]


def test_gitlab_minimal_without_optional_jobs(gpu: Workspace) -> None:
    options = CIOptions(container=ContainerOptions(cuda="12"))
    (path,) = write_gitlab_ci(gpu, None, options)
    pipeline = load(path, GITLAB)
    assert pipeline["stages"] == ["test", "push"]
    assert {k for k in pipeline if k not in ("workflow", "stages", "variables")} == {
        "image-test",
        "image-push",
    }
    assert any(":${ref}-cuda12" in line for line in pipeline["image-push"]["script"])

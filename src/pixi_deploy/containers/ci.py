"""CI pipelines that build, test and publish the images (GitHub Actions and GitLab CI).

The pipelines are Python data dumped with PyYAML, so the files are always valid YAML; the tests
validate them against GitHub's (SchemaStore) and GitLab's own JSON schemas. Pull requests and merge
requests only build and smoke-test; pushes to the default branch, ``v*`` tags and releases also log
in and push. Secrets never reach a command line or the log.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pixi_deploy.containers.apptainer import definition_name
from pixi_deploy.containers.common import ContainerOptions, ImagePlan, plan_image, write_files
from pixi_deploy.errors import ContainerError
from pixi_deploy.workspace import DEFAULT_ENVIRONMENT, LOCK_NAME, Workspace

APPTAINER_VERSION = "1.4.5"
DOCKER_VERSION = "27"
NOT_PR = "github.event_name != 'pull_request'"
ON_MAIN_OR_TAG = (
    "github.event_name != 'pull_request' && "
    "(github.ref == 'refs/heads/main' || startsWith(github.ref, 'refs/tags/'))"
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REGISTRY_RE = re.compile(r"^[a-z0-9.-]+(:\d+)?$")
_IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]*$")


@dataclass(frozen=True)
class CIOptions:
    """What the pipelines build and where they push; the image options live in ``container``."""

    container: ContainerOptions = field(default_factory=ContainerOptions)
    registry: str | None = None
    """Registry host; default ghcr.io (GitHub) / the project's registry $CI_REGISTRY (GitLab)."""
    image: str | None = None
    """Image name without registry; default the repository (GitHub) / project (GitLab) path."""
    apptainer: bool = False
    deploy_cluster: bool = False
    name: str | None = None
    """Workflow file name without ``.yml``; default ``container`` (``container-<env>``)."""
    pixi_deploy_spec: str = "pixi-deploy"
    """What the deploy job passes to ``pip install``."""


def validate_ci_options(options: CIOptions) -> None:
    if options.registry is not None and not _REGISTRY_RE.match(options.registry):
        raise ContainerError(
            f"--registry {options.registry!r} is not a registry host", "use e.g. ghcr.io"
        )
    if options.image is not None and not _IMAGE_RE.match(options.image):
        raise ContainerError(
            f"--image {options.image!r} is not a lowercase image name",
            "use e.g. my-org/my-image (no registry, no tag)",
        )
    if options.name is not None and not _NAME_RE.match(options.name):
        raise ContainerError(
            f"--name {options.name!r} is not a file name", "use letters, digits, '.', '_', '-'"
        )


# -- YAML -------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings as ``|`` blocks, lists indented under their key."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        return True  # repeat shared steps/rules instead of writing &id001 anchors


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


def _none_representer(dumper: yaml.SafeDumper, data: None) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:null", "")


_Dumper.add_representer(str, _str_representer)
_Dumper.add_representer(type(None), _none_representer)


def dump_yaml(data: dict[str, Any], header: str) -> str:
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + body


def _script(*lines: str) -> str:
    return "\n".join(lines) + "\n"


# -- GitHub Actions ---------------------------------------------------------------------------
def _workflow_name(plan: ImagePlan, options: CIOptions) -> str:
    if options.name:
        return options.name
    return (
        "container" if plan.environment == DEFAULT_ENVIRONMENT else f"container-{plan.environment}"
    )


def _watched_paths(plan: ImagePlan, workflow_file: str, extra: list[str]) -> list[str]:
    paths = [plan.manifest_name, LOCK_NAME, "Dockerfile", ".dockerignore", *extra]
    paths += [
        f"{source}/**" if (plan.workspace.root / source).is_dir() else source
        for source in plan.sources
    ]
    paths.append(workflow_file)
    return list(dict.fromkeys(paths))


def _metadata_tags(plan: ImagePlan) -> str:
    tags = [
        "type=ref,event=branch",
        "type=ref,event=pr",
        "type=semver,pattern={{version}}",
        "type=semver,pattern={{major}}.{{minor}}",
        "type=sha",
    ]
    if plan.cuda_tag:
        # every tag carries the -cudaNN suffix (flavor); plus a moving `cudaNN` tag on main
        tags.append(f"type=raw,value={plan.cuda_tag},suffix=,enable={{{{is_default_branch}}}}")
    return "\n".join(tags) + "\n"


def _metadata_flavor(plan: ImagePlan) -> str:
    flavor = ["latest=auto"]
    if plan.cuda_tag:
        flavor.append(f"suffix=-{plan.cuda_tag},onlatest=true")
    return "\n".join(flavor) + "\n"


def _credentials(registry: str) -> tuple[str, str]:
    """Expressions (not values) for the registry user and password: GITHUB_TOKEN for ghcr.io."""
    if registry == "ghcr.io":
        return "${{ github.actor }}", "${{ secrets.GITHUB_TOKEN }}"
    return "${{ secrets.REGISTRY_USERNAME }}", "${{ secrets.REGISTRY_PASSWORD }}"


def _login(registry: str) -> dict[str, Any]:
    username, password = _credentials(registry)
    return {
        "name": "Log in to the registry",
        "if": NOT_PR,
        "uses": "docker/login-action@v3",
        "with": {"registry": "${{ env.REGISTRY }}", "username": username, "password": password},
    }


def github_workflow(plan: ImagePlan, options: CIOptions) -> tuple[str, dict[str, Any]]:
    """The workflow as data: (file name, mapping). Dump with :func:`dump_yaml`."""
    name = _workflow_name(plan, options)
    workflow_file = f".github/workflows/{name}.yml"
    env = plan.environment
    extra = [definition_name(plan)] if options.apptainer else []
    paths = _watched_paths(plan, workflow_file, extra)
    image = options.image or "${{ github.repository }}"
    registry = options.registry or "ghcr.io"
    platforms = ",".join(plan.oci_platforms) or "linux/amd64"
    multi_platform = len(plan.oci_platforms) > 1
    local_tag = f"pixi-deploy-test/{env}:ci"
    test_platform = plan.oci_platforms[0] if plan.oci_platforms else "linux/amd64"
    qemu = {"name": "Set up QEMU", "uses": "docker/setup-qemu-action@v3"}
    smoke = " ".join(_sh_quote(arg) for arg in plan.smoke_command())

    checkout = {"name": "Check out", "uses": "actions/checkout@v4"}
    buildx = {"name": "Set up Docker Buildx", "uses": "docker/setup-buildx-action@v3"}
    test_job: dict[str, Any] = {
        "name": "Build and smoke-test the image",
        "runs-on": "ubuntu-latest",
        "permissions": {"contents": "read"},
        "timeout-minutes": 90,
        "steps": [
            checkout,
            *([qemu] if test_platform != "linux/amd64" else []),
            buildx,
            {
                "name": f"Build ({test_platform}, loaded into the local engine)",
                "uses": "docker/build-push-action@v6",
                "with": {
                    "context": ".",
                    "file": "Dockerfile",
                    "platforms": test_platform,
                    "load": True,
                    "push": False,
                    "tags": local_tag,
                    "cache-from": "type=gha",
                    "cache-to": "type=gha,mode=max",
                },
            },
            {
                "name": f"Smoke test: the '{env}' environment activates",
                "run": f"docker run --rm {local_tag} {smoke}\n",
            },
        ],
    }
    push_steps: list[dict[str, Any]] = [checkout]
    if multi_platform:
        push_steps.append(qemu)
    push_steps += [
        buildx,
        _login(registry),
        {
            "name": "Image tags and labels",
            "id": "meta",
            "uses": "docker/metadata-action@v5",
            "with": {
                "images": "${{ env.REGISTRY }}/${{ env.IMAGE_NAME }}",
                "flavor": _metadata_flavor(plan),
                "tags": _metadata_tags(plan),
            },
        },
        {
            "name": "Build and push",
            "uses": "docker/build-push-action@v6",
            "with": {
                "context": ".",
                "file": "Dockerfile",
                "platforms": platforms,
                "push": True,
                "tags": "${{ steps.meta.outputs.tags }}",
                "labels": "${{ steps.meta.outputs.labels }}",
                "cache-from": "type=gha",
                "cache-to": "type=gha,mode=max",
            },
        },
    ]
    jobs: dict[str, Any] = {
        "test": test_job,
        "push": {
            "name": "Build and push the image",
            "needs": "test",
            "if": NOT_PR,
            "runs-on": "ubuntu-latest",
            "permissions": {"contents": "read", "packages": "write"},
            "timeout-minutes": 180,
            "steps": push_steps,
        },
    }
    if options.apptainer:
        jobs.update(_apptainer_jobs(plan, options))
    if options.deploy_cluster:
        jobs["deploy-cluster"] = _deploy_job(plan, options)

    workflow: dict[str, Any] = {
        "name": f"Container image ({env})",
        "on": {
            "push": {"branches": ["main"], "tags": ["v*"], "paths": paths},
            "pull_request": {"paths": paths},
            "release": {"types": ["published"]},
            "workflow_dispatch": None,
        },
        "concurrency": {
            "group": "${{ github.workflow }}-${{ github.event.pull_request.number || github.ref }}",
            "cancel-in-progress": "${{ github.event_name == 'pull_request' }}",
        },
        "permissions": {"contents": "read"},
        "env": {"REGISTRY": registry, "IMAGE_NAME": image, "PIXI_ENVIRONMENT": env},
        "jobs": jobs,
    }
    return workflow_file, workflow


def _apptainer_jobs(plan: ImagePlan, options: CIOptions) -> dict[str, Any]:
    """Pull requests build + test the .sif with read-only rights; other events also push it."""
    definition = definition_name(plan)
    sif = f"{plan.environment}.sif"
    suffix = f"-{plan.cuda_tag}" if plan.cuda_tag else ""

    def steps(push: bool) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = [
            {"name": "Check out", "uses": "actions/checkout@v4"},
            {
                "name": "Set up Apptainer",
                "uses": "eWaterCycle/setup-apptainer@v2",
                "with": {"apptainer-version": APPTAINER_VERSION},
            },
            {
                # root: Ubuntu runners forbid the unprivileged user namespaces apptainer needs
                "name": f"Build {sif}",
                "run": f'sudo "$(command -v apptainer)" build {sif} {definition}\n',
            },
            {
                "name": "Test: the environment activates",
                "run": f'sudo "$(command -v apptainer)" test {sif}\n',
            },
        ]
        if push:
            user, password = _credentials(options.registry or "ghcr.io")
            result.append(
                {
                    "name": "Push the .sif as an ORAS artifact",
                    "if": NOT_PR,
                    "env": {"REGISTRY_USER": user, "REGISTRY_PASSWORD": password},
                    "run": _script(
                        'image="${IMAGE_NAME,,}"',
                        'tag="${GITHUB_REF_NAME//\\//-}"',
                        "printf '%s\\n' \"$REGISTRY_PASSWORD\" | apptainer registry login "
                        '--username "$REGISTRY_USER" --password-stdin "oras://$REGISTRY"',
                        f'apptainer push {sif} "oras://$REGISTRY/$image:${{tag}}{suffix}-sif"',
                        f'apptainer push {sif} "oras://$REGISTRY/$image:sha-${{GITHUB_SHA::7}}'
                        f'{suffix}-sif"',
                    ),
                }
            )
        return result

    return {
        "apptainer-test": {
            "name": "Build and test the Apptainer image",
            "if": "github.event_name == 'pull_request'",
            "runs-on": "ubuntu-latest",
            "permissions": {"contents": "read"},
            "timeout-minutes": 120,
            "steps": steps(push=False),
        },
        "apptainer": {
            "name": "Build, test and push the Apptainer image",
            "if": NOT_PR,
            "runs-on": "ubuntu-latest",
            "permissions": {"contents": "read", "packages": "write"},
            "timeout-minutes": 180,
            "steps": steps(push=True),
        },
    }


def _deploy_job(plan: ImagePlan, options: CIOptions) -> dict[str, Any]:
    env = plan.environment
    return {
        "name": "Deploy the environment to the Slurm cluster",
        "needs": "test",
        "if": ON_MAIN_OR_TAG,
        "runs-on": "ubuntu-latest",
        "permissions": {"contents": "read"},
        "timeout-minutes": 120,
        "concurrency": {"group": "deploy-cluster", "cancel-in-progress": False},
        "env": {
            "SLURM_EDGE_NODE_HOST": "${{ secrets.SLURM_EDGE_NODE_HOST }}",
            "SLURM_EDGE_NODE_PORT": "${{ vars.SLURM_EDGE_NODE_PORT || '22' }}",
            "SLURM_EDGE_NODE_USER": "${{ secrets.SLURM_EDGE_NODE_USER }}",
            "SLURM_DEPLOYMENT_BASE_PATH": (
                "${{ secrets.SLURM_DEPLOYMENT_BASE_PATH || vars.SLURM_DEPLOYMENT_BASE_PATH }}"
            ),
        },
        "steps": [
            {"name": "Check out", "uses": "actions/checkout@v4"},
            {
                "name": "Set up Python",
                "uses": "actions/setup-python@v5",
                "with": {"python-version": "3.11"},
            },
            {
                "name": "Install pixi-deploy",
                "run": f"python -m pip install {_sh_quote(options.pixi_deploy_spec)}\n",
            },
            {
                "name": "Write the SSH key and known hosts (0600, never printed)",
                "env": {
                    "SSH_PRIVATE_KEY": "${{ secrets.SLURM_EDGE_NODE_KEY }}",
                    "SSH_KNOWN_HOSTS": "${{ secrets.SLURM_EDGE_NODE_KNOWN_HOSTS }}",
                },
                "run": _script(
                    "umask 077",
                    'key="$RUNNER_TEMP/slurm_edge_node_key"',
                    'known="$RUNNER_TEMP/slurm_edge_node_known_hosts"',
                    'printf \'%s\\n\' "$SSH_PRIVATE_KEY" > "$key"',
                    'printf \'%s\\n\' "$SSH_KNOWN_HOSTS" > "$known"',
                    'chmod 0600 "$key" "$known"',
                    'echo "SLURM_EDGE_NODE_KEY_PATH=$key" >> "$GITHUB_ENV"',
                    'echo "SLURM_EDGE_NODE_KNOWN_HOSTS=$known" >> "$GITHUB_ENV"',
                ),
            },
            {
                "name": f"Deploy environment '{env}'",
                "run": f"pixi-deploy deploy --target ssh --manifest-path . -e {env}\n",
            },
            {
                "name": "Upload deployment metadata",
                "if": "always()",
                "uses": "actions/upload-artifact@v4",
                "with": {
                    "name": f"deployment-metadata-{env}",
                    "path": "deployment_metadata.json",
                    "if-no-files-found": "warn",
                },
            },
            {
                "name": "Remove the SSH key",
                "if": "always()",
                "run": 'rm -f "$RUNNER_TEMP/slurm_edge_node_key"\n',
            },
        ],
    }


def _sh_quote(arg: str) -> str:
    return shlex.quote(arg)


# -- GitLab CI --------------------------------------------------------------------------------
MR_RULE = {"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}
TAG_RULE = {"if": "$CI_COMMIT_TAG =~ /^v/"}
DEFAULT_BRANCH_RULE = {"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}


def gitlab_pipeline(plan: ImagePlan, options: CIOptions) -> dict[str, Any]:
    """The ``.gitlab-ci.yml`` as data (docker:dind build; push only on tags / default branch)."""
    env = plan.environment
    if (
        options.registry
    ):  # another registry: credentials from CI/CD variables REGISTRY_USER/_PASSWORD
        registry, user, password = options.registry, "$REGISTRY_USER", "$REGISTRY_PASSWORD"
        image = f"{registry}/{options.image or '$CI_PROJECT_PATH'}"
    else:
        registry, user, password = "$CI_REGISTRY", "$CI_REGISTRY_USER", "$CI_REGISTRY_PASSWORD"
        image = f"$CI_REGISTRY/{options.image}" if options.image else "$CI_REGISTRY_IMAGE"
    changes = [plan.manifest_name, LOCK_NAME, "Dockerfile", ".dockerignore", ".gitlab-ci.yml"]
    changes += [f"{s}/**/*" if (plan.workspace.root / s).is_dir() else s for s in plan.sources]
    if options.apptainer:
        changes.append(definition_name(plan))
    suffix = f"-{plan.cuda_tag}" if plan.cuda_tag else ""
    platforms = ",".join(plan.oci_platforms) or "linux/amd64"
    smoke = " ".join(_sh_quote(arg) for arg in plan.smoke_command())
    dind: dict[str, Any] = {
        "image": f"docker:{DOCKER_VERSION}",
        "services": [f"docker:{DOCKER_VERSION}-dind"],
        "variables": {"DOCKER_TLS_CERTDIR": "/certs"},
    }
    login = f'echo "{password}" | docker login --username "{user}" --password-stdin "{registry}"'
    pipeline: dict[str, Any] = {
        "workflow": {
            "rules": [
                MR_RULE,
                {"if": "$CI_COMMIT_BRANCH && $CI_OPEN_MERGE_REQUESTS", "when": "never"},
                TAG_RULE,
                DEFAULT_BRANCH_RULE,
            ]
        },
        "stages": ["test", "push", "deploy"] if options.deploy_cluster else ["test", "push"],
        "variables": {"PIXI_ENVIRONMENT": env, "IMAGE": image},
        "image-test": {
            "stage": "test",
            **dind,
            "rules": [{**MR_RULE, "changes": changes}, TAG_RULE, DEFAULT_BRANCH_RULE],
            "script": [
                f'docker build --pull --tag "pixi-deploy-test/{env}:ci" .',
                f"docker run --rm pixi-deploy-test/{env}:ci {smoke}",
            ],
        },
        "image-push": {
            "stage": "push",
            **dind,
            "needs": ["image-test"],
            "rules": [TAG_RULE, DEFAULT_BRANCH_RULE],
            "before_script": [login],
            "script": [
                *(
                    ["docker run --privileged --rm tonistiigi/binfmt --install arm64"]
                    if len(plan.oci_platforms) > 1
                    else []
                ),
                "docker buildx create --use --driver docker-container",
                'ref="${CI_COMMIT_TAG:-$CI_COMMIT_REF_SLUG}"',
                f"docker buildx build --platform {platforms} --push "
                f'--tag "$IMAGE:${{ref}}{suffix}" --tag "$IMAGE:$CI_COMMIT_SHORT_SHA{suffix}" .',
            ],
        },
    }
    if options.apptainer:
        sif = f"{env}.sif"
        apptainer_job: dict[str, Any] = {
            "image": {
                "name": f"ghcr.io/apptainer/apptainer:{APPTAINER_VERSION}",
                "entrypoint": [""],
            },
            "script": [f"apptainer build {sif} {definition_name(plan)}", f"apptainer test {sif}"],
        }
        pipeline["apptainer-test"] = {
            "stage": "test",
            **apptainer_job,
            "rules": [{**MR_RULE, "changes": changes}],
        }
        pipeline["apptainer-push"] = {
            "stage": "push",
            **apptainer_job,
            "rules": [TAG_RULE, DEFAULT_BRANCH_RULE],
            "script": [
                *apptainer_job["script"],
                f'echo "{password}" | apptainer registry login --username "{user}" '
                f'--password-stdin "oras://{registry}"',
                'ref="${CI_COMMIT_TAG:-$CI_COMMIT_REF_SLUG}"',
                f'apptainer push {sif} "oras://$IMAGE:${{ref}}{suffix}-sif"',
            ],
        }
    if options.deploy_cluster:
        pipeline["deploy-cluster"] = {
            "stage": "deploy",
            "image": "python:3.11-slim",
            "needs": ["image-test"],
            "rules": [TAG_RULE, DEFAULT_BRANCH_RULE],
            "resource_group": "deploy-cluster",
            "variables": {"SLURM_EDGE_NODE_PORT": "22"},
            "before_script": [
                f"python -m pip install {_sh_quote(options.pixi_deploy_spec)}",
                "umask 077",
                "key=/tmp/slurm_edge_node_key; known=/tmp/slurm_edge_node_known_hosts",
                # CI/CD variables SLURM_EDGE_NODE_KEY / _KNOWN_HOSTS_DATA (masked, protected)
                'printf \'%s\\n\' "$SLURM_EDGE_NODE_KEY" > "$key"',
                'printf \'%s\\n\' "$SLURM_EDGE_NODE_KNOWN_HOSTS_DATA" > "$known"',
                'chmod 0600 "$key" "$known"',
                'export SLURM_EDGE_NODE_KEY_PATH="$key" SLURM_EDGE_NODE_KNOWN_HOSTS="$known"',
            ],
            "script": [f"pixi-deploy deploy --target ssh --manifest-path . -e {env}"],
            "after_script": ["rm -f /tmp/slurm_edge_node_key"],
            "artifacts": {
                "when": "always",
                "paths": ["deployment_metadata.json"],
                "expire_in": "90 days",
            },
        }
    return pipeline


# -- public API -------------------------------------------------------------------------------
def _plan(workspace: Workspace, environment: str | None, options: CIOptions) -> ImagePlan:
    validate_ci_options(options)
    return plan_image(workspace, environment, options.container)


def _header(plan: ImagePlan, command: str, options: CIOptions) -> str:
    built = "the Dockerfile" + (f" and {definition_name(plan)}" if options.apptainer else "")
    return (
        f"Generated by `{command}` for {plan.workspace_name} (environment '{plan.environment}').\n"
        f"Builds {built} that pixi-deploy wrote; regenerate rather than edit by hand."
    )


def write_github_workflows(
    workspace: Workspace, environment: str | None = None, options: CIOptions | None = None
) -> list[Path]:
    """Write ``.github/workflows/<name>.yml`` into the workspace; returns the paths written."""
    options = options or CIOptions()
    plan = _plan(workspace, environment, options)
    relative, workflow = github_workflow(plan, options)
    text = dump_yaml(
        workflow, _header(plan, f"pixi-deploy ci github -e {plan.environment}", options)
    )
    out = (options.container.output_dir or workspace.root).resolve()
    return write_files({out / relative: text}, force=options.container.force)


def write_gitlab_ci(
    workspace: Workspace, environment: str | None = None, options: CIOptions | None = None
) -> list[Path]:
    """Write ``.gitlab-ci.yml`` into the workspace; returns the paths written."""
    options = options or CIOptions()
    plan = _plan(workspace, environment, options)
    text = dump_yaml(
        gitlab_pipeline(plan, options),
        _header(plan, f"pixi-deploy ci gitlab -e {plan.environment}", options),
    )
    out = (options.container.output_dir or workspace.root).resolve()
    return write_files({out / ".gitlab-ci.yml": text}, force=options.container.force)


def with_container(options: CIOptions, **changes: Any) -> CIOptions:
    return replace(options, container=replace(options.container, **changes))

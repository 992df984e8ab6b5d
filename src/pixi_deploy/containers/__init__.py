"""Container images of a locked pixi environment: Dockerfile, Apptainer definition, CI pipelines.

Every CLI command is one call here::

    from pixi_deploy.workspace import load_workspace
    from pixi_deploy.containers import ContainerOptions, write_dockerfile

    ws = load_workspace(Path("."))
    write_dockerfile(ws, "prod", ContainerOptions(cuda="12", port=8000))
"""

from pixi_deploy.containers.apptainer import definition_name, render_apptainer, write_apptainer
from pixi_deploy.containers.ci import (
    CIOptions,
    dump_yaml,
    github_workflow,
    gitlab_pipeline,
    write_github_workflows,
    write_gitlab_ci,
)
from pixi_deploy.containers.common import (
    DEFAULT_PIXI_VERSION,
    ContainerOptions,
    ImagePlan,
    plan_image,
)
from pixi_deploy.containers.dockerfile import (
    render_dockerfile,
    render_dockerignore,
    write_dockerfile,
)

__all__ = [
    "DEFAULT_PIXI_VERSION",
    "CIOptions",
    "ContainerOptions",
    "ImagePlan",
    "definition_name",
    "dump_yaml",
    "github_workflow",
    "gitlab_pipeline",
    "plan_image",
    "render_apptainer",
    "render_dockerfile",
    "render_dockerignore",
    "write_apptainer",
    "write_dockerfile",
    "write_github_workflows",
    "write_gitlab_ci",
]

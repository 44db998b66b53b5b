"""RunnerImage: the runner image, built by Pulumi from images/runner/Dockerfile on one Docker host."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pulumi
import pulumi_docker as docker

from components.settings import ImageBuild

COMPONENT_TYPE = "gitlab-runners:index:RunnerImage"
# Relative to the project root, where the engine runs the program: no host path lands in the state.
DOCKERFILE_DIR = Path("images") / "runner"
SOURCE = "gitlab-runners:images/runner/Dockerfile"


class RunnerImageArgs(NamedTuple):
    build: ImageBuild
    """Base image, runner version, flavour and extra packages."""

    platform: str | None = None
    """The platform to build for; None: the machine running pulumi's (the docker provider's default)."""

    fleeting_plugins: tuple[str, ...] = ()
    """Fleeting plugins (pinned references) the autoscaling runners on this host load; installed at build."""

    context_dir: str = str(DOCKERFILE_DIR)
    """The build context holding the Dockerfile; no secret is ever part of it."""


def build_args(build: ImageBuild, fleeting_plugins: tuple[str, ...] = ()) -> dict[str, str]:
    """The Dockerfile's build arguments: only public facts, never a token."""
    return {
        "BASE_IMAGE": build.resolved_base_image,
        "RUNNER_VERSION": build.runner_version,
        "FLAVOR": build.flavor,
        "EXTRA_PACKAGES": " ".join(build.extra_packages),
        "FLEETING_PLUGINS": " ".join(fleeting_plugins),
        "SOURCE": SOURCE,
    }


class RunnerImage(pulumi.ComponentResource):
    """A local runner image on one host; it is not pushed anywhere."""

    image_ref: pulumi.Output[str]
    """The built image's ID (sha256:…), so a rebuilt image replaces the containers using it."""

    image_name: pulumi.Output[str]
    """The image's repository and tag."""

    def __init__(self, name: str, args: RunnerImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        image = docker.Image(
            f"{name}-image",
            image_name=args.build.tag,
            build=docker.DockerBuildArgs(
                context=args.context_dir,
                dockerfile=str(Path(args.context_dir) / "Dockerfile"),
                args=build_args(args.build, args.fleeting_plugins),
                platform=args.platform,
            ),
            skip_push=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.image_name = image.image_name
        # With skip_push the provider answers the local image ID here.
        self.image_ref = image.repo_digest
        self.register_outputs({"imageName": self.image_name, "imageRef": self.image_ref})

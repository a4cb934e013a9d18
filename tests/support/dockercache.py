"""The docker tests' dependency layer, built once per lock file and kept across test runs.

An image build's ``deps`` stage (``builder/image.py``: ``uv sync`` of the release's
pyproject.toml and uv.lock, labelled ``crewship.deps``) is the slow part of a docker
deploy: it downloads and installs every wheel. Docker's layer cache makes the next build
of the same lock free, but only while that stage's image exists, and an untagged one goes
with the first prune of dangling layers (a test's cleanup, or a server's own clean-up of
the dependency stages its releases no longer use). So after every docker test module the
dependency stages this machine has are tagged ``crewship-test-deps:<n>``: the next build
of the same files, in this run or the next, finds its layer, and the product's clean-up
leaves tagged images alone. The same for the ``venv`` stage (the environment copied out
of the dependency stage, ~1 GB for crewai: copying it costs dockerd ~10 s of CPU), which
goes with the last image built on it: test cleanups call ``keep_dependency_layers``
before they remove their apps' images. Only the newest ``KEEP`` of each are kept tagged.

Remove them all with ``docker rmi $(docker images -q crewship-test-deps)``.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

DEPS_LABEL = "crewship.deps"
VENV_LABEL = "crewship.venv"
MANAGED_LABEL = "crewship.managed"  # an app's image (built on a venv stage, so labelled too)
TAG_REPO = "crewship-test-deps"
KEEP = 4


def keep_dependency_layers(client: Any) -> list[str]:
    """Tag every untagged dependency and venv stage; untag the oldest beyond ``KEEP`` of
    each. Returns the tags it added."""
    import docker.errors

    added: list[str] = []
    for label in (DEPS_LABEL, VENV_LABEL):
        try:
            # a venv stage with images built on it is an intermediate image: all=True
            stages = [image for image in client.images.list(all=label == VENV_LABEL,
                                                            filters={"label": label})
                      if MANAGED_LABEL not in image.labels]
        except docker.errors.DockerException:
            continue
        for image in stages:
            if image.tags:
                continue
            tag = hashlib.sha256(image.id.encode()).hexdigest()[:16]
            with contextlib.suppress(docker.errors.DockerException):
                image.tag(TAG_REPO, tag)
                added.append(f"{TAG_REPO}:{tag}")
        with contextlib.suppress(docker.errors.DockerException):
            kept = sorted((i for i in client.images.list(name=TAG_REPO) if label in i.labels
                           and MANAGED_LABEL not in i.labels),
                          key=lambda i: i.attrs.get("Created", ""), reverse=True)
            for image in kept[KEEP:]:
                for tag in image.tags:
                    if tag.startswith(f"{TAG_REPO}:"):
                        with contextlib.suppress(docker.errors.DockerException):
                            client.images.remove(tag)
    return added

"""What a release's instances run: argv, environment, sandbox and limits.

``InstanceSpecs.for_release`` reads a built release (builder/release.py) and answers the
supervisor's ``MakeSpec``: the ``InstanceSpec`` of slot ``index`` on ``port``.

- a venv build (the process runtime): the release's runner in the app's sandbox, HOME
  the app's home, the host settings a crew needs to reach its LLM (``PASSTHROUGH``),
  the app's config, crewai's telemetry off; and the app's preloaded parent
  (``PreloadSpec``), which gets the same base environment without the config values.
- an image build (the docker and swarm runtimes): the runner inside the release's image
  (the image sets PATH, HOME and the CA bundle), the app's memory and CPU limits and
  swarm placement.

A build of the other kind is refused with what to do: push again to rebuild it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from builder.release import ReleaseMeta, load_release, refresh_runner, runner_argv
from crewship import log
from crewship.config import Layout, Settings
from crewship.errors import DeployError
from crewship.store.apps import AppStore
from runtime.backend import InstanceSpec, PreloadSpec

logger = log.get("crewship.service.specs")

TELEMETRY_OFF = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "CREWAI_DISABLE_VERSION_CHECK": "true",
}
# Host settings a crew needs to reach its LLM the way the server would (proxies, CAs).
PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR",
               "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
               "http_proxy", "https_proxy", "no_proxy")
# In a container the image sets PATH, HOME and SSL_CERT_FILE (the host's CA bundle, copied).
CONTAINER_PASSTHROUGH = ("LANG", "LC_ALL", "TZ", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                         "http_proxy", "https_proxy", "no_proxy")
IMAGE_RUNTIMES = ("docker", "swarm")   # runtimes that run the release's image
SpecFactory = Callable[[int, int], InstanceSpec]


class InstanceSpecs:
    """The instance specs of an app's releases under this server's runtime."""

    def __init__(self, settings: Settings, layout: Layout, apps: AppStore) -> None:
        self.settings = settings
        self.layout = layout
        self.apps = apps

    def for_release(self, app: str, version: int, artifact: Path,
                    config: dict[str, str]) -> SpecFactory:
        """The spec of each instance (slot, port) of ``version``, built at ``artifact``."""
        meta = load_release(artifact)
        if (meta.image is not None) != (self.settings.runtime in IMAGE_RUNTIMES):
            built = "an image" if meta.image else "a venv"
            raise DeployError(f"v{version} of {app} was built as {built}, which the "
                              f"{self.settings.runtime} runtime cannot run: push again to "
                              "rebuild it")
        if meta.image is not None:
            return self._image_specs(app, version, meta, config)
        if refresh_runner(meta.runner):
            logger.info("release_runner_refreshed", app=app, release=version)
        home = self.layout.app_home(app)
        home.mkdir(parents=True, exist_ok=True)
        base = {k: os.environ[k] for k in PASSTHROUGH if k in os.environ}
        base.update(TELEMETRY_OFF)
        base.update({"HOME": str(home), "CREWSHIP_APP": app, "PYTHONUNBUFFERED": "1"})
        env = {k: os.environ[k] for k in PASSTHROUGH if k in os.environ}
        env.update(config)
        env.update(TELEMETRY_OFF)
        env.update({"HOME": str(home), "CREWSHIP_APP": app, "CREWSHIP_RELEASE": f"v{version}",
                    "PYTHONUNBUFFERED": "1"})
        # The app's preloaded parent imports crewai with the base environment only: config
        # values never reach it, so a config:set forks from the same parent.
        preload = PreloadSpec(key=meta.env_key, python=str(meta.python_path), runner=meta.runner,
                              releases=meta.dir.parent, env_path=meta.env_path, env=base)

        fresh = self.apps.get(app)
        uid = self.apps.sandbox_uid(fresh) if fresh is not None else None

        def make_spec(index: int, port: int) -> InstanceSpec:
            instance = f"v{version}.{index}"
            return InstanceSpec(app=app, release=version, index=index,
                                argv=runner_argv(meta, "127.0.0.1", port, instance),
                                env=dict(env), cwd=meta.app_dir, port=port,
                                readonly=(meta.dir, meta.env_path), home=home, uid=uid,
                                preload=preload)
        return make_spec

    def _image_specs(self, app: str, version: int, meta: ReleaseMeta,
                     config: dict[str, str]) -> SpecFactory:
        """A container of the release's image: the image sets PATH, HOME and the CA bundle."""
        from builder.image import IMAGE_APP_DIR  # the docker SDK: only where images run

        env = {k: os.environ[k] for k in CONTAINER_PASSTHROUGH if k in os.environ}
        env.update(config)
        env.update(TELEMETRY_OFF)
        env.update({"CREWSHIP_APP": app, "CREWSHIP_RELEASE": f"v{version}",
                    "PYTHONUNBUFFERED": "1"})
        fresh = self.apps.get(app)
        memory = fresh.memory_limit if fresh else None
        cpus = fresh.cpu_limit if fresh else None
        placement = fresh.placement if fresh else ()
        image = meta.image

        def make_spec(index: int, port: int) -> InstanceSpec:
            instance = f"v{version}.{index}"
            return InstanceSpec(app=app, release=version, index=index,
                                argv=runner_argv(meta, "127.0.0.1", port, instance,
                                                 root=IMAGE_APP_DIR),
                                env=dict(env), cwd=Path(IMAGE_APP_DIR), port=port,
                                image=image, memory=memory, cpus=cpus, placement=placement)
        return make_spec

"""A release as a Docker image, built through the Docker SDK (the ``docker`` runtime).

The release directory is assembled exactly as for the process runtime (``app/``, the
runner, ``release.json``), then an image is built from a generated Dockerfile::

    FROM <CREWSHIP_BASE_IMAGE>                     base (python3 and venv inside)
    user crew (uid 10001), the host's CA bundle, uv (the server's own binary)
    COPY pyproject.toml uv.lock; RUN uv sync ...   stage ``deps``: depends ONLY on those two
                                                   files (and the base), so a code-only push
                                                   finds it in the cache
    FROM <base>; user crew; CA                     the final stage:
    COPY --from=deps /app/.venv                    the environment, without the build args
    COPY app/ /app/; COPY crewship_runner/        the code layer
    USER crew

The build runs with host networking so uv reaches the package index the host uses; the
host's index settings (``UV_*`` variables, pip config) go in as build args and its CA
bundle (``SSL_CERT_FILE`` / pip's ``cert``) is copied in, as a build behind a corporate
proxy needs. Only the ``deps`` stage sees the build args, so an index URL's password is
never in the final image's history; when one carries credentials, the ``deps`` stage
images (whose history records the args) are removed after the build, so no image keeps
them (the price: dependencies install again on each build). uv is the server's own
binary (the one that validated the lockfile), so no download is needed to get it. The
image is tagged ``crewship/APP:vN``, labelled ``crewship.app``, ``crewship.release``,
``crewship.commit``; its id goes into ``release.json`` (``image``). Images follow the
release directories: when a build is pruned (keep the last 5) its image goes too, and so
do the dangling layers.

    BuildError
    ├── DockerUnavailableError   no Docker daemon answers (what to start)
    └── (plain)                  base image missing, a failing build step
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors

from builder.env import EnvBuilder, EnvRef, Interpreter, env_key
from builder.release import (
    RELEASE_FILE,
    RUNNER_DIR,
    BuiltRelease,
    ReleaseBuilder,
    Steps,
    build_dirs,
    load_release,
    publish,
    remove_tree,
)
from crewship import dockerd
from crewship.config import Layout
from crewship.errors import BuildError
from crewship.log import get as get_logger
from crewship.reporter import Reporter

log = get_logger(__name__)

IMAGE_APP_DIR = "/app"
IMAGE_VENV = "/app/.venv"
IMAGE_HOME = "/home/crew"
IMAGE_UID = 10001
BUILD_TIMEOUT = 1800.0
MANAGED_LABEL = "crewship.managed"
DEPS_LABEL = "crewship.deps"   # the dependency stage (the build cache of the environment)
VENV_LABEL = "crewship.venv"   # the environment copied out of it: every image of the lock's base
MKIMAGE_HINT = ("mmdebstrap --variant=apt --include=python3,python3-venv,ca-certificates "
                "bookworm - | docker import - crewship-base:bookworm")
INDEX_VARS = ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "UV_INDEX",
              "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "UV_NATIVE_TLS")
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
_DEPS_MARK = "uv sync"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class DockerUnavailableError(BuildError):
    """No Docker daemon answers."""


def connect(timeout: float = 60.0) -> docker.DockerClient:
    """A client of the local Docker daemon, or ``DockerUnavailableError`` saying what to do."""
    return dockerd.connect(timeout, DockerUnavailableError)


# ---- the host's package index settings and CA bundle ------------------------------------


def _pip_config_files() -> list[Path]:
    explicit = os.environ.get("PIP_CONFIG_FILE")
    if explicit:
        return [Path(explicit)]
    home = Path.home()
    xdg = os.environ.get("XDG_CONFIG_HOME", str(home / ".config"))
    return [Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"), home / ".pip/pip.conf",
            Path(xdg) / "pip/pip.conf"]


def pip_config() -> dict[str, str]:
    """``index-url``, ``extra-index-url`` and ``cert`` from pip's config files (later wins)."""
    found: dict[str, str] = {}
    for path in _pip_config_files():
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue
        if parser.has_section("global"):
            for key in ("index-url", "extra-index-url", "cert"):
                if parser.has_option("global", key):
                    found[key] = parser.get("global", key)
    return found


def _reachable(urls: str) -> str:
    """Only the http(s) URLs of a space-separated list: a file:// index is not in the image."""
    return " ".join(u for u in urls.split() if u.startswith(("http://", "https://")))


def build_args(env: dict[str, str] | None = None) -> dict[str, str]:
    """Index and proxy settings for the build, from the environment and pip's config."""
    source = dict(os.environ if env is None else env)
    pip = pip_config() if env is None else {}
    args: dict[str, str] = {}
    if "index-url" in pip and "PIP_INDEX_URL" not in source:
        source["PIP_INDEX_URL"] = pip["index-url"]
    if "extra-index-url" in pip and "PIP_EXTRA_INDEX_URL" not in source:
        source["PIP_EXTRA_INDEX_URL"] = pip["extra-index-url"]
    for name in INDEX_VARS:
        value = source.get(name, "")
        value = value if name == "UV_NATIVE_TLS" else _reachable(value)
        if value:
            args[name] = value
    # uv reads UV_*; pip's settings mean the same to it when no UV_* one is set.
    if "PIP_INDEX_URL" in args and not ({"UV_INDEX_URL", "UV_DEFAULT_INDEX"} & set(args)):
        args["UV_DEFAULT_INDEX"] = args["PIP_INDEX_URL"]
    if "PIP_EXTRA_INDEX_URL" in args and not ({"UV_EXTRA_INDEX_URL", "UV_INDEX"} & set(args)):
        args["UV_INDEX"] = args["PIP_EXTRA_INDEX_URL"]
    args.update({k: source[k] for k in PROXY_VARS if source.get(k)})
    return args


def ca_bundle(env: dict[str, str] | None = None) -> Path | None:
    """The CA bundle the host trusts: ``SSL_CERT_FILE``, pip's ``cert``, or the system's."""
    source = os.environ if env is None else env
    candidates = [source.get("SSL_CERT_FILE"), source.get("PIP_CERT"),
                  pip_config().get("cert") if env is None else None,
                  source.get("REQUESTS_CA_BUNDLE"), "/etc/ssl/certs/ca-certificates.crt"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


# ---- the Dockerfile ---------------------------------------------------------------------


def dockerfile(base: str, *, with_ca: bool, args: AbstractSet[str], deps_key: str = "") -> str:
    """The generated Dockerfile: a ``deps`` stage that installs the environment (the only
    place the index settings go in); a ``venv`` stage, the crew's user and the environment
    copied out of ``deps``, so no build arg (an index URL may carry a password) is in the
    final image's history; and the final stage, that plus the code and the runner.

    The ``venv`` stage depends on the lock file alone (its last layer is labelled with the
    lock's key): a code-only build, or another app's build of the same lock, starts from
    it instead of copying the environment (~1 GB for crewai) again."""
    ca = "/etc/crewship/ca-bundle.crt"
    ca_lines = [f"COPY ca-bundle.crt {ca}",
                f"ENV SSL_CERT_FILE={ca} REQUESTS_CA_BUNDLE={ca} PIP_CERT={ca}"] if with_ca else []
    deps = [
        f"FROM {base} AS deps",
        f'LABEL {DEPS_LABEL}="{deps_key or "true"}"',
        *ca_lines,
        "COPY uv /usr/local/bin/uv",
        *[f"ARG {name}" for name in sorted(args) if name not in PROXY_VARS],
        f"ENV UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT={IMAGE_VENV} UV_LINK_MODE=copy "
        "UV_NO_PROGRESS=1",
        f"WORKDIR {IMAGE_APP_DIR}",
        f"COPY deps/pyproject.toml deps/uv.lock {IMAGE_APP_DIR}/",
        "RUN uv sync --frozen --no-install-project --no-dev --compile-bytecode --no-cache "
        "--python python3",
    ]
    venv = [
        f"FROM {base} AS venv",
        f"RUN (command -v useradd >/dev/null && useradd --uid {IMAGE_UID} --user-group "
        f"--create-home --home-dir {IMAGE_HOME} --shell /bin/sh crew) || "
        f"(echo 'crew:x:{IMAGE_UID}:{IMAGE_UID}::{IMAGE_HOME}:/bin/sh' >> /etc/passwd && "
        f"echo 'crew:x:{IMAGE_UID}:' >> /etc/group && mkdir -p {IMAGE_HOME} && "
        f"chown {IMAGE_UID}:{IMAGE_UID} {IMAGE_HOME})",
        *ca_lines,
        f"WORKDIR {IMAGE_APP_DIR}",
        f"COPY --from=deps {IMAGE_VENV} {IMAGE_VENV}",
        f'LABEL {VENV_LABEL}="{deps_key or "true"}"',
    ]
    final = [
        "FROM venv",
        f'LABEL {MANAGED_LABEL}="true"',
        f"COPY app/ {IMAGE_APP_DIR}/",
        f"COPY {RUNNER_DIR}/ {IMAGE_APP_DIR}/{RUNNER_DIR}/",
        f"ENV PATH={IMAGE_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
        f"HOME={IMAGE_HOME} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1",
        f"USER {IMAGE_UID}:{IMAGE_UID}",
    ]
    return "\n".join([*deps, "", *venv, "", *final]) + "\n"


def secret_values(args: dict[str, str]) -> list[str]:
    """The passwords (and tokens) in the build args' URLs: what no image may keep."""
    found: list[str] = []
    for name, value in args.items():
        if name in PROXY_VARS:
            continue  # docker never records the predefined proxy args in an image
        for url in value.split():
            with contextlib.suppress(ValueError):
                parts = urlsplit(url)
                found += [v for v in (parts.password, parts.username if parts.password is None
                                      else None) if v]
    return found


def write_context(ctx: Path, release_work: Path, base: str, uv: str,
                  args: AbstractSet[str], ca: Path | None, deps_key: str = "") -> None:
    """The build context: Dockerfile, uv, the CA bundle, deps/ (lock only), app/, runner."""
    ctx.mkdir(parents=True)
    (ctx / "deps").mkdir()
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copyfile(release_work / "app" / name, ctx / "deps" / name)
    shutil.copytree(release_work / "app", ctx / "app", symlinks=True)
    shutil.copytree(release_work / RUNNER_DIR, ctx / RUNNER_DIR)
    shutil.copyfile(uv, ctx / "uv")
    (ctx / "uv").chmod(0o755)
    if ca is not None:
        shutil.copyfile(ca, ctx / "ca-bundle.crt")
        (ctx / "ca-bundle.crt").chmod(0o644)
    _normalize_modes(ctx)
    (ctx / "Dockerfile").write_text(dockerfile(base, with_ca=ca is not None, args=args,
                                               deps_key=deps_key))


def _normalize_modes(root: Path) -> None:
    """Same bytes, same modes: the layer cache must not depend on the host's umask."""
    for dirpath, _dirs, files in os.walk(root):
        Path(dirpath).chmod(0o755)
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                path.chmod(0o755 if os.access(path, os.X_OK) else 0o644)


# ---- running a build and reading its stream -----------------------------------------------


@dataclass
class BuildProgress:
    """What the build stream said: steps, cache hits, the image id, the error."""

    report: Reporter
    step: str = ""
    step_lines: list[str] = field(default_factory=list)
    deps_cached: bool | None = None
    image_id: str | None = None
    error: str | None = None
    python: str = ""
    _pending: str = ""
    _step_shown: bool = True

    def feed(self, chunk: dict[str, Any]) -> None:
        """One decoded chunk of the build stream (a line may come in many pieces)."""
        if "error" in chunk:
            self.flush()
            self.error = str(chunk.get("errorDetail", {}).get("message") or chunk["error"])
        elif "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
            self.image_id = str(chunk["aux"]["ID"])
        text = self._pending + _ANSI.sub("", str(chunk.get("stream", "")))
        *lines, self._pending = text.split("\n")
        for line in lines:
            self._line(line.rstrip())

    def flush(self) -> None:
        if self._pending:
            line, self._pending = self._pending, ""
            self._line(line.rstrip())

    def _line(self, line: str) -> None:
        text = line.strip()
        if not text or text.startswith(("---> Running in", "Removing intermediate")):
            return
        if text.startswith("Step "):
            self._show_step()
            self.step, self.step_lines, self._step_shown = text, [], False
            return
        if text.startswith("--->"):
            if text == "---> Using cache":
                if _DEPS_MARK in self.step:
                    self.deps_cached = True
                    self._show_step(" (cached)")
                    self.report.info("dependency layer cached (uv.lock and pyproject.toml "
                                     "unchanged): nothing installed")
                else:
                    self._show_step(" (cached)")
            return
        self._show_step()
        self.step_lines.append(text)
        if _DEPS_MARK in self.step:
            self.deps_cached = False
            if text.startswith("Using CPython"):
                self.python = text.split()[2]
            if text.startswith(("+ ", "- ", "~ ")):
                return  # one line per package is noise; uv's summary lines say enough
        if not text.startswith(("Successfully built", "Successfully tagged")):
            self.report.info(text)

    def _show_step(self, suffix: str = "") -> None:
        """The pending ``Step k/N : ...`` line, once, shortened, marked when cached."""
        if self.step and not self._step_shown:
            shown = self.step if len(self.step) <= 100 else self.step[:97] + "..."
            self.report.info(shown + suffix)
            self._step_shown = True

    def failure(self) -> BuildError:
        where = f" at {self.step}" if self.step else ""
        tail = "\n".join(self.step_lines[-15:])
        return BuildError(f"image build failed{where}: {self.error}" + (f"\n{tail}" if tail else ""))


def _run_build(client: docker.DockerClient, ctx: Path, tag: str, labels: dict[str, str],
               args: dict[str, str], emit: Callable[[dict[str, Any]], None],
               no_cache: bool) -> None:
    stream: Iterator[dict[str, Any]] = client.api.build(
        path=str(ctx), tag=tag, labels=labels, buildargs=args, network_mode="host",
        rm=True, forcerm=True, decode=True, pull=False, nocache=no_cache,
        timeout=int(BUILD_TIMEOUT))
    for chunk in stream:
        emit(chunk)


async def build_image(client: docker.DockerClient, ctx: Path, tag: str, labels: dict[str, str],
                      args: dict[str, str], report: Reporter,
                      no_cache: bool = False) -> BuildProgress:
    """Build ``ctx`` into ``tag``, reporting each step as it comes; ``BuildError`` on failure."""
    loop = asyncio.get_running_loop()
    progress = BuildProgress(report)
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def emit(chunk: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, chunk)

    async def consume() -> None:
        while (chunk := await queue.get()) is not None:
            progress.feed(chunk)
        progress.flush()
        progress._show_step()

    consumer = asyncio.create_task(consume())
    try:
        await asyncio.to_thread(_run_build, client, ctx, tag, labels, args, emit, no_cache)
    except docker.errors.DockerException as exc:
        progress.error = progress.error or str(exc)
    finally:
        loop.call_soon_threadsafe(queue.put_nowait, None)
        await consumer
    if progress.error or not progress.image_id:
        progress.error = progress.error or "the build ended without an image"
        raise progress.failure()
    return progress


# dockerd's words when a cached layer went while the build ran (another server's cleanup)
LOST_LAYER = ("unknown parent image ID", "failed to get digest", "failed to get destination image")


def forget_secrets(client: docker.DockerClient, secrets: list[str]) -> int:
    """Remove the dependency-stage images whose history records one of ``secrets``."""
    removed = 0
    for image in client.images.list(all=True, filters={"label": DEPS_LABEL}):
        try:
            history = " ".join(str(h.get("CreatedBy") or "") for h in image.history())
        except docker.errors.DockerException:
            continue
        if any(secret in history for secret in secrets):
            with contextlib.suppress(docker.errors.DockerException):
                client.images.remove(image.id, force=False, noprune=False)
                removed += 1
    return removed


# ---- the builder --------------------------------------------------------------------------


class ImageBuilder(ReleaseBuilder):
    """Builds ``releases/<app>/v<N>/`` plus its image ``crewship/<app>:v<N>``."""

    def __init__(self, layout: Layout, envs: EnvBuilder, base_image: str,
                 runner_source: Path | None = None,
                 client_factory: Callable[[], docker.DockerClient] | None = None,
                 no_cache: bool = False) -> None:
        super().__init__(layout, envs, runner_source)
        self.base_image = base_image
        self.no_cache = no_cache  # every layer built afresh (benchmarks of a full build)
        self._client_factory = client_factory or (lambda: connect(BUILD_TIMEOUT))
        self._client: docker.DockerClient | None = None
        self._building = 0  # builds in flight: their untagged layers look dangling

    async def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = await asyncio.to_thread(self._client_factory)
        return self._client

    async def build(self, app: str, version: int, repo: Path, commit: str, report: Reporter,
                    config_keys: AbstractSet[str] = frozenset()) -> BuiltRelease:
        dest, work = build_dirs(self.layout, app, version)
        self._building += 1
        try:
            report.step("Validating")
            info = await self._validate(repo, commit, work / "app", report, config_keys,
                                        Steps())
            client = await self.client()
            await self._check_base(client)
            key = env_key((work / "app" / "uv.lock").read_bytes(),
                          Interpreter(self.base_image, "", self.base_image, self.base_image))
            self._place_runner(work)
            report.step(f"Building image crewship/{app}:v{version} (base {self.base_image})")
            progress = await self._build(client, app, version, commit, work, report,
                                         deps_key=f"image-{key}")
            env = EnvRef(f"image-{key}", Path(IMAGE_VENV), Path(IMAGE_VENV) / "bin" / "python",
                         progress.python or "image", cache_hit=bool(progress.deps_cached))
            self._assemble(app, version, commit, work, env, info, image=progress.image_id)
            publish(work, dest)
        finally:
            self._building -= 1
            if work.exists():
                await asyncio.to_thread(remove_tree, work)
        meta = load_release(dest)
        report.info(f"release v{version}: {info.kind} {info.package}, image "
                    f"{(meta.image or '')[7:19]}")
        return BuiltRelease(app, version, commit, dest, env, info, meta)

    async def _check_base(self, client: docker.DockerClient) -> None:
        try:
            await asyncio.to_thread(client.images.get, self.base_image)
        except docker.errors.ImageNotFound:
            raise BuildError(
                f"the base image {self.base_image} is not on this Docker host: pull it "
                f"(`docker pull {self.base_image}`), or build one without a registry: "
                f"`{MKIMAGE_HINT}` and start the server with "
                "CREWSHIP_BASE_IMAGE=crewship-base:bookworm") from None
        except docker.errors.DockerException as exc:
            raise DockerUnavailableError(f"Docker failed looking for the base image: {exc}: "
                                         f"{dockerd.DOCKERD_HINT}") from exc

    async def _build(self, client: docker.DockerClient, app: str, version: int, commit: str,
                     work: Path, report: Reporter, deps_key: str = "") -> BuildProgress:
        args = build_args()
        ctx = self.layout.tmp / f"context-{app}-v{version}-{uuid.uuid4().hex[:8]}"
        try:
            await asyncio.to_thread(write_context, ctx, work, self.base_image, self.envs.uv,
                                    set(args), ca_bundle(), deps_key)
            labels = {"crewship.app": app, "crewship.release": str(version),
                      "crewship.commit": commit}
            for attempt in (1, 2):
                try:
                    progress = await build_image(client, ctx, f"crewship/{app}:v{version}",
                                                 labels, args, report, self.no_cache)
                    break
                except BuildError as exc:
                    if attempt == 2 or not any(words in str(exc) for words in LOST_LAYER):
                        raise
                    report.info("a layer this build stood on was removed meanwhile (another "
                                "server's image cleanup on this Docker host): building again")
        finally:
            await asyncio.to_thread(shutil.rmtree, ctx, True)
            if secrets := secret_values(args):
                removed = await asyncio.to_thread(forget_secrets, client, secrets)
                if removed:
                    report.info("the package index URL carries credentials: the dependency "
                                "stage is not kept in any image (dependencies install again "
                                "on each build)")
        log.info("image_built", app=app, release=version, image=progress.image_id,
                 deps_cached=progress.deps_cached)
        return progress

    def remove_release(self, app: str, version: int) -> None:
        """The release directory and its image (unless a container still uses it)."""
        image = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            image = json.loads((self.layout.release_dir(app, version) / RELEASE_FILE)
                               .read_text()).get("image")
        super().remove_release(app, version)
        if image and self._client is not None:
            self._remove_image(self._client, str(image))

    async def gc_artifacts(self, app: str) -> list[str]:
        """Images of ``app`` no remaining release directory names, and dangling layers."""
        client = await self.client()
        try:
            return await asyncio.to_thread(self._gc, client, app)
        except docker.errors.DockerException as exc:
            log.warning("image_prune_failed", app=app, error=str(exc))
            return []

    def _gc(self, client: docker.DockerClient, app: str) -> list[str]:
        kept: set[str] = set()
        for meta in (self.layout.releases / app).glob("v*/" + RELEASE_FILE):
            with contextlib.suppress(OSError, ValueError, KeyError):
                kept.add(str(json.loads(meta.read_text())["image"]))
        removed = []
        for image in client.images.list(filters={"label": f"crewship.app={app}"}):
            if image.id not in kept and self._remove_image(client, image.id):
                removed.append(image.id)
        if self._building == 0:  # another app's build would lose the layers it stands on
            with contextlib.suppress(docker.errors.DockerException):
                client.images.prune(filters={"dangling": True, "label": MANAGED_LABEL})
                self._gc_deps(client)
        return removed

    def _gc_deps(self, client: docker.DockerClient) -> None:
        """Dependency and venv stages (the environment cache) no kept release of any app
        uses. A venv stage is the base of its lock's images: the ones below it carry the
        managed label too and go with their releases."""
        used = set()
        for meta in self.layout.releases.glob("*/v*/" + RELEASE_FILE):
            with contextlib.suppress(OSError, ValueError, KeyError):
                used.add(str(json.loads(meta.read_text())["env_key"]))
        for label in (DEPS_LABEL, VENV_LABEL):
            for image in client.images.list(filters={"label": label}):
                if image.labels.get(label) not in used and not image.tags \
                        and MANAGED_LABEL not in image.labels:
                    self._remove_image(client, image.id)

    @staticmethod
    def _remove_image(client: docker.DockerClient, image: str) -> bool:
        try:
            client.images.remove(image, force=False, noprune=False)
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.DockerException as exc:  # a container still uses it: next time
            log.warning("image_remove_failed", image=image, error=str(exc))
            return False
        return True

    async def aclose(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None

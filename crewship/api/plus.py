"""The Plus API subset the ``crewai deploy`` CLI calls (reference A.10), at the host root.

    GET    /crewai_plus/api/v1/me/organizations             []
    GET    /crewai_plus/api/v1/crews                        [{name, uuid, status}]
    POST   /crewai_plus/api/v1/crews                        JSON {deploy: {name, repo_clone_url, env}}
    POST   /crewai_plus/api/v1/crews/zip                    multipart zip_file, name, env[K]
    POST   /crewai_plus/api/v1/crews/{uuid}/zip_update      multipart zip_file, env[K]
    POST   /crewai_plus/api/v1/crews/{uuid|by-name/NAME}/deploy
    GET    /crewai_plus/api/v1/crews/{uuid|by-name/NAME}/status
    GET    /crewai_plus/api/v1/crews/{uuid|by-name/NAME}/logs/deployment
    DELETE /crewai_plus/api/v1/crews/{uuid|by-name/NAME}    204
    GET    /crewai_plus/deployments/{uuid}                  a small HTML page (API token or
                                                            dashboard session)

Every API route needs ``Authorization: Bearer <user API token>``. Errors are JSON in
the shapes the client prints: 422 ``{field: [message]}``, anything else
``{"error": message, "message": message}`` (the client shows only ``error``).
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Message

from builder.zipsafe import MAX_BYTES
from crewship import log
from crewship.api import dashboard
from crewship.api.deployment_page import render_page
from crewship.api.limits import bearer, json_object
from crewship.errors import CrewshipError, InvalidInputError, NotFoundError
from crewship.model import AccessLevel, App, User
from crewship.service.platform import Platform
from crewship.service.plus import PlusError, PlusService

logger = log.get("crewship.http")
API = "/crewai_plus/api/v1"
MAX_UPLOAD = MAX_BYTES + 1024 * 1024
Handler = Callable[[Request, User], Awaitable[Response]]


def service(request: Request) -> PlusService:
    """The app's one ``PlusService`` (made on first use; it tracks background deploys)."""
    state = request.app.state
    if getattr(state, "plus", None) is None:
        platform: Platform = state.platform
        state.plus = PlusService(platform)
    plus: PlusService = state.plus
    return plus


def problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "message": message}, status_code=status)


def is_upload(path: str) -> bool:
    """The routes that take a ZIP upload (bounded by ``MAX_UPLOAD``, not the JSON limit)."""
    return path.startswith(f"{API}/crews/") and path.endswith(("/zip", "/zip_update"))


def authed(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Resolve the API token's user; map crewship errors to the client's shapes."""
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        platform = service(request).platform
        user = platform.user_by_api_token(bearer(request.headers))
        if user is None:
            return problem(401, "invalid, expired or missing API token: run 'crewship login "
                                "--crewai' (or 'ssh ... api-tokens:create' and 'crewship login "
                                "--crewai --token T')")
        try:
            return await handler(request, user)
        except PlusError as exc:
            return JSONResponse({exc.field: [str(exc)]}, status_code=422)
        except CrewshipError as exc:
            return problem(exc.http_status, str(exc))
    return endpoint


def _app(request: Request, user: User, need: AccessLevel = AccessLevel.READ) -> App:
    params = request.path_params
    if "name" in params:
        return service(request).app(user, params["name"], by_name=True, need=need)
    return service(request).app(user, params["uuid"], by_name=False, need=need)


# ----------------------------------------------------------------------- bodies
async def _form(request: Request) -> FormData:
    """The multipart form, refusing bodies over ``MAX_UPLOAD`` while they arrive."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_UPLOAD:
        raise PlusError("zip_file", f"is refused: the upload is larger than {MAX_BYTES >> 20} MB")
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > MAX_UPLOAD:
            raise PlusError("zip_file", f"is refused: the upload is larger than "
                                        f"{MAX_BYTES >> 20} MB")
        return message

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInputError("send the project as multipart/form-data with a zip_file part")
    try:
        return await Request(request.scope, receive).form(max_files=1, max_fields=1000)
    except HTTPException as exc:
        raise InvalidInputError(f"malformed upload: {exc.detail}") from None


def _env_fields(form: FormData) -> dict[str, str]:
    env = {}
    for key, value in form.multi_items():
        if key.startswith("env[") and key.endswith("]") and isinstance(value, str):
            env[key[4:-1]] = value
    return env


async def _saved_upload(form: FormData, tmp_root: Path) -> Path:
    upload = form.get("zip_file")
    if not isinstance(upload, UploadFile):
        raise PlusError("zip_file", "is missing: send the project as a ZIP file part")
    return await asyncio.to_thread(_save, upload.file, tmp_root)


def _save(source: BinaryIO, tmp_root: Path) -> Path:
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=tmp_root, prefix="upload-", suffix=".zip",
                                     delete=False) as handle:
        shutil.copyfileobj(source, handle)
    return Path(handle.name)


async def _with_upload(request: Request,
                       use: Callable[[FormData, Path], Awaitable[dict[str, Any]]]) -> Response:
    form = await _form(request)
    try:
        path = await _saved_upload(form, service(request).platform.layout.tmp)
        try:
            body = await use(form, path)
        finally:
            path.unlink(missing_ok=True)
    finally:
        await form.close()
    return JSONResponse(body, status_code=201)


# ---------------------------------------------------------------------- routes
@authed
async def organizations(request: Request, user: User) -> Response:
    return JSONResponse([])


@authed
async def crews(request: Request, user: User) -> Response:
    return JSONResponse(service(request).crews(user))


@authed
async def create(request: Request, user: User) -> Response:
    body = await json_object(request, example='{"deploy": {...}}')
    deploy = body.get("deploy")
    if not isinstance(deploy, dict):
        raise PlusError("deploy", "is missing: send {\"deploy\": {\"name\", \"repo_clone_url\"}}")
    name, url, env = deploy.get("name"), deploy.get("repo_clone_url"), deploy.get("env") or {}
    if not isinstance(name, str) or not name.strip():
        raise PlusError("name", "is missing")
    if not isinstance(url, str) or not url.strip():
        raise PlusError("repo_clone_url", "is missing")
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise PlusError("env", "must be an object of strings")
    result = await service(request).create_from_git(user, name, url, env)
    return JSONResponse(result, status_code=201)


@authed
async def create_zip(request: Request, user: User) -> Response:
    async def use(form: FormData, path: Path) -> dict[str, Any]:
        name = form.get("name")
        if not isinstance(name, str) or not name.strip():
            raise PlusError("name", "is missing")
        return await service(request).create_from_zip(user, name, path, _env_fields(form))
    return await _with_upload(request, use)


@authed
async def zip_update(request: Request, user: User) -> Response:
    app = _app(request, user, AccessLevel.DEPLOY)

    async def use(form: FormData, path: Path) -> dict[str, Any]:
        return await service(request).update_from_zip(user, app, path, _env_fields(form))
    return await _with_upload(request, use)


@authed
async def deploy(request: Request, user: User) -> Response:
    app = _app(request, user, AccessLevel.DEPLOY)
    await json_object(request)  # {project_id?, force?}: nothing to do with either
    return JSONResponse(await service(request).redeploy(user, app))


@authed
async def status(request: Request, user: User) -> Response:
    return JSONResponse(await service(request).full_status(_app(request, user)))


@authed
async def logs(request: Request, user: User) -> Response:
    app = _app(request, user)
    if request.path_params["log_type"] != "deployment":
        raise NotFoundError("only the 'deployment' log is served here; the app's own log is "
                            f"'ssh ... logs {app.name}'")
    return JSONResponse(await asyncio.to_thread(service(request).logs, app))  # file reads


@authed
async def remove(request: Request, user: User) -> Response:
    await service(request).remove(user, _app(request, user, AccessLevel.ADMIN))
    return Response(status_code=204)


async def page(request: Request) -> Response:
    """The deployment page: for a user API token or a dashboard session that can read
    the app; without either, the browser is sent to log in."""
    token = bearer(request.headers)
    user = (service(request).platform.user_by_api_token(token) if token
            else dashboard.logged_in(request))
    if user is None:
        return RedirectResponse(dashboard.LOGIN, status_code=303)
    try:
        app, state, releases = service(request).page(user, request.path_params["uuid"])
    except NotFoundError:
        return HTMLResponse("<!doctype html><title>Not found</title><p>No such deployment.",
                            status_code=404)
    return HTMLResponse(render_page(app.name, state, releases))


def _both(path: str, endpoint: Callable[[Request], Awaitable[Response]],
          methods: list[str]) -> list[Route]:
    return [Route(f"{API}/crews/by-name/{{name}}{path}", endpoint, methods=methods),
            Route(f"{API}/crews/{{uuid}}{path}", endpoint, methods=methods)]


routes = [
    Route(f"{API}/me/organizations", organizations, methods=["GET"]),
    Route(f"{API}/crews", crews, methods=["GET"]),
    Route(f"{API}/crews", create, methods=["POST"]),
    Route(f"{API}/crews/zip", create_zip, methods=["POST"]),
    Route(f"{API}/crews/{{uuid}}/zip_update", zip_update, methods=["POST"]),
    *_both("/deploy", deploy, ["POST"]),
    *_both("/status", status, ["GET"]),
    *_both("/logs/{log_type}", logs, ["GET"]),
    *_both("", remove, ["DELETE"]),
    Route("/crewai_plus/deployments/{uuid}", page, methods=["GET"]),
]

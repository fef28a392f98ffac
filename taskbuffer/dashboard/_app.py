"""The dashboard's ASGI app: the page, its JSON and event-stream endpoints, and actions.

Every response goes through :class:`Guard`, which refuses a request without the token (when
one is set) and adds the security headers, the strict Content-Security-Policy first of all.
Actions are routes only when ``allow_actions`` is true (so they are 404 otherwise), and only
for POST (so other methods get 405).
"""

from __future__ import annotations

import hmac
import html
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, quote

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._exceptions import TaskNotFoundError
from .._manager import TaskManager
from .._validation import safe_repr
from ._feed import ClientFeed
from ._state import DashboardState
from ._stream import EventStream, encode

if TYPE_CHECKING:
    from ..jobs import JobStatus

__all__ = ("CONTENT_SECURITY_POLICY", "Dashboard", "build_dashboard")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",  # the token may be in the page's URL
    "cache-control": "no-store",
}
STATIC = Path(str(files("taskbuffer.dashboard") / "static"))
JOBS_PAGE_MAX = 200
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class Guard:
    """ASGI middleware: the token check and the security headers, on every response."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = None if token is None else token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        if self.token is not None and not self.authorized(scope):
            refusal = Response(
                "401 Unauthorized: this dashboard needs its token "
                "(Authorization: Bearer <token>, or ?token=<token> for the page)\n",
                status_code=401,
                headers={"www-authenticate": "Bearer"},
            )
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def authorized(self, scope: Scope) -> bool:
        assert self.token is not None
        authorization = Headers(scope=scope).get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials:
            offered = credentials.strip().encode()
        elif scope["method"] in ("GET", "HEAD"):
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if "token" not in query:
                return False
            offered = query["token"].encode()
        else:
            return False
        return hmac.compare_digest(offered, self.token)


class Dashboard:
    """The app and what the server needs of it: the open streams, to end them at shutdown."""

    def __init__(
        self,
        manager: TaskManager,
        *,
        services: Any,
        token: str | None,
        allow_actions: bool,
        title: str,
    ) -> None:
        self.state = DashboardState(manager, services)
        self.state.attach()
        self.feeds: set[ClientFeed] = set()
        self.title = title
        self.allow_actions = allow_actions
        self.page = (STATIC / "index.html").read_text(encoding="utf-8")
        self.app = Guard(Starlette(routes=self.routes(token)), token)

    def close_streams(self) -> None:
        """End every open event stream (the server is shutting down)."""
        for feed in tuple(self.feeds):
            feed.close()

    def routes(self, token: str | None) -> list[BaseRoute]:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"x-accel-buffering", b"no"),
        ]
        stream = EventStream(
            self.state, self.feeds, actions=self.allow_actions, title=self.title, headers=headers
        )
        routes: list[BaseRoute] = [
            Route("/", self.index, methods=["GET"]),
            Route("/api/snapshot", self.snapshot, methods=["GET"]),
            Route("/api/events", stream, methods=["GET"]),
            Route("/api/jobs", self.jobs, methods=["GET"]),
            Route("/api/jobs/{job_id}", self.job, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        if self.allow_actions:
            routes += [
                Route("/api/tasks/{name}/trigger", self.trigger, methods=["POST"]),
                Route("/api/tasks/{name}/deschedule", self.deschedule, methods=["POST"]),
                Route("/api/jobs/{job_id}/cancel", self.cancel_job, methods=["POST"]),
                Route("/api/jobs/{job_id}/retry", self.retry_job, methods=["POST"]),
            ]
        return routes

    # ------------------------------------------------------------------------------ reads

    async def index(self, request: Request) -> Response:
        if not request.url.path.endswith("/"):
            # The page's URLs are relative: it must be served from a path ending in "/".
            return RedirectResponse(request.url.replace(path=request.url.path + "/"))
        token = request.query_params.get("token")
        suffix = "" if token is None else "?token=" + quote(token, safe="")
        page = self.page.replace("{{title}}", html.escape(self.title)).replace(
            "{{asset_query}}", html.escape(suffix)
        )
        return HTMLResponse(page)

    async def snapshot(self, _request: Request) -> Response:
        data = await self.state.snapshot(actions=self.allow_actions, title=self.title)
        return _json(data)

    async def jobs(self, request: Request) -> Response:
        params = request.query_params
        status = params.get("status") or None
        if status is not None and status not in JOB_STATUSES:
            raise HTTPException(400, f"status must be one of {', '.join(JOB_STATUSES)}")
        limit = _int_param(params.get("limit"), "limit", 20, 1, JOBS_PAGE_MAX)
        offset = _int_param(params.get("offset"), "offset", 0, 0, None)
        jobs = await self.state.jobs(
            status=cast("JobStatus | None", status), limit=limit, offset=offset
        )
        if jobs is None:
            raise HTTPException(404, "this manager has no job store")
        return _json({"jobs": jobs, "limit": limit, "offset": offset})

    async def job(self, request: Request) -> Response:
        detail = await self.state.job_detail(request.path_params["job_id"])
        if detail is None:
            raise HTTPException(404, "no such job")
        return _json(detail)

    # ---------------------------------------------------------------------------- actions

    async def trigger(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await request.body()
        payload: Any = {}
        if body.strip():
            try:
                payload = await request.json()
            except ValueError as exc:
                raise HTTPException(400, f"the body must be JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise HTTPException(400, 'the body must be a JSON object {"input": ...}')
        try:
            self.state.manager.spawn(name, payload.get("input"))
        except TaskNotFoundError:
            raise HTTPException(404, f"no task named {name!r}") from None
        return _json({"triggered": name}, status_code=202)

    async def deschedule(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            self.state.manager.deschedule_task_by_name(name)
        except TaskNotFoundError:
            raise HTTPException(404, f"no task named {name!r}") from None
        return _json({"descheduled": name})

    async def cancel_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            cancelled = await self.state.manager.cancel_job(job_id)
        except RuntimeError as exc:  # no job store
            raise HTTPException(404, str(exc)) from None
        return _json({"job_id": job_id, "cancelled": cancelled})

    async def retry_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            job = await self.state.manager.retry_job(job_id)
        except RuntimeError as exc:  # no job store
            raise HTTPException(404, str(exc)) from None
        except KeyError:
            raise HTTPException(404, f"no job {job_id!r}") from None
        except ValueError as exc:  # neither failed nor cancelled
            raise HTTPException(409, str(exc)) from None
        return _json({"job_id": job_id, "status": job.status})


def _json(data: Any, *, status_code: int = 200) -> Response:
    return Response(encode(data), status_code=status_code, media_type="application/json")


def _int_param(raw: str | None, name: str, default: int, low: int, high: int | None) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer, not {raw!r}") from None
    if value < low or (high is not None and value > high):
        accepted = f">= {low}" if high is None else f"{low}-{high}"
        raise HTTPException(400, f"{name} must be {accepted}, not {value}")
    return value


def build_dashboard(
    manager: TaskManager,
    *,
    services: Any = None,
    token: str | None = None,
    allow_actions: bool = False,
    title: str = "taskbuffer",
) -> Dashboard:
    """Check the arguments and build the dashboard (see ``dashboard_app``)."""
    if not isinstance(manager, TaskManager):
        raise TypeError(f"manager must be a TaskManager, not {safe_repr(manager)}")
    if services is not None:
        from .._service_manager import ServiceManager

        if not isinstance(services, ServiceManager):
            raise TypeError(f"services must be a ServiceManager or None, not {safe_repr(services)}")
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError(f"token must be a non-empty string or None, not {safe_repr(token)}")
    if not isinstance(allow_actions, bool):
        raise TypeError(f"allow_actions must be a bool, not {safe_repr(allow_actions)}")
    if not isinstance(title, str):
        raise TypeError(f"title must be a string, not {safe_repr(title)}")
    return Dashboard(
        manager, services=services, token=token, allow_actions=allow_actions, title=title
    )

"""The dashboard's ASGI app: the page, its JSON and event-stream endpoints, and actions.

Every response goes through :class:`Guard`, which refuses a request without the token (when
one is set) and adds the security headers, the strict Content-Security-Policy first of all.
Actions are routes only when ``allow_actions`` is true (so they are 404 otherwise), and only
for POST (so other methods get 405).
"""

from __future__ import annotations

import hmac
import html
import re
from collections.abc import Awaitable, Callable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, quote, urlencode

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
from ._state import DashboardState, JobStoreFailure
from ._stream import EventStream, encode

if TYPE_CHECKING:
    from ..jobs import JobStatus

__all__ = ("CONTENT_SECURITY_POLICY", "Dashboard", "build_dashboard", "check_token")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    # No HTML from strings at all: a browser that knows Trusted Types refuses innerHTML & co.
    "require-trusted-types-for 'script'; trusted-types 'none'"
)
_SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",  # the token may be in the page's URL
    "cache-control": "no-store",
}
STATIC = Path(str(files("taskbuffer.dashboard") / "static"))
JOBS_PAGE_MAX = 200
OFFSET_MAX = 2**63 - 1  # what every job store can hold
Endpoint = Callable[[Request], Awaitable[Response]]
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
URL_TOKEN_PATHS = ("", "/", "/api/events")  # and the page's files, under /static/
URL_TOKEN_KEY = "taskbuffer.dashboard.url_token"  # in the scope: the token came in the URL


class Guard:
    """ASGI middleware: the host and token checks and the security headers, on every response.

    A token in the URL (``?token=``) is accepted only where a browser cannot send a header:
    the page, its files and the event stream (:data:`URL_TOKEN_PATHS`). Once accepted it is
    taken out of the request's query string, so that no access log (uvicorn's, or a host
    application's) writes it down.
    """

    def __init__(
        self, app: ASGIApp, token: str | None, *, hosts: frozenset[str] | None = None
    ) -> None:
        self.app = app
        self.token = None if token is None else token.encode()
        self.hosts = hosts  # the Host names accepted (None: any)

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

        refusal = self.refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def refusal(self, scope: Scope) -> Response | None:
        """The response refusing this request, or ``None`` when it may go on."""
        if self.hosts is not None and _host_name(scope) not in self.hosts:
            return Response(
                "403 Forbidden: this dashboard answers only to the names of the interface it "
                "listens on (set a token to serve it under another name)\n",
                status_code=403,
            )
        if self.token is not None and not self.authorized(scope):
            return Response(
                "401 Unauthorized: this dashboard needs its token "
                "(Authorization: Bearer <token>, or ?token=<token> for the page)\n",
                status_code=401,
                headers={"www-authenticate": "Bearer"},
            )
        return None

    def authorized(self, scope: Scope) -> bool:
        assert self.token is not None
        authorization = Headers(scope=scope).get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials:
            return hmac.compare_digest(credentials.strip().encode("latin-1"), self.token)
        if scope["method"] not in ("GET", "HEAD") or not _url_token_allowed(scope):
            return False
        raw = scope.get("query_string", b"").decode("latin-1")
        query = parse_qsl(raw, keep_blank_values=True, encoding="latin-1")
        offered = [value for name, value in query if name == "token"]
        if len(offered) != 1 or not hmac.compare_digest(offered[0].encode("latin-1"), self.token):
            return False
        rest = [(name, value) for name, value in query if name != "token"]
        scope["query_string"] = urlencode(rest, encoding="latin-1").encode("latin-1")
        scope[URL_TOKEN_KEY] = True
        return True


def _route_path(scope: Scope) -> str:
    """The path the routes see: without the prefix the app is mounted under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _url_token_allowed(scope: Scope) -> bool:
    path = _route_path(scope)
    return path in URL_TOKEN_PATHS or path.startswith("/static/")


def _host_name(scope: Scope) -> str:
    """The request's Host header without its port, lower case."""
    host = Headers(scope=scope).get("host", "").lower()
    if host.startswith("["):  # [::1]:8765
        return host[: host.find("]") + 1]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


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
        hosts: frozenset[str] | None = None,
    ) -> None:
        self.state = DashboardState(manager, services)
        self.state.attach()
        self.feeds: set[ClientFeed] = set()
        self.title = title
        self.allow_actions = allow_actions
        self.page = (STATIC / "index.html").read_text(encoding="utf-8")
        self.token = token
        self.starlette = Starlette(routes=self.routes(token))
        # Starlette's redirects name the Host header's site; ours are relative (see serve).
        self.starlette.router.redirect_slashes = False
        self.app = Guard(self.serve, token, hosts=hosts)

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _route_path(scope) == "":
            # The mount point itself: the page's URLs are relative, so it must be served
            # from a path ending in "/". A relative Location, which no Host header can turn
            # into another site's address.
            target = str(scope["path"]).rsplit("/", 1)[-1] + "/"
            query = scope.get("query_string", b"").decode("latin-1")
            if self.token is not None and scope.get(URL_TOKEN_KEY, False):
                query = urlencode({"token": self.token}) + ("&" + query if query else "")
            response = RedirectResponse(target + ("?" + query if query else ""))
            await response(scope, receive, send)
            return
        await self.starlette(scope, receive, send)

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
                Route("/api/tasks/{name}/trigger", _action(self.trigger), methods=["POST"]),
                Route("/api/tasks/{name}/deschedule", _action(self.deschedule), methods=["POST"]),
                Route("/api/jobs/{job_id}/cancel", _action(self.cancel_job), methods=["POST"]),
                Route("/api/jobs/{job_id}/retry", _action(self.retry_job), methods=["POST"]),
            ]
        return routes

    # ------------------------------------------------------------------------------ reads

    async def index(self, request: Request) -> Response:
        # The page's files need the token in their URL when the page had it there (the
        # browser sends no header for them); the Guard took it out of the query already.
        query = ""
        if self.token is not None and request.scope.get(URL_TOKEN_KEY, False):
            query = html.escape("?token=" + quote(self.token, safe=""))
        values = {"title": html.escape(self.title), "asset_query": query}
        page = re.sub(r"\{\{(title|asset_query)\}\}", lambda m: values[m[1]], self.page)
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
        offset = _int_param(params.get("offset"), "offset", 0, 0, OFFSET_MAX)
        try:
            jobs = await self.state.jobs(
                status=cast("JobStatus | None", status), limit=limit, offset=offset
            )
        except JobStoreFailure as exc:
            raise HTTPException(503, f"the job store failed: {exc}") from None
        if jobs is None:
            raise HTTPException(404, "this manager has no job store")
        return _json({"jobs": jobs, "limit": limit, "offset": offset})

    async def job(self, request: Request) -> Response:
        try:
            detail = await self.state.job_detail(request.path_params["job_id"])
        except JobStoreFailure as exc:
            raise HTTPException(503, f"the job store failed: {exc}") from None
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


def _action(endpoint: Endpoint) -> Endpoint:
    """``endpoint``, refusing a request that another site's page could have sent (CSRF).

    A page of another site can make the browser POST a form (urlencoded, multipart or
    text/plain) or a "no-cors" fetch without asking first; it cannot send an
    ``Authorization`` header or ``Content-Type: application/json`` without a CORS preflight,
    which this app never grants. So an action needs one of the two, even without a token
    (a loopback dashboard is reachable from every page the browser opens). A browser that
    says the request comes from another site (``Sec-Fetch-Site``) is refused either way.
    """

    async def checked(request: Request) -> Response:
        headers = request.headers
        site = headers.get("sec-fetch-site", "same-origin")
        if site not in ("same-origin", "none"):
            raise HTTPException(403, f"actions are refused from another site ({site})")
        media = headers.get("content-type", "").partition(";")[0].strip().lower()
        if "authorization" not in headers and media != "application/json":
            raise HTTPException(
                403, "an action needs Content-Type: application/json or an Authorization header"
            )
        return await endpoint(request)

    return checked


def _json(data: Any, *, status_code: int = 200) -> Response:
    return Response(encode(data), status_code=status_code, media_type="application/json")


def _int_param(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    accepted = f"an integer from {low} to {high}"
    # Digits only: int() would also take " 1", "1_0" and other scripts' digits.
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw[:20]) <= high:
        raise HTTPException(400, f"{name} must be {accepted}, not {raw[:40]!r}")
    return int(raw)


def build_dashboard(
    manager: TaskManager,
    *,
    services: Any = None,
    token: str | None = None,
    allow_actions: bool = False,
    title: str = "taskbuffer",
    hosts: frozenset[str] | None = None,
) -> Dashboard:
    """Check the arguments and build the dashboard (see ``dashboard_app``); ``hosts``, when
    given, are the only Host names it answers to (``serve_dashboard`` on loopback)."""
    if not isinstance(manager, TaskManager):
        raise TypeError(f"manager must be a TaskManager, not {safe_repr(manager)}")
    if services is not None:
        from .._service_manager import ServiceManager

        if not isinstance(services, ServiceManager):
            raise TypeError(f"services must be a ServiceManager or None, not {safe_repr(services)}")
    check_token(token)
    if not isinstance(allow_actions, bool):
        raise TypeError(f"allow_actions must be a bool, not {safe_repr(allow_actions)}")
    if not isinstance(title, str):
        raise TypeError(f"title must be a string, not {safe_repr(title)}")
    try:
        title.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"title must be encodable as UTF-8, not {safe_repr(title)}") from None
    return Dashboard(
        manager,
        services=services,
        token=token,
        allow_actions=allow_actions,
        title=title,
        hosts=hosts,
    )


def check_token(token: object) -> None:
    """Raise unless ``token`` is ``None`` or a token a browser can send."""
    # A browser sends the token in a header (ASCII only) and in URLs, and a header's spaces
    # around it are not part of it: anything else would be a token no page could use.
    accepted = "a non-empty string of visible ASCII characters (no spaces) or None"
    if token is None:
        return
    if not isinstance(token, str):
        raise TypeError(f"token must be {accepted}, not {safe_repr(token)}")
    if not token or not all("!" <= char <= "~" for char in token):
        raise ValueError(f"token must be {accepted}, not {safe_repr(token)}")

"""A live dashboard for a :class:`~taskbuffer.TaskManager`, as an ASGI app.

Install with ``pip install 'taskbuffer[dashboard]'`` (Starlette and uvicorn).
:func:`dashboard_app` gives an app to mount in any ASGI application (Starlette, FastAPI...);
:func:`serve_dashboard` serves it alone with uvicorn, on the loopback interface by default.

The page is plain HTML, CSS and JavaScript shipped in the package: no build step and no
network access. It paints from ``GET <mount>/api/snapshot`` and stays live through the
Server-Sent Events of ``GET <mount>/api/events``.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "taskbuffer.dashboard needs starlette and uvicorn; install them with: "
        "pip install 'taskbuffer[dashboard]'"
    ) from exc

from ._server import dashboard_app as dashboard_app
from ._server import serve_dashboard as serve_dashboard

__all__ = ("dashboard_app", "serve_dashboard")

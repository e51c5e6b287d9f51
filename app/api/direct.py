"""The proxy's hot routes, entered before FastAPI's layers and called straight from
``KeelMiddleware``, past FastAPI's router.

Around a chat endpoint FastAPI runs its app entry, its server-error and telemetry middleware
(outside Keel's), then its exception middleware, an exit stack, two routers, the route's
request handler and the dependency solver: together about a fifth of Keel's own CPU per
completion under load (docs/benchmarks.md). The hot endpoints already take only the
``Request`` and validate their own body, so none of that does work for them. ``KeelAPI``
hands these routes to a ``KeelMiddleware`` of their own; every other request takes FastAPI's
path, where the same middleware sits inside FastAPI's. The routes stay registered with
FastAPI: the API document is built from them, and with ``direct_routes = false`` they are
served the ordinary way (a conformance test compares both).

What the skipped layers would have done is done here: the matched route goes into the scope
(the metrics label and the log read it), and the catalogue's errors and validation errors
are rendered by the same handlers as everywhere else. Anything else propagates to
``KeelMiddleware``, which answers 500 as it does for every route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import handled_error_response
from app.errors import KeelError

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], APIRoute] = {}

    def adopt(self, routers: Iterable[APIRouter], endpoints: Iterable[Endpoint]) -> None:
        """Serve these endpoints directly. Each must be a plain-path route whose only
        parameter is the ``Request``: nothing FastAPI would resolve may be skipped. The
        routers are the ones included in the app without a prefix, so their paths are the
        app's."""
        wanted = set(endpoints)
        for route in (r for router in routers for r in router.routes):
            if not isinstance(route, APIRoute) or route.endpoint not in wanted:
                continue
            dependant = route.dependant
            if (
                route.param_convertors
                or dependant.dependencies
                or dependant.body_params
                or dependant.query_params
                or dependant.header_params
                or dependant.path_params
                or dependant.request_param_name is None
            ):
                raise ValueError(f"{route.path} cannot be served directly: it has parameters")
            for method in route.methods or ():
                self._routes[(method, route.path)] = route
            wanted.discard(route.endpoint)
        if wanted:
            raise ValueError(f"not routed: {sorted(e.__name__ for e in wanted)}")

    def match(self, method: str, path: str) -> APIRoute | None:
        return self._routes.get((method, path))

    @staticmethod
    async def serve(route: APIRoute, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        request = Request(scope, receive)
        try:
            response: Response = await route.endpoint(request)
        except (KeelError, RequestValidationError) as exc:
            response = handled_error_response(request, exc)
        await response(scope, receive, send)


class KeelAPI(FastAPI):
    """FastAPI, except that the direct routes enter ``entry`` (a ``KeelMiddleware`` serving
    them) at once."""

    _direct: tuple[DirectRoutes, ASGIApp] | None = None

    def serve_directly(self, routes: DirectRoutes, entry: ASGIApp) -> None:
        self._direct = (routes, entry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct = self._direct
        if (
            direct is not None
            and scope["type"] == "http"
            and direct[0].match(scope["method"], scope["path"]) is not None
        ):
            scope["app"] = self  # what Starlette's entry sets
            await direct[1](scope, receive, send)
            return
        await super().__call__(scope, receive, send)

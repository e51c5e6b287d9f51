"""The proxy's hot routes, called straight from ``KeelMiddleware`` past FastAPI's router.

Between the middleware and a chat endpoint FastAPI runs its exception middleware, an exit
stack, two routers, the route's request handler and the dependency solver: together about a
sixth of Keel's own CPU per completion under load (docs/benchmarks.md). The hot endpoints
already take only the ``Request`` and validate their own body, so none of that does work for
them. The routes stay registered with FastAPI: the API document is built from them, and with
``direct_routes = false`` they are served the ordinary way (a conformance test compares both).

What the skipped layers would have done is done here: the matched route goes into the scope
(the metrics label and the log read it), and the catalogue's errors and validation errors
are rendered by the same handlers as everywhere else. Anything else propagates to
``KeelMiddleware``, which answers 500 as it does for every route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

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

"""Model name -> ordered fallback targets.

Named a resolver, not a router: in Keel "router" means an HTTP router only.

A chat request's ``model`` is a ``[routes]`` name, a ``provider/model`` pair, or a model a
single provider lists (local model ids join the same way). Resolution is pure: it reads the
configuration and the providers' model lists, and knows nothing of health; health is what the
guards decide per attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.errors import ModelNotFound
from app.settings import ConfigError


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    model: str

    @property
    def id(self) -> str:
        return f"{self.provider}/{self.model}"


class TargetResolver:
    def __init__(self, routes: Mapping[str, list[str]], provider_models: Mapping[str, list[str]]):
        self._provider_models = {p: list(ms) for p, ms in provider_models.items()}
        self._routes: dict[str, list[Target]] = {}
        for name, targets in routes.items():
            resolved = [self._parse(t, route=name) for t in targets]
            if not resolved:
                raise ConfigError(f"invalid setting routes.{name}: needs at least one target")
            self._routes[name] = resolved

    def _parse(self, ref: str, *, route: str) -> Target:
        provider, sep, model = ref.partition("/")
        if not sep or provider not in self._provider_models:
            raise ConfigError(
                f"invalid setting routes.{route}: target {ref!r} names no configured provider"
            )
        return Target(provider, model)

    @property
    def routes(self) -> dict[str, list[Target]]:
        return dict(self._routes)

    def direct_targets(self) -> list[Target]:
        return [Target(p, m) for p, models in self._provider_models.items() for m in models]

    def resolve(self, model: str) -> list[Target]:
        if model in self._routes:
            return self._routes[model]
        provider, sep, name = model.partition("/")
        if sep and name in self._provider_models.get(provider, ()):
            return [Target(provider, name)]
        owners = [p for p, models in self._provider_models.items() if model in models]
        if len(owners) == 1:
            return [Target(owners[0], model)]
        raise ModelNotFound(
            f"No route, provider model or local model is named '{model[:100]}'.",
            param="model",
            extra={"model": model[:100]},
        )

"""Name -> builder maps. Adding a component is one new file with `@REGISTRY.register("name")`."""
from __future__ import annotations

import inspect
from typing import Any, Callable


class Registry:
    """A named map from component names to builders (classes or functions).

    `check_params` validates a config block against the builder's signature before anything is
    built, so a typo in a YAML file fails at load time with the accepted names.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str):
        def decorator(builder):
            if name in self._builders:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def __iter__(self):
        return iter(self.names())

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._builders:
            raise KeyError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._builders[name]

    def parameters(self, name: str) -> dict[str, inspect.Parameter]:
        """Keyword parameters the builder accepts (without `self` and *args/**kwargs)."""
        sig = inspect.signature(self.get(name))
        return {
            p.name: p
            for p in sig.parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def check_params(self, name: str, params: dict[str, Any], where: str = "") -> None:
        accepted = self.parameters(name)
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise KeyError(
                f"{where}unknown parameter(s) {', '.join(map(repr, unknown))} for {self.kind} {name!r}; "
                f"accepted: {', '.join(sorted(accepted)) or '(none)'}"
            )

    def build(self, name: str, **params):
        self.check_params(name, params)
        return self.get(name)(**params)

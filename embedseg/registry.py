"""Name -> builder maps. Adding a component is one new file with `@REGISTRY.register("name")`."""
from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from embedseg.config import ConfigError, check_type


class Registry:
    """A named map from component names to builders (classes or functions).

    `check_params` validates parameters against the builder's signature before anything is built
    (config files at load time, `build` at call time), so a typo fails with the accepted names.
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

    def _unknown(self, name: str) -> str:
        return f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._builders:
            raise KeyError(self._unknown(name))
        return self._builders[name]

    def parameters(self, name: str) -> dict[str, inspect.Parameter]:
        """Keyword parameters the builder accepts (without `self` and *args/**kwargs)."""
        sig = inspect.signature(self.get(name))
        return {
            p.name: p
            for p in sig.parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def check_params(self, name: str, params: dict[str, Any], key: str = "", reserved: tuple[str, ...] = ()) -> None:
        """Raise a ConfigError unless `name` is registered and every entry of `params` is a parameter of
        its builder, not `reserved` (set by the framework), with a value of the annotated type.

        `key` is where the parameters come from in a config (e.g. "grouping.meanshift"); every
        message names it (or the parameter alone when it is empty) and the accepted names.
        """
        if name not in self._builders:
            raise ConfigError(f"{key}: {self._unknown(name)}" if key else self._unknown(name))
        accepted = [p for p in self.parameters(name) if p not in reserved]
        hints = self._type_hints(name)
        for param, value in params.items():
            where = f"{key}.{param}" if key else str(param)
            if param in reserved:
                raise ConfigError(f"{where} is set by the framework; remove it")
            if param not in accepted:
                raise ConfigError(f"unknown key {where!r} for {self.kind} {name!r}; "
                                  f"accepted: {', '.join(sorted(accepted)) or '(none)'}")
            if param in hints:
                check_type(value, hints[param], where)

    def _type_hints(self, name: str) -> dict[str, Any]:
        builder = self.get(name)
        try:
            return typing.get_type_hints(builder.__init__ if isinstance(builder, type) else builder)
        except (NameError, TypeError):  # an annotation that cannot be resolved is not checked
            return {}

    def build(self, name: str, **params):
        builder = self.get(name)  # an unknown name is a KeyError, as from `get`
        self.check_params(name, params)
        return builder(**params)

"""Names of a package imported on first use (a module-level ``__getattr__``).

The packages that must load without a deep-learning framework or matplotlib
(``keras_privacy.training``, ``.accounting``, ``.reporting``) list their public names with
the submodule that defines each; the submodule is imported when a name is first used, and
the value is then kept in the package's namespace.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from typing import Any


def lazy_getattr(
    package: str,
    names: Mapping[str, str],
    namespace: dict[str, Any],
    submodules: Collection[str] = (),
) -> Callable[[str], Any]:
    """A ``__getattr__`` for ``package``: ``names`` maps a public name to the submodule
    (relative to ``package``) that defines it; ``submodules`` are returned as modules."""

    def __getattr__(name: str) -> Any:
        if name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            module = names.get(name)
            if module is None:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            value = getattr(importlib.import_module(f"{package}.{module}"), name)
            namespace[name] = value
        # Keras may have been imported just now, by a module of ours, too early for the
        # DP classes to register with it: register them now that the import is done.
        importlib.import_module("keras_privacy").finish_deferred_registration()
        return value

    return __getattr__

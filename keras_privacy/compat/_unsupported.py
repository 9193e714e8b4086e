"""Names of TF Privacy that keras-privacy does not provide, importable and failing on use.

A test or example written for TF Privacy often imports more names than it uses. So that
such a file imports, the compatibility modules define those names as placeholders: calling
one, or reading an attribute of it, raises :class:`UnsupportedError` saying what to use
instead. A name a module does not define at all raises the same error on import.
Special (dunder) names are never claimed, so ``copy``, ``pickle`` and ``inspect`` work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

__all__ = ["UnsupportedError", "module_getattr", "unsupported"]


class UnsupportedError(ImportError, NotImplementedError):
    """A TF Privacy name that keras-privacy does not provide; the message says why and what
    to use instead.

    An ``ImportError`` so that ``from module import name`` reports the message (Python
    replaces an ``AttributeError`` there by its own), and a ``NotImplementedError`` for
    the calls."""


def _message(qualified_name: str, instead: str) -> str:
    name = f"tensorflow_privacy.{qualified_name}"
    return f"TF Privacy's {name} is not provided by keras-privacy. {instead}"


class _Placeholder:
    """Stands for an unsupported TF Privacy name until it is used."""

    def __init__(self, qualified_name: str, instead: str) -> None:
        self._qualified_name = qualified_name
        self._instead = instead

    def _fail(self) -> NoReturn:
        raise UnsupportedError(_message(self._qualified_name, self._instead))

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._fail()

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # keep copy, pickle, inspect and mocks working
        self._fail()

    def __repr__(self) -> str:
        return f"<unsupported TF Privacy name {self._qualified_name}>"


def unsupported(module: str, name: str, instead: str) -> Any:
    """A placeholder for ``module.name`` that raises :class:`UnsupportedError` on use."""
    return _Placeholder(f"{module}.{name}", instead)


def module_getattr(module: str, instead: str) -> Callable[[str], NoReturn]:
    """A module ``__getattr__`` for which every other name is unsupported."""

    def __getattr__(name: str) -> NoReturn:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        raise UnsupportedError(_message(f"{module}.{name}", instead))

    return __getattr__

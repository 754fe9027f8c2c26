"""Registration of subclasses by their ``lookup_name`` (pricing models, likelihoods)."""

from __future__ import annotations

from typing import Any


def register(registry: dict[str, Any], cls: type, what: str) -> None:
    """Register ``cls`` under its own ``lookup_name`` in ``registry``.

    Parameters
    ----------
    registry : dict
        Registered classes by key (e.g. ``bayescal.pricing_models.REGISTRY``).
    cls : type
        The class being defined (called from ``__init_subclass__``).
    what : str
        What the registry holds, for the error message (``"pricing model"``, ``"likelihood"``).

    A subclass that does not set ``lookup_name`` itself (e.g. a user's variant of a built-in model) is
    not registered: it would otherwise replace its parent under the parent's key. Defining a class again
    (same module and name: a reloaded module, a re-run notebook cell) replaces the earlier definition.

    Raises
    ------
    TypeError
        If another class already holds the key.
    """
    if "lookup_name" not in vars(cls):
        return
    key = cls.lookup_name
    held = registry.get(key)
    if held is not None and (held.__module__, held.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"{what} key {key!r} of {cls.__module__}.{cls.__qualname__} is already registered by "
                        f"{held.__module__}.{held.__qualname__}; give the class its own lookup_name")
    registry[key] = cls

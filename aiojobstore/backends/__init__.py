"""Object-store backends: one module per store, each implementing :class:`~aiojobstore.backends.base.Backend`."""

from .base import Backend, ObjectInfo

__all__ = ["Backend", "ObjectInfo"]

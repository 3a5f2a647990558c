"""Where keys live under the root, reached without ever following a symbolic link: the root's descriptor, the
walk of a key's directories from it (made on demand, each fsynced into its parent), and the checks of names."""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_module
import threading
import weakref
from collections.abc import Sequence
from os import PathLike
from typing import Any

from ...errors import InvalidKeyError
from ..base import Backend, validate_key
from .files import DIR_FLAGS, NAME_MAX, RESERVED_PREFIX
from .group import sync_durably

#: Walks of a key's directories before giving up on concurrent deletes removing them under the walk.
_WALK_ATTEMPTS = 5


class Blocked(Exception):
    """A symbolic link (or a file) stands where directory number ``depth`` of a key should be."""

    def __init__(self, depth: int, link: bool) -> None:
        super().__init__(depth)
        self.depth = depth
        self.link = link


class Chain:
    """Open directory descriptors from the top (the root's, borrowed unless ``owned``) down to one directory,
    the names between them, and which of those directories this call created."""

    __slots__ = ("created", "fds", "names", "owned")

    def __init__(self, top: int, *, owned: bool = False) -> None:
        self.fds = [top]
        self.names: list[str] = []
        self.created: list[bool] = []
        self.owned = owned

    @property
    def fd(self) -> int:
        return self.fds[-1]

    def add(self, name: str, fd: int, created: bool) -> None:
        self.fds.append(fd)
        self.names.append(name)
        self.created.append(created)

    def remove_dirs(self, *, only_created: bool) -> None:
        """Remove the directories of the chain that are empty, deepest first (only those this call made)."""
        for index in range(len(self.names) - 1, -1, -1):
            if only_created and not self.created[index]:
                return
            try:
                os.rmdir(self.names[index], dir_fd=self.fds[index])
            except OSError:
                return

    def close(self) -> None:
        """Close the owned descriptors (idempotent)."""
        fds = self.fds if self.owned else self.fds[1:]
        self.fds = [] if self.owned else self.fds[:1]
        for fd in fds:
            os.close(fd)


class PathsBase(Backend):
    """The root, its descriptors and the symlink-safe walk of keys (the base of the local backend)."""

    def __init__(self, root: str | PathLike[str], *, fsync: bool = True, **options: Any) -> None:
        super().__init__(**options)
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self._root_fd = -1
        self._retired: list[int] = []  # root descriptors replaced while other threads may still use them
        self._root_lock = threading.Lock()
        self._stripe_locks: dict[str, threading.Lock] = {}
        self._stripe_fds: dict[str, int] = {}
        _LIVE.add(self)

    def _segments(self, key: str) -> list[str]:
        """The directory names and file name of ``key``; refuses anything that could leave the root or clash."""
        validate_key(key)  # relative, no '.' or '..' segment
        segments = key.split("/")
        if RESERVED_PREFIX in key and any(segment.startswith(RESERVED_PREFIX) for segment in segments):
            raise InvalidKeyError(f"object key {key!r} uses the reserved prefix {RESERVED_PREFIX!r}")
        if len(key) > NAME_MAX // 4:  # a shorter key cannot have a segment over NAME_MAX bytes
            for segment in segments:
                try:
                    size = len(os.fsencode(segment))
                except UnicodeError:
                    raise InvalidKeyError(f"object key {key!r} cannot be encoded as a file name") from None
                if size > NAME_MAX:
                    raise InvalidKeyError(f"object key {key!r} has a segment of {size} bytes; the local backend "
                                          f"stores each segment as a file name, at most {NAME_MAX} bytes")
        return segments

    def path_of(self, key: str) -> str:
        """The path of the file that holds ``key`` (computed only: see :meth:`local_path` for a checked one)."""
        return os.path.join(self.root, *self._segments(key))

    def _where(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _root(self, *, create: bool) -> int | None:
        """The root's directory descriptor, opened once per process (None when the root does not exist)."""
        fd = self._root_fd
        if fd >= 0:
            return fd
        with self._root_lock:
            if self._root_fd < 0:
                try:
                    self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except FileNotFoundError:
                    if not create:
                        return None
                    os.makedirs(self.root, exist_ok=True)
                    self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            return self._root_fd

    def _root_replaced(self) -> bool:
        """Whether the cached root was removed (the store destroyed and made again); if so, forget it."""
        with self._root_lock:
            fd = self._root_fd
            if fd < 0:
                return True
            try:
                current = os.stat(self.root)
            except FileNotFoundError:
                current = None
            cached = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (cached.st_dev, cached.st_ino):
                return False
            self._retired.append(fd)  # another thread may be using it: closed by close()
            self._root_fd = -1
            return True

    def _drop_root_fds(self) -> None:
        fds = [*self._retired, self._root_fd, *self._stripe_fds.values()]
        self._retired, self._root_fd, self._stripe_fds = [], -1, {}
        self._stripe_locks = {}
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _walk(self, names: Sequence[str], key: str, *, create: bool) -> Chain | None:
        """Open the directories ``names`` below the root one by one, never through a symbolic link.

        With ``create``, missing directories are made (each fsynced into its parent when ``fsync``) and a link or
        a file in the way raises :class:`InvalidKeyError`. Without it, a missing directory gives None and a link
        or file in the way raises :class:`Blocked`. The caller closes the chain."""
        for attempt in range(_WALK_ATTEMPTS):
            root = self._root(create=create)
            if root is None:
                return None
            chain = Chain(root)
            try:
                for name in names:
                    fd, created = self._enter(chain, name, create=create)
                    if fd < 0:
                        chain.close()
                        return None
                    chain.add(name, fd, created)
                return chain
            except FileNotFoundError:
                chain.close()
                last = attempt == _WALK_ATTEMPTS - 1
                if not chain.names and not last and self._root_replaced():
                    continue  # the store was destroyed and made again: walk from the new root
                if chain.names and create and not last:
                    continue  # a concurrent delete removed a directory on the way as it emptied: walk again
                if create:
                    raise
                return None
            except Blocked as blocked:
                chain.close()
                if not create:
                    raise
                raise self._refused(key, names[: blocked.depth + 1], blocked.link) from None
            except BaseException:
                chain.close()
                raise
        return None

    def _enter(self, chain: Chain, name: str, *, create: bool) -> tuple[int, bool]:
        """Open (or make and open) the directory ``name`` in the chain's last one: ``(fd, created)``, fd -1 when
        it is missing and not to be made. FileNotFoundError when the parent itself was removed."""
        parent = chain.fd
        created = False
        for _ in range(2):
            try:
                return os.open(name, DIR_FLAGS, dir_fd=parent), created
            except FileNotFoundError:
                if not create:
                    if not chain.names:
                        raise  # _walk checks whether the root is stale
                    return -1, False
            except OSError as error:
                if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                try:
                    link = stat_module.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
                except OSError:
                    link = False
                raise Blocked(len(chain.names), link) from None
            try:
                os.mkdir(name, 0o777, dir_fd=parent)
                created = True
            except FileExistsError:
                continue
            if self.fsync:
                sync_durably(parent, directory=True)  # the new entry is durable before anything goes in it
        raise FileNotFoundError(errno.ENOENT, "directory removed while it was entered", name)

    @staticmethod
    def _refused(key: str, path: Sequence[str], link: bool) -> InvalidKeyError:
        where = "/".join(path)
        if link:
            return InvalidKeyError(f"cannot use {key!r}: {where!r} under the store is a symbolic link, and the store "
                                   "never follows links out of its root; remove the link")
        return InvalidKeyError(f"cannot write {key!r}: {where!r} under the store is an object (or another file), "
                               "not a directory")

    def _check_name(self, dir_fd: int, name: str, key: str) -> None:
        """Refuse to write over a symbolic link or a directory standing at an object's name."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat_module.S_ISLNK(st.st_mode):
            raise InvalidKeyError(f"cannot write {key!r}: a symbolic link stands at its name under the store, and "
                                  "the store never writes through links; remove the link")
        if not stat_module.S_ISREG(st.st_mode):
            raise InvalidKeyError(f"cannot write {key!r}: a directory (or special file) stands at its name")

    def local_path(self, key: str) -> str:
        """The file that holds ``key``, for symlinks and kernel copies by callers on the same machine. Raises
        :class:`InvalidKeyError` when a symbolic link stands anywhere on its way under the root (a few metadata
        lookups on cached directories)."""
        segments = self._segments(key)
        try:
            chain = self._walk(segments[:-1], key, create=False)
        except Blocked as blocked:
            raise self._refused(key, segments[: blocked.depth + 1], blocked.link) from None
        if chain is not None:
            try:
                with contextlib.suppress(FileNotFoundError):
                    if stat_module.S_ISLNK(os.stat(segments[-1], dir_fd=chain.fd, follow_symlinks=False).st_mode):
                        raise self._refused(key, segments, True)
            finally:
                chain.close()
        return os.path.join(self.root, *segments)


_LIVE: weakref.WeakSet[PathsBase] = weakref.WeakSet()


def _forget_root_fds() -> None:
    """In a forked child (one thread): close the root descriptors inherited from the parent; reopened on use."""
    for backend in list(_LIVE):
        backend._root_lock = threading.Lock()
        backend._drop_root_fds()


os.register_at_fork(after_in_child=_forget_root_fds)

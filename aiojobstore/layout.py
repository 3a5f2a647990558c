"""Where the job store keeps what: the one definition of its object layout, used by the job store and the CLI.

Object layout under the store's root::

    config.json                       the store's config (its presence means "initialized"; it names the codec)
    jobs/<xx>/<job id>                one object per job (JSON by default)
    files/c/<xx>/<job id>/<uuid>/<basename>       files deleted with their job (cleanup=True)
    files/n/<xx>/<uuid>/<basename>                other files   (file ID = the part after "files/")
    files/h/<k>/<hint 1>/.../<hint k>/<slot>/<basename>   files written with hints
    hint-slots/<k>/<hints>/<slot>     create-only claims of hinted slots (kept after a delete: never reused)
    shared/<name>                     shared files
    logs/inbox/<time>-<uuid>          unread logs; a reader's claim on one is logs/claims/<name>, and a
                                      delivered log moves to logs/archive/<time prefix>/<name>
    root_job, leader.pid, kill.flag   bookkeeping
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from .backends.base import validate_key
from .errors import InvalidKeyError, NoSuchJobError

CONFIG_KEY = "config.json"
ROOT_JOB_KEY = "root_job"
LEADER_PID_KEY = "leader.pid"
KILL_FLAG_KEY = "kill.flag"
STORE_FORMAT = 1
HINT_SLOTS = "hint-slots/"
LOG_INBOX = "logs/inbox/"
LOG_CLAIMS = "logs/claims/"
LOG_ARCHIVE = "logs/archive/"
FILES = "files/"
JOBS = "jobs/"
SHARED = "shared/"

_SHARED_NAME = re.compile(r"^[a-zA-Z0-9._-]+$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_UUID = re.compile(r"^[0-9a-f]{32}$")
_HINT = re.compile(r"[A-Za-z0-9_.-]{1,40}")
_HINT_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_MAX_HINTS_LENGTH = 120
#: Metadata key marking an executable file ("1").
META_EXECUTABLE = "executable"


def shard(text: str) -> str:
    """Two hex digits spreading keys over 256 prefixes."""
    return hashlib.blake2b(text.encode(), digest_size=1).hexdigest()


def check_shared_file_name(name: str) -> str:
    """Return ``name`` if it is a valid shared-file name; raise :class:`InvalidKeyError` otherwise."""
    if not isinstance(name, str) or not _SHARED_NAME.match(name) or name in (".", ".."):
        raise InvalidKeyError(
            f"invalid shared file name {name!r}: use only letters, digits, '.', '_' and '-' (no '/')"
        )
    return name


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise NoSuchJobError(str(job_id))
    return job_id


def check_basename(basename: str) -> str:
    try:
        validate_key(basename)
    except InvalidKeyError:
        raise InvalidKeyError(f"invalid file basename {basename!r}: it must be a plain file name") from None
    if "/" in basename or basename.startswith(".ajs-"):
        raise InvalidKeyError(f"invalid file basename {basename!r}: it must be a plain file name, not a path")
    return basename


def file_key(file_id: str) -> str:
    """The object key of a file ID, after checking that the ID is one this store hands out."""
    if not isinstance(file_id, str):
        raise InvalidKeyError(f"a file ID is a string, not {type(file_id).__name__}")
    try:
        validate_key(file_id)
    except InvalidKeyError as error:
        raise InvalidKeyError(f"{file_id!r} is not a file ID of this store: {error}") from None
    parts = file_id.split("/")
    well_formed = (
        (parts[0] == "c" and len(parts) == 5 and _JOB_ID.match(parts[2]) and _UUID.match(parts[3]))
        or (parts[0] == "n" and len(parts) == 4 and _UUID.match(parts[2]))
        or (parts[0] == "h" and len(parts) >= 5 and parts[1].isdigit() and len(parts) == int(parts[1]) + 4
            and all(_HINT.fullmatch(hint) for hint in parts[2:-2]) and parts[-2].isdigit())
    )
    if not well_formed:
        raise InvalidKeyError(
            f"{file_id!r} is not a file ID of this store; file IDs are returned by write_file, "
            "write_file_stream or get_empty_file_store_id"
        )
    return FILES + file_id


def hint_path(hints: Iterable[str] | None) -> str:
    """The hints of a file as a path: each hint's ASCII letters, digits and ``_.-`` (at most 40), dropping empty,
    ``.`` and ``..`` ones, at most 120 characters in all (Toil's rules)."""
    parts: list[str] = []
    total = 0
    for hint in hints or ():
        cleaned = _HINT_CHARS.sub("", str(hint))[:40]
        if cleaned in ("", ".", ".."):
            continue
        total += len(cleaned) + (1 if parts else 0)
        if total > _MAX_HINTS_LENGTH:
            break
        parts.append(cleaned)
    return "/".join(parts)


def job_key(job_id: str) -> str:
    """The object key of a job."""
    return f"{JOBS}{shard(job_id)}/{job_id}"


def shared_key(name: str) -> str:
    """The object key of a shared file, after checking its name."""
    return SHARED + check_shared_file_name(name)


def file_id_of(key: str) -> str:
    """The file ID of a key under ``files/``."""
    return key[len(FILES) :]

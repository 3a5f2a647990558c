"""Startup hook: teach Toil the ``aiojobstore:`` job-store prefix in every process that imports ``toil.common``.

``aiojobstore-toil.pth`` (installed into site-packages with aiojobstore) imports this module when the interpreter
starts. It does not import Toil or aiojobstore: it puts one finder in front of ``sys.meta_path`` that answers only
for ``toil.common`` and, once Toil's module has run, patches it (``Toil.getJobStore``, ``Toil.canonical_locator``
and ``parse_jobstore``) and removes itself. A process that never imports Toil pays for one small import and a
string comparison per import. ``AIOJOBSTORE_TOIL_HOOK=0`` turns the hook off.

Why a ``.pth`` hook: Toil's workers are started as ``_toil_worker`` (Toil's own console script) and re-open the job
store from its locator; Toil's plugin mechanism covers batch systems and URL schemes only, and is loaded too late
in a worker. Only code that runs at interpreter start-up reaches every Toil process without the user changing
their command lines.
"""

import os
import sys

PREFIX = "aiojobstore"
_TARGET = "toil.common"


def _absolute(rest: str) -> str:
    """The aiojobstore locator ``rest`` with a relative ``file:`` path made absolute (workers may start elsewhere)."""
    scheme_end = rest.find("://")
    if scheme_end > 0 and rest[:scheme_end].replace("+", "").replace(".", "").replace("-", "").isalnum():
        return rest  # s3://, gs://, file:///abs
    if rest.startswith("file:"):
        return "file:" + os.path.abspath(os.path.expanduser(rest[5:]))
    head = rest.split(":", 1)[0]
    if ":" in rest and len(head) > 1:
        return rest  # memory:NAME, aws:REGION:BUCKET, google:PROJECT:BUCKET
    return "file:" + os.path.abspath(os.path.expanduser(rest))


def patch_toil_common(module: object) -> None:
    """Patch an executed ``toil.common`` so that ``aiojobstore:`` locators open :class:`aiojobstore.toil.AioJobStore`.
    Idempotent."""
    toil_class = module.Toil
    if getattr(toil_class, "_aiojobstore_patched", False):
        return
    get_job_store = toil_class.__dict__["getJobStore"].__func__
    canonical_locator = toil_class.__dict__["canonical_locator"].__func__

    def getJobStore(cls: object, locator: str) -> object:
        name, rest = cls.parseLocator(locator)
        if name == PREFIX:
            from aiojobstore.toil import AioJobStore

            return AioJobStore(rest)
        return get_job_store(cls, locator)

    def canonical(cls: object, locator: str) -> str:
        name, rest = cls.parseLocator(locator)
        if name == PREFIX:
            return f"{PREFIX}:{_absolute(rest)}"
        return canonical_locator(cls, locator)

    getJobStore.__doc__ = get_job_store.__doc__
    toil_class.getJobStore = classmethod(getJobStore)
    toil_class.canonical_locator = classmethod(canonical)
    toil_class._aiojobstore_patched = True

    options = sys.modules.get("toil.options.common")
    original_parse = getattr(options, "parse_jobstore", None) if options is not None else None
    if original_parse is not None and not getattr(original_parse, "_aiojobstore", False):
        def parse_jobstore(jobstore_uri: str) -> str:
            if jobstore_uri.startswith(PREFIX + ":"):
                return f"{PREFIX}:{_absolute(jobstore_uri[len(PREFIX) + 1:])}"
            return original_parse(jobstore_uri)

        parse_jobstore._aiojobstore = True  # type: ignore[attr-defined]
        parse_jobstore.__doc__ = original_parse.__doc__
        options.parse_jobstore = parse_jobstore
        if getattr(module, "parse_jobstore", None) is original_parse:
            module.parse_jobstore = parse_jobstore


class _PatchingLoader:
    """Wraps the real loader of ``toil.common``; patches the module after it has run."""

    def __init__(self, loader: object) -> None:
        self._loader = loader

    def create_module(self, spec: object) -> object:
        return self._loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        self._loader.exec_module(module)
        try:
            patch_toil_common(module)
        except Exception as error:  # never break Toil itself: say why the prefix is unknown
            sys.stderr.write(f"aiojobstore: could not teach Toil the aiojobstore: prefix ({error!r})\n")

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)


class _ToilCommonFinder:
    """A meta-path finder that answers only for ``toil.common``, and only once."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != _TARGET:
            return None
        remove()
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if find is not None:
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _PatchingLoader(spec.loader)
        return spec

    def invalidate_caches(self) -> None:
        pass


_FINDER = _ToilCommonFinder()


def install() -> None:
    """Put the finder in front of ``sys.meta_path`` (or patch at once if ``toil.common`` is already imported)."""
    if os.environ.get("AIOJOBSTORE_TOIL_HOOK", "1") in ("0", "false", "no"):
        return
    loaded = sys.modules.get(_TARGET)
    if loaded is not None and hasattr(loaded, "Toil"):
        patch_toil_common(loaded)
        return
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def remove() -> None:
    """Take the finder off ``sys.meta_path``."""
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


install()

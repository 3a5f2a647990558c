"""Benchmark probe (bench_toil.py puts this directory on PYTHONPATH): at exit, every Python process of the run
(the Toil leader and each ``_toil_worker``) appends one JSON line to ``$TOIL_BENCH_RECORD`` with its peak RSS and
its I/O counters from /proc/self/io."""

import os

_RECORD = os.environ.get("TOIL_BENCH_RECORD")

if _RECORD:
    import atexit

    def _record() -> None:
        import json
        import resource
        import sys

        io = {}
        try:
            with open("/proc/self/io") as file:
                for line in file:
                    key, _, value = line.partition(":")
                    io[key] = int(value)
        except OSError:
            pass
        entry = {"pid": os.getpid(), "argv0": os.path.basename(sys.argv[0] if sys.argv else ""),
                 "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                 "rchar": io.get("rchar", 0), "wchar": io.get("wchar", 0),
                 "read_bytes": io.get("read_bytes", 0), "write_bytes": io.get("write_bytes", 0)}
        with open(_RECORD, "a") as file:
            file.write(json.dumps(entry) + "\n")

    atexit.register(_record)


if os.environ.get("TOIL_BENCH_CEPH_COMPAT") == "1":
    # Toil's AWSJobStore configures every new bucket for AWS's 2023/2025 defaults, which Ceph RGW 16 does not
    # know: PutBucketEncryption (to *unblock* SSE-C) is refused with InvalidArgument without a KMS, and
    # DeleteBucketOwnershipControls (DELETE /bucket?ownershipControls, an unknown subresource to RGW 16) deletes
    # the bucket itself. The benchmark makes those two calls no-ops in toil.lib.aws.s3 once the module has run
    # (RGW neither blocks SSE-C nor public ACLs by default); nothing else of Toil changes.
    import sys

    class _Loader:
        def __init__(self, loader):
            self._loader = loader

        def create_module(self, spec):
            return self._loader.create_module(spec)

        def exec_module(self, module):
            self._loader.exec_module(module)
            module.enable_encryption = lambda bucket_name: None
            module.enable_public_objects = lambda bucket_name: None

        def __getattr__(self, name):
            return getattr(self._loader, name)

    class _Finder:
        def find_spec(self, fullname, path=None, target=None):
            if fullname != "toil.lib.aws.s3":
                return None
            sys.meta_path.remove(self)
            for finder in sys.meta_path:
                spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
                if spec is not None:
                    spec.loader = _Loader(spec.loader)
                    return spec
            return None

    sys.meta_path.insert(0, _Finder())

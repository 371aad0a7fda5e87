"""Python modules for the CDP protos (proto/cdp/**/*.proto), generated on import.

Importing this module makes sure that generated code for every ``proto/cdp/**/*.proto`` exists and is
current in a cache directory (default ``<repo>/.build/python-proto``, gitignored with ``.build``;
``CDP_PYTHON_PROTO_DIR`` overrides it), puts that directory first on ``sys.path`` and re-exports the
modules the ingestion tests use::

    from protos import ingestion_pb2, ingestion_pb2_grpc, identity_pb2, identity_pb2_grpc, model_pb2

The code is regenerated (with ``python -m grpc_tools.protoc`` of the running interpreter) when the
cache has no stamp or its stamp differs from a hash of the .proto files' paths and contents plus the
grpcio-tools and protobuf versions. Generation writes into a fresh sibling directory that then
replaces the cache with renames, under an flock, so parallel imports (pytest-xdist, a benchmark
running beside a test) neither race nor see a half-written tree.

The generated packages are ``cdp.model.v1``, ``cdp.identity.v1`` and ``cdp.ingestion.v1`` (regular
packages: every directory gets an ``__init__.py``); nothing is generated into a package called
``grpc``. The well-known types (``google/protobuf/timestamp.proto``, ...) are compiled against the
copies grpcio-tools ships and imported at run time from the protobuf runtime (``google.protobuf``).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
OUT_DIR = Path(os.environ.get("CDP_PYTHON_PROTO_DIR") or REPO_ROOT / ".build" / "python-proto")
STAMP_NAME = ".stamp"


def _proto_files() -> list[Path]:
    files = sorted((PROTO_ROOT / "cdp").rglob("*.proto"))
    if not files:
        raise RuntimeError(f"no .proto files under {PROTO_ROOT / 'cdp'}")
    return files


def _stamp(files: list[Path]) -> str:
    import grpc_tools
    from google import protobuf

    try:
        from importlib.metadata import version
        tools_version = version("grpcio-tools")
    except Exception:  # noqa: BLE001 - any version string will do, it only keys the cache
        tools_version = getattr(grpc_tools, "__file__", "?")
    h = hashlib.sha256()
    h.update(f"grpcio-tools {tools_version}\nprotobuf {protobuf.__version__}\n".encode())
    for f in files:
        h.update(str(f.relative_to(PROTO_ROOT)).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()


def _is_current(stamp: str) -> bool:
    try:
        return (OUT_DIR / STAMP_NAME).read_text().strip() == stamp
    except OSError:
        return False


def _generate(files: list[Path], stamp: str) -> None:
    import grpc_tools

    wkt_include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    OUT_DIR.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=OUT_DIR.name + ".new-", dir=OUT_DIR.parent))
    try:
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{wkt_include}",
               f"--python_out={tmp}", f"--grpc_python_out={tmp}", *[str(f.relative_to(PROTO_ROOT)) for f in files]]
        res = subprocess.run(cmd, cwd=PROTO_ROOT, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"grpc_tools.protoc failed (exit {res.returncode}):\n{' '.join(cmd)}\n"
                               f"{res.stdout}{res.stderr}")
        # Regular packages (not namespace packages) so that nothing else called `cdp` on sys.path
        # can mix its modules in.
        for d in [tmp / "cdp", *[p for p in (tmp / "cdp").rglob("*") if p.is_dir()]]:
            (d / "__init__.py").touch()
        (tmp / STAMP_NAME).write_text(stamp + "\n")
        old = None
        if OUT_DIR.exists():
            old = Path(tempfile.mkdtemp(prefix=OUT_DIR.name + ".old-", dir=OUT_DIR.parent))
            old.rmdir()
            OUT_DIR.rename(old)
        tmp.rename(OUT_DIR)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_generated() -> Path:
    """Generates the modules if they are missing or stale and returns their directory (on sys.path)."""
    files = _proto_files()
    stamp = _stamp(files)
    if not _is_current(stamp):
        OUT_DIR.parent.mkdir(parents=True, exist_ok=True)
        with open(OUT_DIR.parent / (OUT_DIR.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _is_current(stamp):  # another process may have done it meanwhile
                _generate(files, stamp)
    path = str(OUT_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
    importlib.invalidate_caches()
    return OUT_DIR


ensure_generated()

model_pb2 = importlib.import_module("cdp.model.v1.model_pb2")
identity_pb2 = importlib.import_module("cdp.identity.v1.identity_pb2")
identity_pb2_grpc = importlib.import_module("cdp.identity.v1.identity_pb2_grpc")
ingestion_pb2 = importlib.import_module("cdp.ingestion.v1.ingestion_pb2")
ingestion_pb2_grpc = importlib.import_module("cdp.ingestion.v1.ingestion_pb2_grpc")

__all__ = ["ensure_generated", "OUT_DIR", "model_pb2", "identity_pb2", "identity_pb2_grpc",
           "ingestion_pb2", "ingestion_pb2_grpc"]

if __name__ == "__main__":
    print(f"generated Python modules for {len(_proto_files())} protos in {OUT_DIR}")

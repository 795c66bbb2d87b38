"""Published models in an object store: S3 (or any fsspec filesystem) as the model store that
every node reaches, with a local cache where the models are loaded from.

A job writes its model to a local directory first (``from_pretrained`` needs files); with an
object store configured (``MODEL_STORE_URL``, e.g. ``s3://bucket/models``; S3-compatible
stores through the ``s3fs`` package and its usual ``AWS_*`` variables, ``AWS_ENDPOINT_URL`` for
MinIO and the like) the supervisor then :func:`upload` s it and registers the URL as the
model's path. Whoever loads a model by URL calls :func:`local_path`, which downloads it once
into a cache directory and returns that.

An object store has no atomic rename, so completeness is a marker: :func:`upload` writes every
file, then ``_COMPLETE`` (the manifest: each file's size); :func:`fetch` refuses a model
without it and checks the sizes. The cache is filled through a temporary sibling renamed into
place, so a reader never sees half a model and two workers fetching at once both end with one
complete copy. Uploading again (a retried job) finds the marker and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import fsspec

COMPLETE = "_COMPLETE"
"""the marker written last: a JSON manifest ``{"files": {relative path: size}}``"""


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a model in an object store (``scheme://...``), not a local
    directory or a hub id."""
    return "://" in str(path) and not str(path).startswith("file://")


def _manifest(local_dir: Path) -> dict[str, int]:
    return {
        str(path.relative_to(local_dir)): path.stat().st_size
        for path in sorted(local_dir.rglob("*"))
        if path.is_file()
    }


def upload(local_dir: str | Path, url: str) -> str:
    """Copy the model in ``local_dir`` to ``url`` (a directory there), then its marker; returns
    ``url``. A complete copy already there is kept as it is."""
    local_dir = Path(local_dir)
    fs, root = fsspec.core.url_to_fs(url)
    marker = f"{root.rstrip('/')}/{COMPLETE}"
    if fs.exists(marker):
        return url
    files = _manifest(local_dir)
    if not files:
        raise FileNotFoundError(f"{local_dir} holds no files to upload")
    for name in files:
        target = f"{root.rstrip('/')}/{name}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(local_dir / name), target)
    with fs.open(marker, "w") as handle:
        handle.write(json.dumps({"files": files}, sort_keys=True))
    return url


def cache_dir_for(url: str, cache_root: str | Path) -> Path:
    """Where :func:`fetch` keeps ``url``: its last part and a hash of the whole URL."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(cache_root) / f"{url.rstrip('/').rsplit('/', 1)[-1]}-{digest}"


def fetch(url: str, cache_root: str | Path) -> Path:
    """The model at ``url`` as a local directory under ``cache_root`` (downloaded the first
    time; later calls return the cached copy)."""
    local = cache_dir_for(url, cache_root)
    if (local / COMPLETE).is_file():
        return local
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    try:
        with fs.open(f"{root}/{COMPLETE}") as handle:
            files: dict[str, int] = json.loads(handle.read())["files"]
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{url} is not a complete model: no {COMPLETE} marker (an upload that did not finish)"
        ) from None
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
    try:
        for name, size in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{root}/{name}", str(target))
            got = target.stat().st_size
            if got != size:
                raise OSError(f"{url}/{name}: {got} bytes downloaded, the manifest says {size}")
        (staging / COMPLETE).write_text(json.dumps({"files": files}, sort_keys=True))
        try:
            os.rename(staging, local)
        except OSError:  # another process published the same model first: keep theirs
            if not (local / COMPLETE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return local


def local_path(path: str, cache_root: str | Path) -> str:
    """``path`` itself when it is local (or a hub id); the cached copy when it is a URL."""
    return str(fetch(path, cache_root)) if is_url(path) else path

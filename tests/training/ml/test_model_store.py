"""Published models in an object store (``training.ml.model_store``), on fsspec's in-memory
filesystem: what S3 through s3fs does, without a network."""

from __future__ import annotations

import json
import uuid

import fsspec
import pytest

from training.ml.model_store import COMPLETE, cache_dir_for, fetch, is_url, local_path, upload


@pytest.fixture
def model(tmp_path):
    directory = tmp_path / "reward_model-000007"
    (directory / "sub").mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (directory / "model.safetensors").write_bytes(b"\x00\x01" * 5000)
    (directory / "sub" / "tokenizer.json").write_text("{}")
    return directory


@pytest.fixture
def url():
    return f"memory://store-{uuid.uuid4().hex}/reward_model-000007"


def _files(directory):
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file() and p.name != COMPLETE
    }


def test_an_uploaded_model_is_fetched_whole_into_the_cache_once(model, url, tmp_path):
    assert upload(model, url) == url
    local = fetch(url, tmp_path / "cache")
    assert local == cache_dir_for(url, tmp_path / "cache")
    assert _files(local) == _files(model)
    fs, root = fsspec.core.url_to_fs(url)
    fs.rm(f"{root}/model.safetensors")  # a second fetch reads the cache, not the store
    assert fetch(url, tmp_path / "cache") == local
    assert local_path(url, tmp_path / "cache") == str(local)


def test_a_model_whose_upload_did_not_finish_is_refused(model, url, tmp_path):
    upload(model, url)
    fs, root = fsspec.core.url_to_fs(url)
    fs.rm(f"{root}/{COMPLETE}")  # as if the uploader died before its last write
    with pytest.raises(FileNotFoundError, match="no _COMPLETE marker"):
        fetch(url, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def test_a_truncated_file_is_refused_and_nothing_is_cached(model, url, tmp_path):
    upload(model, url)
    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe(f"{root}/model.safetensors", b"short")
    with pytest.raises(OSError, match="5 bytes downloaded, the manifest says 10000"):
        fetch(url, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_uploading_again_keeps_the_complete_copy(model, url):
    upload(model, url)
    (model / "config.json").write_text("changed")
    upload(model, url)  # a retried job: the store already holds it
    fs, root = fsspec.core.url_to_fs(url)
    assert json.loads(fs.cat(f"{root}/config.json")) == {"model_type": "llama"}


def test_local_paths_and_hub_ids_are_not_urls(tmp_path):
    assert not is_url(str(tmp_path)) and not is_url("meta-llama/Llama-3.2-1B")
    assert not is_url("file:///models/x") and is_url("s3://bucket/models/x")
    assert local_path(str(tmp_path), tmp_path / "cache") == str(tmp_path)

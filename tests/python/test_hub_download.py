"""--model ORG/NAME downloaded from a hub (a local server answering like the hub's resolve URLs) into the
Hugging Face cache layout, then exported; resume after a cut connection, corrupted blobs refused, 401/404/500."""
from __future__ import annotations

import os
import subprocess

import pytest

import fixtures as fx
from hub_server import Hub

COMMIT = "c" * 40


@pytest.fixture
def hub(tmp_path):
    h = Hub()
    h.add_repo("acme/tiny-bert", fx.checkpoint("bert"), COMMIT)
    h.add_repo("acme/sharded", fx.checkpoint("bert", "feature-extraction", "sharded_st"), "d" * 40)
    h.endpoint = h.start()
    yield h
    h.stop()


def run(hub, cache, *args, token=None):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=hub.endpoint)
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([str(fx.TREX_BIN), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def one_error_line(r):
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trex: error: "), r.stderr
    return lines[0]


def test_download_then_export_and_reuse(trex_bin, tmp_path, hub):
    cache = tmp_path / "hub"
    r = run(hub, cache, "export", "--model", "acme/tiny-bert", tmp_path / "a.onnx")
    assert r.returncode == 0, r.stderr
    repo = cache / "models--acme--tiny-bert"
    assert (repo / "refs" / "main").read_text() == COMMIT
    snap = repo / "snapshots" / COMMIT
    cfg = snap / "config.json"
    assert cfg.is_symlink() and os.readlink(cfg).startswith("../../blobs/")
    assert (snap / "model.safetensors").resolve().parent == (repo / "blobs").resolve()
    # huggingface_hub finds the files trex cached (same layout).
    from huggingface_hub import try_to_load_from_cache
    assert try_to_load_from_cache("acme/tiny-bert", "model.safetensors", cache_dir=cache)
    # The second run uses the cache: no request reaches the server.
    n = len(hub.requests)
    r = run(hub, cache, "export", "--model", "acme/tiny-bert", tmp_path / "b.onnx")
    assert r.returncode == 0, r.stderr
    assert len(hub.requests) == n


def test_sharded_download(trex_bin, tmp_path, hub):
    r = run(hub, tmp_path / "hub", "export", "--model", "acme/sharded", tmp_path / "s.onnx")
    assert r.returncode == 0, r.stderr
    snap = tmp_path / "hub" / "models--acme--sharded" / "snapshots" / ("d" * 40)
    assert len(list(snap.glob("model-*.safetensors"))) > 1


def test_resume_after_cut_connection(trex_bin, tmp_path, hub):
    cache = tmp_path / "hub"
    size = (fx.checkpoint("bert") / "model.safetensors").stat().st_size
    hub.cut_after = size // 2  # the first GET long enough is cut halfway
    r = run(hub, cache, "export", "--model", "acme/tiny-bert", tmp_path / "a.onnx")
    assert r.returncode == 2, r.stderr
    assert "run again" in one_error_line(r) or "download failed" in one_error_line(r)
    assert not (tmp_path / "a.onnx").exists()
    partial = list((cache / "models--acme--tiny-bert" / "blobs").glob("*.incomplete"))
    assert partial, "the partial download should stay for the resume"
    r = run(hub, cache, "export", "--model", "acme/tiny-bert", tmp_path / "a.onnx")
    assert r.returncode == 0, r.stderr
    ranges = [rng for m, p, rng in hub.requests if m == "GET" and p.endswith("model.safetensors") and rng]
    assert ranges and ranges[-1] != "bytes=0-", hub.requests


def test_corrupted_blob_refused(trex_bin, tmp_path, hub):
    cache = tmp_path / "hub"
    hub.corrupt.add("model.safetensors")
    r = run(hub, cache, "export", "--model", "acme/tiny-bert", tmp_path / "a.onnx")
    assert r.returncode == 2
    assert "checksum" in one_error_line(r)
    blobs = cache / "models--acme--tiny-bert" / "blobs"
    names = [p.name for p in blobs.iterdir()]
    assert not any(n.endswith(".incomplete") for n in names), names
    snap = cache / "models--acme--tiny-bert" / "snapshots" / COMMIT
    assert not (snap / "model.safetensors").exists()


def test_private_repo_needs_token(trex_bin, tmp_path, hub):
    hub.private["acme/tiny-bert"] = "secret"
    r = run(hub, tmp_path / "hub", "export", "--model", "acme/tiny-bert", tmp_path / "a.onnx")
    assert r.returncode == 2 and "HF_TOKEN" in one_error_line(r)
    r = run(hub, tmp_path / "hub", "export", "--model", "acme/tiny-bert", tmp_path / "a.onnx", token="secret")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case", ["404", "500"])
def test_server_errors(trex_bin, tmp_path, hub, case):
    if case == "404":
        model = "acme/nothing-here"
    else:
        model = "acme/tiny-bert"
        hub.status["/acme/tiny-bert/resolve/main/config.json"] = 500
    r = run(hub, tmp_path / "hub", "export", "--model", model, tmp_path / "a.onnx")
    assert r.returncode == 2
    assert case in one_error_line(r)
    assert not (tmp_path / "a.onnx").exists()

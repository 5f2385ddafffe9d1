"""--model ORG/NAME and cache repo folders resolved in the local Hugging Face cache, offline.

The cache is laid out by huggingface_hub itself: `try_to_load_from_cache` / `scan_cache_dir` read what the
test writes through huggingface_hub's own path helpers (blobs named by hash, snapshot files as relative symlinks
to ../../blobs/, refs/<branch> holding the commit)."""
from __future__ import annotations

import hashlib
import os
import shutil

import pytest

import fixtures as fx

COMMIT_MAIN = "a" * 40
COMMIT_OLD = "b" * 40


def make_cache(root, repo_id, ckpt, commits):
    """A hub cache under root with `ckpt`'s files at each commit (branch name -> commit)."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    for branch, commit in commits.items():
        (repo / "refs" / branch).write_text(commit)
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        for f in ckpt.iterdir():
            if f.name.startswith("."):
                continue
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            if not blob.exists():
                blob.write_bytes(data)
            os.symlink(os.path.relpath(blob, snap), snap / f.name)
    return repo


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "hub"
    make_cache(root, "acme/tiny-bert", fx.checkpoint("bert"), {"main": COMMIT_MAIN, "v1": COMMIT_OLD})
    return root


def run(env_root, *args):
    import subprocess

    env = dict(os.environ, HF_HUB_CACHE=str(env_root), HF_HUB_OFFLINE="1")
    return subprocess.run([str(fx.TREX_BIN), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_huggingface_hub_reads_the_test_cache(cache):
    """The layout is huggingface_hub's: its own lookup finds the files."""
    from huggingface_hub import try_to_load_from_cache

    p = try_to_load_from_cache("acme/tiny-bert", "config.json", cache_dir=cache)
    assert p and os.path.exists(p)


@pytest.mark.parametrize("revision", [None, "v1", COMMIT_OLD])
def test_hub_id_from_cache(trex_bin, tmp_path, cache, revision):
    extra = ["--revision", revision] if revision else []
    out = tmp_path / "out.onnx"
    r = run(cache, "export", "--model", "acme/tiny-bert", *extra, out)
    assert r.returncode == 0, r.stderr
    assert out.is_file()
    snap = COMMIT_OLD if revision else COMMIT_MAIN
    assert f"snapshots/{snap}" in r.stdout


def test_cache_repo_folder(trex_bin, tmp_path, cache):
    out = tmp_path / "out.onnx"
    r = run(cache, "export", "--model", cache / "models--acme--tiny-bert", out)
    assert r.returncode == 0, r.stderr
    assert out.is_file()


def test_hf_home_layout(trex_bin, tmp_path):
    home = tmp_path / "hfhome"
    make_cache(home / "hub", "acme/tiny-bert", fx.checkpoint("bert"), {"main": COMMIT_MAIN})
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_CACHE"}
    env["HF_HOME"] = str(home)
    r = subprocess.run([str(fx.TREX_BIN), "export", "--model", "acme/tiny-bert", tmp_path / "o.onnx"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("model,words", [
    ("acme/not-there", ["acme/not-there", "cache"]),
    ("../../etc/passwd", ["does not exist"]),
    ("acme/../x", ["does not exist"]),
])
def test_missing_or_bad_ids(trex_bin, tmp_path, cache, model, words):
    out = tmp_path / "out.onnx"
    r = run(cache, "export", "--model", model, out)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trex: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("revision,code", [("nope", 2), ("../../x", 1)])
def test_bad_revision(trex_bin, tmp_path, cache, revision, code):
    r = run(cache, "export", "--model", "acme/tiny-bert", "--revision", revision, tmp_path / "o.onnx")
    assert r.returncode == code, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_snapshot_symlink_out_of_the_cache_is_refused(trex_bin, tmp_path, cache):
    """A snapshot file pointing outside its repo (not into ../../blobs) is not followed."""
    secret = tmp_path / "secret.json"
    shutil.copy(fx.checkpoint("bert") / "config.json", secret)
    cfg = cache / "models--acme--tiny-bert" / "snapshots" / COMMIT_MAIN / "config.json"
    cfg.unlink()
    os.symlink(secret, cfg)
    r = run(cache, "export", "--model", "acme/tiny-bert", tmp_path / "o.onnx")
    assert r.returncode == 2, r.stderr

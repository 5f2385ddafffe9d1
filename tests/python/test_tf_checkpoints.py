"""trex export from TensorFlow checkpoints (tf_model.h5) vs transformers on PyTorch loading the same weights.

The checkpoints are made with transformers' TF classes in .venv-tf (tensorflow-cpu + tf-keras; made by
scripts/setup) by tests/python/tf_fixtures.py, which also saves the PyTorch reference outputs
(load_tf2_checkpoint_in_pytorch_model, eager attention) and damaged copies for the hostile cases. All are cached
under tests/fixtures/generated like the other fixtures.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import fixtures as fx
from test_oracle import TOL, check_io, check_onnx_file

TF_PY = fx.REPO / ".venv-tf" / "bin" / "python"
SCRIPT = fx.REPO / "tests" / "python" / "tf_fixtures.py"
FIXTURE_NAME = "tf-checkpoints-v2"  # bump when tf_fixtures.py changes

pytestmark = pytest.mark.skipif(not TF_PY.exists(), reason=".venv-tf missing (scripts/setup makes it)")


def _make(tmp):
    r = subprocess.run([str(TF_PY), str(SCRIPT), str(tmp)], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"tf_fixtures.py failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-6000:]}"


@pytest.fixture(scope="module")
def tf_root():
    return fx._materialize(FIXTURE_NAME, _make)


def _cases():
    # The list is the fixture script's, read without importing TensorFlow.
    import ast

    tree = ast.parse(SCRIPT.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CASES":
            return ast.literal_eval(node.value)
    raise AssertionError("CASES not found in tf_fixtures.py")


CASES = _cases()


def _expected_outputs(model_type, head):
    # A base model saved by TF keeps its pooler (BERT, ALBERT, RoBERTa); the task models' checkpoints compared here
    # give no pooler output.
    has_pooler = head == "feature-extraction" and model_type in fx.POOLER_TYPES
    return fx.expected_outputs(model_type, head, has_pooler)


@pytest.mark.parametrize("model_type,head", CASES, ids=[f"{m}-{h}" for m, h in CASES])
def test_tf_checkpoint_matches_pytorch(model_type, head, tf_root, trex_bin, tmp_path, record_diff):
    case = tf_root / f"{model_type}-{head}"
    model_dir = case / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "tf_model.h5"]
    out = tmp_path / "model.onnx"
    r = fx.export(model_dir, out)  # no --framework: tf_model.h5 is the only weights file
    assert "load check: ok" in r.stdout, r.stdout
    m = check_onnx_file(out, model_type, head)
    check_io(m, model_type, _expected_outputs(model_type, head))
    feeds = fx.padded_batch(model_type)
    got = fx.run_ort(out, feeds)
    ref = dict(np.load(case / "ref.npz"))
    diffs = fx.compare(got, ref, TOL)
    assert set(diffs) == set(got), diffs
    for name, d in diffs.items():
        record_diff(f"tf:{model_type}-{head}", name, d, TOL)
    bad = {k: v for k, v in diffs.items() if not v <= TOL}
    assert not bad, f"{model_type}-{head} from tf_model.h5: max abs diff above {TOL}: {bad}"


def test_framework_option(tf_root, trex_bin, tmp_path):
    model_dir = tf_root / "bert-text-classification" / "model"
    out = tmp_path / "a" / "model.onnx"
    r = fx.export(model_dir, out, "--framework", "tf", "--no-check")
    assert out.exists()
    # --framework pt on a folder with only tf_model.h5: a clear error, nothing written.
    out2 = tmp_path / "b" / "model.onnx"
    r = fx.run_trex("export", "--model", model_dir, "--framework", "pt", out2)
    assert r.returncode == 2, r.stderr
    assert "no PyTorch weights" in r.stderr and "tf_model.h5" in r.stderr, r.stderr
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
    # --framework tf on a PyTorch checkpoint: says tf_model.h5 is missing.
    r = fx.run_trex("export", "--model", fx.checkpoint("bert"), "--framework", "tf", tmp_path / "c" / "model.onnx")
    assert r.returncode == 2 and "no TensorFlow weights" in r.stderr, r.stderr
    r = fx.run_trex("export", "--model", model_dir, "--framework", "jax", tmp_path / "d.onnx")
    assert r.returncode != 0 and "framework" in r.stderr, r.stderr


def test_pytorch_weights_preferred_when_both(tf_root, trex_bin, tmp_path, record_diff):
    """auto: safetensors beside tf_model.h5 wins; --framework tf reads the h5 (different weights, different output)."""
    model_dir = tmp_path / "both"
    shutil.copytree(tf_root / "bert-feature-extraction" / "model", model_dir)
    shutil.copy(fx.checkpoint("bert") / "model.safetensors", model_dir / "model.safetensors")
    feeds = fx.padded_batch("bert")
    fx.export(model_dir, tmp_path / "auto.onnx", "--no-check")
    fx.export(model_dir, tmp_path / "tf.onnx", "--framework", "tf", "--no-check")
    auto = fx.run_ort(tmp_path / "auto.onnx", feeds)["last_hidden_state"]
    tf = fx.run_ort(tmp_path / "tf.onnx", feeds)["last_hidden_state"]
    ref_pt = fx.run_oracle(fx.checkpoint("bert"), "feature-extraction", feeds)["last_hidden_state"]
    ref_tf = np.load(tf_root / "bert-feature-extraction" / "ref.npz")["last_hidden_state"]
    assert np.max(np.abs(auto - ref_pt)) <= TOL
    assert np.max(np.abs(tf - ref_tf)) <= TOL


def _export_fails(model_dir, tmp_path, *expect):
    out_dir = tmp_path / "out"
    r = fx.run_trex("export", "--model", model_dir, out_dir / "model.onnx")
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    err = r.stderr.strip()
    assert err.startswith("trex: error: ") and "\n" not in err, err
    for e in expect:
        assert e in err, f"{e!r} not in: {err}"
    assert not out_dir.exists() or not any(out_dir.iterdir()), sorted(out_dir.iterdir())
    return err


def test_missing_dataset(tf_root, trex_bin, tmp_path):
    q = json.loads((tf_root / "cases.json").read_text())["query_kernel"]
    _export_fails(tf_root / "hostile" / "missing_dataset", tmp_path, "tf_model.h5", f"/bert/{q}", "missing")


def test_misshaped_dataset(tf_root, trex_bin, tmp_path):
    q = json.loads((tf_root / "cases.json").read_text())["query_kernel"]
    _export_fails(tf_root / "hostile" / "misshaped_dataset", tmp_path, "tf_model.h5", f"/bert/{q}",
                  "bert.encoder.layer.0.attention.self.query.weight", "has shape [31, 32], expected [32, 32]")


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_truncated_file(tf_root, trex_bin, tmp_path, cut):
    model_dir = tmp_path / "ckpt"
    shutil.copytree(tf_root / "bert-text-classification" / "model", model_dir)
    h5 = model_dir / "tf_model.h5"
    data = h5.read_bytes()
    h5.write_bytes(data[: int(len(data) * cut)])
    _export_fails(model_dir, tmp_path, str(h5))


def test_not_hdf5(trex_bin, tmp_path):
    model_dir = tmp_path / "ckpt"
    model_dir.mkdir()
    shutil.copy(fx.checkpoint("bert") / "config.json", model_dir / "config.json")
    (model_dir / "tf_model.h5").write_bytes(b"PK\x03\x04 this is a zip, not HDF5" * 10)
    _export_fails(model_dir, tmp_path, "tf_model.h5", "not an HDF5 file")


def test_symlink_outside_folder(tf_root, trex_bin, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(tf_root / "bert-text-classification" / "model", outside)
    model_dir = tmp_path / "ckpt"
    model_dir.mkdir()
    shutil.copy(outside / "config.json", model_dir / "config.json")
    os.symlink(outside / "tf_model.h5", model_dir / "tf_model.h5")
    _export_fails(model_dir, tmp_path, "tf_model.h5", "outside the folder")


def test_tf_gpt2_matches_pytorch(tf_root, trex_bin, tmp_path, record_diff):
    """TFGPT2LMHeadModel's tf_model.h5 (Conv1D weights, [1, n] biases): prefill logits of a left-padded batch."""
    import decoder_fixtures as dfx
    from test_decoders import TOL as DEC_TOL

    case = tf_root / "gpt2"
    out = tmp_path / "folder"
    fx.export(case / "model", out, "--pipeline", "text-generation")
    ref = np.load(case / "ref.npz")
    dec = dfx.OnnxDecoder(out / "model.onnx")
    dec.reset(ref["input_ids"].shape[0])
    logits = dec.step(ref["input_ids"], ref["attention_mask"])
    mask = ref["attention_mask"].astype(bool)  # padded positions' logits are not compared (as in test_decoders)
    diff = float(np.max(np.abs(logits[mask] - ref["logits"][mask])))
    record_diff("tf:gpt2 (prefill)", "logits", diff, DEC_TOL)
    assert diff <= DEC_TOL


@pytest.mark.parametrize("name", ["t5", "t5-v1_1"])
def test_tf_t5_matches_pytorch(name, tf_root, trex_bin, tmp_path, record_diff):
    """TFT5ForConditionalGeneration's tf_model.h5 (the shared embedding stored in three layers; t5-v1_1: an untied
    lm_head): encoder output and the first decoder step's logits."""
    import seq2seq_fixtures as sfx
    from test_seq2seq import ENC_TOL, TOL as DEC_TOL

    case = tf_root / name
    out = tmp_path / "folder"
    fx.export(case / "model", out)
    ref = np.load(case / "ref.npz")
    run = sfx.OnnxSeq2Seq(out)
    enc = run.encode(ref["input_ids"], ref["attention_mask"])
    mask = ref["attention_mask"].astype(bool)
    enc_diff = float(np.max(np.abs(enc[mask] - ref["last_hidden_state"][mask])))
    logits = run.step(ref["decoder_input_ids"])
    diff = float(np.max(np.abs(logits - ref["logits"])))
    record_diff(f"tf:{name} (encoder)", "last_hidden_state", enc_diff, ENC_TOL)
    record_diff(f"tf:{name} (first step)", "logits", diff, DEC_TOL)
    assert enc_diff <= ENC_TOL and diff <= DEC_TOL


def test_hub_download_fetches_tf_weights(tf_root, trex_bin, tmp_path):
    """A hub id whose repo has only tf_model.h5 is downloaded and exported (auto); with both weights files,
    --framework tf fetches tf_model.h5 and not model.safetensors, and auto fetches model.safetensors only."""
    from hub_server import Hub
    from test_hub_download import run

    tf_only = tf_root / "bert-text-classification" / "model"
    both = tmp_path / "both"
    shutil.copytree(tf_root / "bert-feature-extraction" / "model", both)
    shutil.copy(fx.checkpoint("bert") / "model.safetensors", both / "model.safetensors")
    hub = Hub()
    hub.add_repo("acme/tf-only", tf_only, "a" * 40)
    hub.add_repo("acme/both", both, "b" * 40)
    hub.endpoint = hub.start()
    try:
        cache = tmp_path / "hub"
        r = run(hub, cache, "export", "--model", "acme/tf-only", tmp_path / "a.onnx")
        assert r.returncode == 0, r.stderr
        assert (cache / "models--acme--tf-only" / "snapshots" / ("a" * 40) / "tf_model.h5").exists()

        def fetched(repo):
            return {p.rsplit("/", 1)[-1] for m, p, _ in hub.requests if m == "GET" and f"/{repo}/" in p}

        r = run(hub, cache, "export", "--model", "acme/both", "--framework", "tf", tmp_path / "b.onnx")
        assert r.returncode == 0, r.stderr
        assert "tf_model.h5" in fetched("acme/both") and "model.safetensors" not in fetched("acme/both")
        snap = cache / "models--acme--both" / "snapshots" / ("b" * 40)
        feeds = fx.padded_batch("bert")
        ref = np.load(tf_root / "bert-feature-extraction" / "ref.npz")["last_hidden_state"]
        assert np.max(np.abs(fx.run_ort(tmp_path / "b.onnx", feeds)["last_hidden_state"] - ref)) <= TOL
        # auto on a fresh cache: the PyTorch weights only.
        hub.requests.clear()
        r = run(hub, tmp_path / "hub2", "export", "--model", "acme/both", tmp_path / "c.onnx")
        assert r.returncode == 0, r.stderr
        assert "model.safetensors" in fetched("acme/both") and "tf_model.h5" not in fetched("acme/both")
        assert snap.exists()
    finally:
        hub.stop()


@pytest.mark.parametrize("model_type,head", [("bert", "text-classification"), ("albert", "fill-mask")])
def test_tf_checkpoint_to_torchscript(model_type, head, tf_root, trex_bin, tmp_path, record_diff):
    """--format torchscript reads tf_model.h5 too (same weights path): the .pt module vs the same reference."""
    import torch

    from test_torchscript import _compare_tuple, _needs_torchscript

    _needs_torchscript()
    case = tf_root / f"{model_type}-{head}"
    out = tmp_path / "model.pt"
    fx.export(case / "model", out, "--framework", "tf")
    module = torch.jit.load(str(out))
    feeds = fx.padded_batch(model_type)
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        got = module(*[t[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in t])
    diffs = _compare_tuple(got, dict(np.load(case / "ref.npz")))
    for k, d in diffs.items():
        record_diff(f"tf:{model_type}-{head} [torchscript]", k, d, TOL)
    assert all(d <= TOL for d in diffs.values()), diffs


@pytest.mark.parametrize("case,message", [("hdf5_hang", "did not finish reading it in 2 s"),
                                          ("hdf5_crash", "HDF5 library crashed reading it")])
def test_file_that_breaks_the_hdf5_library(case, message, tf_root, trex_bin, tmp_path, monkeypatch):
    """HDF5 runs in a child process: a file on which libhdf5 loops forever is refused at the deadline, one on which
    it crashes is refused too; trex itself neither hangs nor crashes."""
    monkeypatch.setenv("TREX_H5_TIMEOUT_S", "2")
    _export_fails(tf_root / "hostile" / case, tmp_path, "tf_model.h5", message)

"""--layout transformers.js and --layout triton. Triton: every config.pbtxt parses back with protobuf's text parser
against Triton's own ModelConfig schema (model_config_pb2 from the pinned tritonclient wheel) and its inputs/outputs
match the ONNX graph's. transformers.js: the pinned @huggingface/transformers (tests/js, installed by scripts/setup)
loads trex's folder offline and gives transformers' numbers."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import fixtures as fx

JS_DIR = fx.REPO / "tests" / "js"


# ---------------------------------------------------------------------------------------------------------------
# Triton
# ---------------------------------------------------------------------------------------------------------------

def _model_config_pb2():
    """tritonclient's generated model_config_pb2, loaded by path: importing tritonclient.grpc would need grpcio,
    which the schema does not (tritonclient is installed without its dependencies, see scripts/setup)."""
    spec = importlib.util.find_spec("tritonclient")
    assert spec is not None, "tritonclient is not installed (scripts/setup)"
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    mod_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def parse_config(path: Path):
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    return text_format.Parse(path.read_text(), pb2.ModelConfig()), pb2


ONNX_TO_TRITON = {1: "TYPE_FP32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 6: "TYPE_INT32"}


def check_config_matches_model(model_dir: Path, batched: bool):
    """config.pbtxt of one Triton model vs its 1/model.onnx: names, data types, dims (-1 for symbolic dims; the
    batch dim left out when batched)."""
    import onnx

    cfg, pb2 = parse_config(model_dir / "config.pbtxt")
    assert cfg.name == model_dir.name
    assert cfg.platform == "onnxruntime_onnx"
    graph = onnx.load(str(model_dir / "1" / "model.onnx"), load_external_data=False).graph
    assert (cfg.max_batch_size > 0) == batched, cfg.max_batch_size
    assert cfg.HasField("dynamic_batching") == batched
    for want, got in ((graph.input, cfg.input), (graph.output, cfg.output)):
        assert [v.name for v in want] == [t.name for t in got]
        for v, t in zip(want, got):
            assert pb2.DataType.Name(t.data_type) == ONNX_TO_TRITON[v.type.tensor_type.elem_type], v.name
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            if batched:
                assert v.type.tensor_type.shape.dim[0].dim_param, v.name
                dims = dims[1:]
            assert list(t.dims) == dims, v.name
    return cfg


def export(*args):
    r = fx.run_trex("export", *args)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def test_triton_repository_with_variants(trex_bin, tmp_path):
    repo = tmp_path / "repo"
    export("--model", fx.checkpoint("bert", "text-classification"), "--layout", "triton", "--triton-name", "clf",
           "--optimize", "--quantize", repo)
    assert sorted(p.name for p in repo.iterdir()) == ["clf", "clf_optimized", "clf_quantized"]
    for name in ("clf", "clf_optimized", "clf_quantized"):
        assert sorted(str(p.relative_to(repo / name)) for p in (repo / name).rglob("*")) == [
            "1", "1/model.onnx", "config.pbtxt"]
        cfg = check_config_matches_model(repo / name, batched=True)
        assert cfg.max_batch_size == 16
    cfg, _ = parse_config(repo / "clf" / "config.pbtxt")
    assert [list(t.dims) for t in cfg.input] == [[-1]] * 3 and list(cfg.output[0].dims) == [fx.NUM_LABELS]


def test_triton_max_batch_and_static_shape(trex_bin, tmp_path):
    ckpt = fx.checkpoint("bert")
    export("--model", ckpt, "--layout", "triton", "--triton-max-batch", "4", tmp_path / "a")
    cfg = check_config_matches_model(tmp_path / "a" / ckpt.name, batched=True)
    assert cfg.max_batch_size == 4
    export("--model", ckpt, "--layout", "triton", "--static-shape", "2,8", tmp_path / "b")
    cfg = check_config_matches_model(tmp_path / "b" / ckpt.name, batched=False)
    assert list(cfg.input[0].dims) == [2, 8]


def test_triton_decoder_and_seq2seq(trex_bin, tmp_path):
    """A decoder with its KV cache is one model whose tensors are all batch-first (the client runs the generation
    loop, feeding present.* back as past_key_values.*). An encoder-decoder is a repository of two models,
    NAME_encoder_model (batched) and NAME_decoder_model_merged (not batched: use_cache_branch is a [1] flag),
    each self-contained (no weights file shared across model folders)."""
    import decoder_fixtures as dfx
    import seq2seq_fixtures as sfx

    export("--model", dfx.decoder_checkpoint("llama"), "--layout", "triton", "--triton-name", "lm", tmp_path / "r")
    export("--model", sfx.seq2seq_checkpoint("t5"), "--layout", "triton", "--triton-name", "t5", tmp_path / "r")
    repo = tmp_path / "r"
    assert sorted(p.name for p in repo.iterdir()) == ["lm", "t5_decoder_model_merged", "t5_encoder_model"]
    check_config_matches_model(repo / "lm", batched=True)
    check_config_matches_model(repo / "t5_encoder_model", batched=True)
    check_config_matches_model(repo / "t5_decoder_model_merged", batched=False)
    assert not list(repo.rglob("*.data"))


@pytest.mark.parametrize("layout", ["triton", "transformers.js", "optimum"])
def test_layout_needs_a_folder(trex_bin, tmp_path, layout):
    r = fx.run_trex("export", "--model", fx.checkpoint("bert"), "--layout", layout, tmp_path / "m.onnx")
    assert r.returncode == 1 and "OUTPUT must be a folder" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_triton_name_and_options(trex_bin, tmp_path):
    r = fx.run_trex("export", "--model", fx.checkpoint("bert"), "--layout", "triton", "--triton-name", "../x",
                    tmp_path / "r")
    assert r.returncode == 1 and "Triton model name" in r.stderr, r.stderr
    r = fx.run_trex("export", "--model", fx.checkpoint("bert"), "--triton-name", "x", tmp_path / "r")
    assert r.returncode == 1 and "--layout triton only" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("layout", ["triton", "transformers.js", "optimum"])
def test_failed_export_leaves_nothing(trex_bin, tmp_path, layout):
    """A checkpoint whose weights miss a tensor: exit 2, one line, and no folder of the layout left behind."""
    from safetensors.numpy import load_file, save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(fx.checkpoint("bert"), ckpt)
    weights = load_file(ckpt / "model.safetensors")
    del weights[next(k for k in weights if "layer.1." in k)]
    save_file(weights, ckpt / "model.safetensors")
    out = tmp_path / "out" / "nested"
    r = fx.run_trex("export", "--model", ckpt, "--layout", layout, out)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# transformers.js
# ---------------------------------------------------------------------------------------------------------------

def run_js(request: dict) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found (scripts/setup installs nodejs)")
    if not (JS_DIR / "node_modules" / "@huggingface" / "transformers").is_dir():
        pytest.fail(f"{JS_DIR}/node_modules is missing: run scripts/setup (npm ci in tests/js)")
    r = subprocess.run([node, str(JS_DIR / "run_model.mjs")], input=json.dumps(request), capture_output=True,
                       text=True, timeout=120, cwd=JS_DIR)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _tensor(a: np.ndarray) -> dict:
    return {"dims": list(a.shape), "data": a.reshape(-1).tolist()}


def test_transformers_js_layout_files(trex_bin, tmp_path):
    out = tmp_path / "m"
    export("--model", fx.minilm_dir(), "--layout", "transformers.js", "--quantize", out)
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["model.onnx", "model_quantized.onnx"]
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("dtype", ["fp32", "q8"])
def test_transformers_js_feature_extraction(trex_bin, tmp_path, dtype):
    """transformers.js (offline, env.localModelPath) loads onnx/model.onnx (fp32) and onnx/model_quantized.onnx
    (q8) from trex's folder. fp32: transformers' last_hidden_state within 1e-5 on real tokens; q8: mean row cosine
    >= 0.99 (trex's own int8 accuracy target)."""
    import torch
    import transformers as tf

    ckpt = fx.checkpoint("bert")
    export("--model", ckpt, "--layout", "transformers.js", "--quantize", tmp_path / "bert")
    batch = fx.padded_batch("bert")
    got = run_js({"root": str(tmp_path), "name": "bert", "dtype": dtype, "mode": "forward",
                  "inputs": {k: _tensor(v) for k, v in batch.items()}})["outputs"]["last_hidden_state"]
    got = np.asarray(got["data"], dtype=np.float32).reshape(got["dims"])
    ref = tf.AutoModel.from_pretrained(ckpt, attn_implementation="eager").eval()
    with torch.no_grad():
        want = ref(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
    mask = batch["attention_mask"].astype(bool)
    a, b = got[mask], want[mask]
    if dtype == "fp32":
        assert np.abs(a - b).max() <= 1e-5
    else:
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        assert cos.mean() >= 0.99, cos.mean()


def test_transformers_js_text_generation(trex_bin, tmp_path):
    """A decoder (llama, KV cache) in the transformers.js layout: its generate() (greedy, left-padded batch) gives
    transformers' tokens."""
    import torch

    import decoder_fixtures as dfx

    ckpt = dfx.decoder_checkpoint("llama")
    export("--model", ckpt, "--layout", "transformers.js", tmp_path / "llama")
    assert (tmp_path / "llama" / "onnx" / "model.onnx").is_file()
    ids, mask = dfx.left_padded_batch(seed=5, lengths=(8, 5))
    got = run_js({"root": str(tmp_path), "name": "llama", "dtype": "fp32", "mode": "generate", "max_new_tokens": 12,
                  "pad_token_id": dfx.PAD, "inputs": {"input_ids": _tensor(ids), "attention_mask": _tensor(mask)}})
    ref = dfx.reference_model(ckpt)
    with torch.no_grad():
        want = ref.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                            max_new_tokens=12, min_new_tokens=12, pad_token_id=dfx.PAD).numpy()
    assert np.array_equal(np.asarray(got["tokens"]), want), f"transformers.js {got['tokens']}\ntransformers {want.tolist()}"


def test_transformers_js_int4_decoder(trex_bin, tmp_path):
    """--quantize int4 in the transformers.js layout is onnx/model_q4.onnx (int8: model_quantized.onnx), which
    transformers.js loads as dtype "q4"; its first greedy tokens are transformers' fp32 ones (random weights: later
    tokens may flip under int4, see test_quantized_export.py)."""
    import torch

    import decoder_fixtures as dfx

    ckpt = dfx.decoder_checkpoint("llama")
    export("--model", ckpt, "--layout", "transformers.js", "--quantize", "int4", tmp_path / "llama")
    assert sorted(p.name for p in (tmp_path / "llama" / "onnx").iterdir()) == ["model.onnx", "model_q4.onnx"]
    prompt = np.array([[1, 17, 42, 5, 63, 8, 21]], dtype=np.int64)
    mask = np.ones_like(prompt)
    got = run_js({"root": str(tmp_path), "name": "llama", "dtype": "q4", "mode": "generate", "max_new_tokens": 8,
                  "pad_token_id": dfx.PAD, "inputs": {"input_ids": _tensor(prompt), "attention_mask": _tensor(mask)}})
    ref = dfx.reference_model(ckpt)
    with torch.no_grad():
        want = ref.generate(input_ids=torch.from_numpy(prompt), attention_mask=torch.from_numpy(mask), do_sample=False,
                            max_new_tokens=8, min_new_tokens=8, pad_token_id=dfx.PAD).numpy()
    got = np.asarray(got["tokens"])
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.array_equal(got[0, :prompt.shape[1] + 2], want[0, :prompt.shape[1] + 2]), \
        f"transformers.js q4 {got.tolist()}\ntransformers {want.tolist()}"

"""Decoder-only LMs (text-generation): trex's ONNX model vs transformers eager, step by step.

For every case: a prefill on a left-padded batch of 2, then 10 decode steps feeding present.* back as past
(logits compared at every step at the positions that are not padding, tolerance 1e-4), and 32 greedy tokens
equal to transformers' generate(). Also the output folder (config, generation config, tokenizer, genai config),
formats (bf16, sharded), and bad inputs.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import decoder_fixtures as dfx
import fixtures as fx

TOL = 1e-4
STEPS = 10
GREEDY_TOKENS = 32


def export(trex_bin, ckpt, out_dir, *extra):
    r = fx.run_trex("export", "--model", ckpt, "--pipeline", "text-generation", *extra, out_dir)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return out_dir / "model.onnx"


def reference_steps(model, ids, mask, steps):
    """transformers eager: prefill then `steps` greedy decode steps; returns the logits of each call and tokens."""
    import torch

    logits_per_step, tokens = [], []
    with torch.no_grad():
        pos = torch.from_numpy(dfx.position_ids(mask, ids.shape[1]))
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), position_ids=pos,
                    use_cache=True)
        logits_per_step.append(out.logits.numpy())
        past = out.past_key_values
        for _ in range(steps):
            nxt = out.logits[:, -1, :].argmax(-1, keepdim=True)
            tokens.append(nxt.numpy())
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.int64)], axis=1)
            pos = torch.from_numpy(dfx.position_ids(mask, 1))
            out = model(input_ids=nxt, attention_mask=torch.from_numpy(mask), position_ids=pos,
                        past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits_per_step.append(out.logits.numpy())
    return logits_per_step, tokens


@pytest.mark.parametrize("graph", ["plain", "optimized"])
@pytest.mark.parametrize("name", sorted(dfx.DECODER_CASES))
def test_decoder_matches_transformers_step_by_step(trex_bin, tmp_path, record_diff, name, graph):
    ckpt = dfx.decoder_checkpoint(name)
    if graph == "plain":
        model_path = export(trex_bin, ckpt, tmp_path / "out")
    else:
        model_path = export(trex_bin, ckpt, tmp_path / "out", "--optimize").with_name("model-optimized.onnx")
    ref = dfx.reference_model(ckpt)
    ids, mask = dfx.left_padded_batch()
    ref_logits, ref_tokens = reference_steps(ref, ids, mask, STEPS)

    onnx = dfx.OnnxDecoder(model_path)
    onnx.reset(ids.shape[0])
    worst = 0.0
    got = onnx.step(ids, mask)
    valid = mask.astype(bool)  # padding positions produce garbage in both: compare real tokens only
    worst = max(worst, float(np.abs(got[valid] - ref_logits[0][valid]).max()))
    cur_mask = mask
    for step in range(STEPS):
        nxt = ref_tokens[step].astype(np.int64)
        cur_mask = np.concatenate([cur_mask, np.ones_like(nxt)], axis=1)
        got = onnx.step(nxt, cur_mask)
        diff = float(np.abs(got - ref_logits[step + 1]).max())
        assert diff <= TOL, f"decode step {step + 1}: max abs diff {diff:.3e}"
        worst = max(worst, diff)
    record_diff(f"decoder-{name} {graph} (prefill + {STEPS} steps)", "logits", worst, TOL)
    assert worst <= TOL


# phi3-longrope is left out: transformers' Phi-3 generate() drops its KV cache and recomputes the whole sequence
# when the length first passes original_max_position_embeddings (long factors from then on). That is a policy of
# the generation loop, not of the graph, whose per-step logits are checked above.
@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma"])
def test_greedy_tokens_equal_generate(trex_bin, tmp_path, name):
    import torch

    ckpt = dfx.decoder_checkpoint(name)
    model_path = export(trex_bin, ckpt, tmp_path / "out")
    ref = dfx.reference_model(ckpt)
    ids, mask = dfx.left_padded_batch(seed=11, lengths=(7, 4))
    with torch.no_grad():
        want = ref.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                            max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS, do_sample=False,
                            pad_token_id=dfx.PAD)[:, ids.shape[1]:].numpy()
    # min_new_tokens makes generate() never pick eos: the ONNX loop does the same.
    got = dfx.OnnxDecoder(model_path).greedy(ids, mask, GREEDY_TOKENS, suppress=ref.generation_config.eos_token_id)
    assert np.array_equal(got, want), f"trex {got.tolist()}\ntransformers {want.tolist()}"


@pytest.mark.parametrize("fmt", ["bf16", "fp16", "sharded"])
def test_decoder_formats(trex_bin, tmp_path, record_diff, fmt):
    """bf16 weights (converted to fp32 while streaming) and sharded safetensors give transformers' numbers."""
    import torch

    ckpt = dfx.decoder_checkpoint("llama", fmt)
    model_path = export(trex_bin, ckpt, tmp_path / "out")
    ref = dfx.reference_model(ckpt)  # transformers upcasts the same bf16 values to fp32
    ids, mask = dfx.left_padded_batch()
    onnx = dfx.OnnxDecoder(model_path)
    onnx.reset(2)
    got = onnx.step(ids, mask)
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                   position_ids=torch.from_numpy(dfx.position_ids(mask, ids.shape[1]))).logits.numpy()
    valid = mask.astype(bool)
    diff = float(np.abs(got[valid] - want[valid]).max())
    record_diff(f"decoder-llama-{fmt}", "logits", diff, TOL)
    assert diff <= TOL


def test_output_folder_is_complete(trex_bin, tmp_path):
    ckpt = dfx.decoder_checkpoint("qwen2")
    out = tmp_path / "nested" / "folder"  # missing folders are created
    export(trex_bin, ckpt, out)
    names = {p.name for p in out.iterdir()}
    for f in ["model.onnx", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "genai_config.json"]:
        assert f in names, f"{f} missing from {sorted(names)}"
    assert json.loads((out / "config.json").read_text()) == json.loads((ckpt / "config.json").read_text())
    genai = json.loads((out / "genai_config.json").read_text())
    dec = genai["model"]["decoder"]
    cfg = json.loads((ckpt / "config.json").read_text())
    assert dec["filename"] == "model.onnx"
    assert dec["num_hidden_layers"] == cfg["num_hidden_layers"]
    assert dec["num_key_value_heads"] == cfg["num_key_value_heads"]
    assert dec["head_size"] == cfg["hidden_size"] // cfg["num_attention_heads"]
    assert genai["model"]["type"] == "qwen2" and genai["model"]["vocab_size"] == dfx.VOCAB
    from transformers import AutoConfig, AutoTokenizer

    assert AutoTokenizer.from_pretrained(out)("w5 w7")["input_ids"] == [5, 7]
    assert AutoConfig.from_pretrained(out).model_type == "qwen2"


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_optimum_loads_the_folder(trex_bin, tmp_path, name):
    """optimum's ORTModelForCausalLM loads the plain folder as it is; greedy and beam search give transformers'
    tokens on a left-padded batch."""
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    ckpt = dfx.decoder_checkpoint(name)
    out = tmp_path / "folder"
    export(trex_bin, ckpt, out)
    ort_model = ORTModelForCausalLM.from_pretrained(out, use_cache=True)
    ref = dfx.reference_model(ckpt)
    ids, mask = dfx.left_padded_batch(seed=5, lengths=(8, 5))
    args = dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                pad_token_id=dfx.PAD)
    for extra in (dict(max_new_tokens=24, min_new_tokens=24), dict(max_new_tokens=12, num_beams=4)):
        with torch.no_grad():
            want = ref.generate(**args, **extra)
        got = ort_model.generate(**args, **extra)
        assert torch.equal(got, want), f"{extra}: optimum {got.tolist()}\ntransformers {want.tolist()}"


def test_zero_length_past_and_metadata(trex_bin, tmp_path):
    import onnx

    ckpt = dfx.decoder_checkpoint("llama")
    model_path = export(trex_bin, ckpt, tmp_path / "out")
    m = onnx.load(str(model_path))
    ins = [i.name for i in m.graph.input]
    outs = [o.name for o in m.graph.output]
    assert ins[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert ins[3:] == [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert outs == ["logits"] + [f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    dims = [d.dim_param or d.dim_value for d in m.graph.input[3].type.tensor_type.shape.dim]
    assert dims == ["batch_size", 2, "past_sequence_length", 16]
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["pipeline"] == "text-generation"
    decl = json.loads(meta["trex.inputs"])
    assert decl["past_key_values.0.key"] == {"sample": "state", "fed_by": "present.0.key"}
    assert decl["attention_mask"]["padding"] == "left"


def test_default_pipeline_is_text_generation(trex_bin, tmp_path):
    """config.json's architectures (LlamaForCausalLM) selects the head; no --pipeline needed."""
    ckpt = dfx.decoder_checkpoint("llama")
    r = fx.run_trex("export", "--model", ckpt, tmp_path / "out.onnx")
    assert r.returncode == 0, r.stderr
    assert "4x present.* [2, 2, 8, 16]" in r.stdout  # the load check ran the cache outputs


# ----------------------------------------------------------------------------------------------
# Bad input: clear one-line errors, nothing written
# ----------------------------------------------------------------------------------------------

def _copy(tmp_path, name="llama"):
    dst = tmp_path / "ckpt"
    shutil.copytree(dfx.decoder_checkpoint(name), dst)
    return dst


def _edit_config(ckpt, **changes):
    cfg = json.loads((ckpt / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (ckpt / "config.json").write_text(json.dumps(cfg))


def _expect_error(tmp_path, ckpt, code, words, *extra):
    out = tmp_path / "out"
    r = fx.run_trex("export", "--model", ckpt, *extra, out)
    assert r.returncode == code, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trex: error: "), r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    assert not out.exists(), f"output left behind: {list(out.iterdir())}"
    return lines[0]


def test_unsupported_rope_type(trex_bin, tmp_path):
    ckpt = _copy(tmp_path)
    _edit_config(ckpt, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    _expect_error(tmp_path, ckpt, 2, ["config.json", "rope type 'yarn'"])


def test_kv_heads_not_dividing_heads(trex_bin, tmp_path):
    ckpt = _copy(tmp_path)
    _edit_config(ckpt, num_key_value_heads=3)
    _expect_error(tmp_path, ckpt, 2, ["config.json", "num_key_value_heads"])


def test_bad_sliding_window(trex_bin, tmp_path):
    ckpt = _copy(tmp_path, "mistral")
    _edit_config(ckpt, sliding_window=-4)
    _expect_error(tmp_path, ckpt, 2, ["config.json", "sliding_window"])


def test_missing_layer_weights(trex_bin, tmp_path):
    ckpt = _copy(tmp_path)
    _edit_config(ckpt, num_hidden_layers=3)  # the checkpoint holds 2
    _expect_error(tmp_path, ckpt, 2, ["missing", "layers.2."])


def test_extra_layer_weights(trex_bin, tmp_path):
    ckpt = _copy(tmp_path)
    _edit_config(ckpt, num_hidden_layers=1)  # the checkpoint holds 2: layer 1 would be dropped silently
    _expect_error(tmp_path, ckpt, 2, ["config.json", "more layers", "layers.1."])


def test_untied_head_missing_is_an_error(trex_bin, tmp_path):
    """config.json says the head is untied but lm_head.weight is absent: an error, never a silent tie."""
    from safetensors.numpy import load_file, save_file

    ckpt = _copy(tmp_path)
    sd = load_file(str(ckpt / "model.safetensors"))
    sd.pop("lm_head.weight")
    save_file(sd, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    _expect_error(tmp_path, ckpt, 2, ["lm_head.weight", "missing"])


def test_optimized_graph_uses_fused_ops(trex_bin, tmp_path):
    import onnx

    ckpt = dfx.decoder_checkpoint("qwen3")
    path = export(trex_bin, ckpt, tmp_path / "out", "--optimize").with_name("model-optimized.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("GroupQueryAttention") == 2 and ops.count("RotaryEmbedding") == 4
    # input norm of layer 0, q/k norms (2 per layer); the rest fused with the residual adds
    assert ops.count("SimplifiedLayerNormalization") == 5 and ops.count("SkipSimplifiedLayerNormalization") == 4
    assert "Softmax" not in ops  # no plain attention left


@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_optimized_graph_rotates_inside_group_query_attention(trex_bin, tmp_path, name):
    """Plain rotary: GroupQueryAttention takes the packed QKV and rotates q and k itself (do_rotary), with no
    Slice / RotaryEmbedding nodes; test_decoder_matches_transformers_step_by_step checks its outputs against
    transformers on left-padded batches (its positions are shifted by the padding, its attention is not)."""
    import onnx
    from onnx import helper

    ckpt = dfx.decoder_checkpoint(name)
    path = export(trex_bin, ckpt, tmp_path / "out", "--optimize").with_name("model-optimized.onnx")
    nodes = onnx.load(str(path)).graph.node
    gqa = [n for n in nodes if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == 2 and not [n for n in nodes if n.op_type == "RotaryEmbedding"]
    for n in gqa:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert attrs.get("do_rotary") == 1
        assert n.input[1] == "" and n.input[2] == ""  # packed QKV
        assert n.input[7] and n.input[8]  # cos / sin caches


@pytest.mark.parametrize("flag", ["--static-shape=1,8"])
def test_unsupported_options_refused_up_front(trex_bin, tmp_path, flag):
    ckpt = dfx.decoder_checkpoint("llama")
    _expect_error(tmp_path, ckpt, 1, ["llama"], flag)


def test_torchscript_refuses_decoders(trex_bin, tmp_path):
    ckpt = dfx.decoder_checkpoint("gpt2")
    out = tmp_path / "m.pt"
    r = fx.run_trex("export", "--model", ckpt, "--format", "torchscript", out)
    assert r.returncode == 1, r.stderr
    assert "torchscript" in r.stderr.lower() and not out.exists()


# ----------------------------------------------------------------------------------------------
# config.json as transformers 5 writes it (rope_parameters instead of rope_theta + rope_scaling)
# ----------------------------------------------------------------------------------------------

GENAI_PY = fx.REPO / ".venv-genai" / "bin" / "python"  # the venv with transformers 5


@pytest.mark.skipif(not GENAI_PY.exists(), reason=".venv-genai (transformers 5) missing: scripts/setup makes it")
@pytest.mark.parametrize("name", ["llama-llama3-rope", "phi3", "phi3-longrope"])
def test_transformers5_config_gives_the_same_model(trex_bin, tmp_path, name):
    import subprocess

    ckpt = tmp_path / "v5"
    shutil.copytree(dfx.decoder_checkpoint(name), ckpt)
    # transformers 5 reads the 4.x config.json and writes its own form of it.
    code = ("import sys, transformers as tf; c = tf.AutoConfig.from_pretrained(sys.argv[1]); "
            "c.save_pretrained(sys.argv[1])")
    r = subprocess.run([str(GENAI_PY), "-c", code, str(ckpt)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((ckpt / "config.json").read_text())
    assert "rope_parameters" in cfg and "rope_scaling" not in cfg, cfg

    a = dfx.OnnxDecoder(export(trex_bin, dfx.decoder_checkpoint(name), tmp_path / "v4out"))
    b = dfx.OnnxDecoder(export(trex_bin, ckpt, tmp_path / "v5out"))
    ids, mask = dfx.left_padded_batch(lengths=(20, 12))  # past original_max_position_embeddings for longrope
    a.reset(2)
    b.reset(2)
    assert np.array_equal(a.step(ids, mask), b.step(ids, mask))

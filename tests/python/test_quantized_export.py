"""`trex export --quantize int8|int4` on decoders and encoder-decoders, checked against transformers fp32 (eager).

The random tiny models have near-tied logits, so exact tokens are not the measure: each case states its
tolerance as the cosine of the logit rows and the top-1 (argmax) agreement rate against transformers fp32,
measured teacher-forced on transformers' own greedy continuation (the quantized graph runs the prefill and then
one decode step per token with its KV cache, so every step is compared on the same history). Int4 bounds are
looser than int8's. Free-running greedy tokens are compared too, as the length of the common prefix.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import decoder_fixtures as dfx
import fixtures as fx
import seq2seq_fixtures as sfx

NEW = 16
# (mean cosine of logit rows, top-1 agreement, share of rows whose argmax is in transformers' top 3) each mode
# must reach against transformers fp32.
BOUNDS = {"int8": (0.995, 0.95, 0.99), "int4": (0.98, 0.65, 0.9)}


def export(ckpt, out, *extra):
    r = fx.run_trex("export", "--model", ckpt, *extra, out)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def mode_args(mode):
    return ["--quantize", mode] + (["--block-size", "16"] if mode == "int4" else [])


def row_cosines(a, b):
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def reference_greedy(model, ids, mask, new):
    """transformers fp32: greedy continuation, then the logits of prompt + continuation in one forward pass."""
    import torch

    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                             max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=dfx.PAD)
        full_mask = torch.cat([torch.from_numpy(mask), torch.ones(ids.shape[0], new, dtype=torch.long)], 1)
        pos = full_mask.cumsum(-1) - 1
        pos.masked_fill_(full_mask == 0, 1)
        logits = model(input_ids=out, attention_mask=full_mask, position_ids=pos).logits.numpy()
    return out[:, ids.shape[1]:].numpy(), logits


def teacher_forced(onnx, ids, mask, tokens):
    """Prefill over the prompt, then one decode step per token of `tokens` (fed, not chosen)."""
    onnx.reset(ids.shape[0])
    rows = [onnx.step(ids, mask)]
    for i in range(tokens.shape[1] - 1):
        mask = np.concatenate([mask, np.ones((ids.shape[0], 1), dtype=np.int64)], 1)
        rows.append(onnx.step(tokens[:, i:i + 1], mask))
    return rows


def in_top3(got, want):
    top3 = np.argsort(-want.reshape(-1, want.shape[-1]), axis=-1)[:, :3]
    return (top3 == got.reshape(-1, got.shape[-1]).argmax(-1)[:, None]).any(-1)


def common_prefix(a, b):
    n = []
    for x, y in zip(a, b):
        k = 0
        while k < len(x) and x[k] == y[k]:
            k += 1
        n.append(k)
    return n


def check_decoder(ckpt, onnx_path, mode, record_diff, label):
    ref = dfx.reference_model(ckpt)
    ids, mask = dfx.left_padded_batch(seed=11, lengths=(9, 6))
    tokens, want = reference_greedy(ref, ids, mask, NEW)
    onnx = dfx.OnnxDecoder(onnx_path)
    rows = teacher_forced(onnx, ids, mask, tokens)
    s = ids.shape[1]
    cos, agree, top3 = [], [], []
    for b in range(ids.shape[0]):
        real = np.nonzero(mask[b])[0]
        got_prompt, want_prompt = rows[0][b, real], want[b, real]
        got_steps = np.stack([r[b, -1] for r in rows[1:]])
        want_steps = want[b, s:s + NEW - 1]
        got = np.concatenate([got_prompt, got_steps])
        exp = np.concatenate([want_prompt, want_steps])
        cos.append(row_cosines(got, exp))
        agree.append(got.argmax(-1) == exp.argmax(-1))
        top3.append(in_top3(got, exp))
    cos, agree, top3 = np.concatenate(cos), np.concatenate(agree), np.concatenate(top3)
    free = onnx.greedy(ids, mask, NEW)
    prefix = common_prefix(free.tolist(), tokens.tolist())
    min_cos, min_agree, min_top3 = BOUNDS[mode]
    record_diff(f"{label} {mode}: top-1 {agree.mean():.3f}, in top-3 {top3.mean():.3f}, greedy prefix {prefix}",
                "1 - mean cosine", 1 - cos.mean(), 1 - min_cos)
    assert cos.mean() >= min_cos, f"mean cosine {cos.mean():.4f} < {min_cos}"
    assert agree.mean() >= min_agree, f"top-1 agreement {agree.mean():.3f} < {min_agree}"
    assert top3.mean() >= min_top3, f"argmax in transformers' top 3: {top3.mean():.3f} < {min_top3}"
    return tokens


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("name", ["llama", "qwen3", "gpt2"])
def test_decoder_quantized_vs_transformers(tmp_path, record_diff, name, mode):
    """qwen3 has a tied head (the table read by Gather and by the LM head); gpt2 has Conv1D weights."""
    ckpt = dfx.decoder_checkpoint(name)
    out = tmp_path / "out"
    export(ckpt, out, *mode_args(mode))
    assert (out / "model.onnx").exists()  # the fp32 graph too, without --quantized-only
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["filename"] == "model-quantized.onnx"
    ops = [n.op_type for n in __import__("onnx").load(str(out / "model-quantized.onnx")).graph.node]
    assert ops.count("MatMulNBits" if mode == "int4" else "MatMulIntegerToFloat") >= 8, ops
    check_decoder(ckpt, out / "model-quantized.onnx", mode, record_diff, name)


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_optimized_int4_decoder_vs_transformers(tmp_path, record_diff, name):
    """--optimize --quantized-only: the fused graph (GroupQueryAttention) quantized, with int8 activations
    (--accuracy-level 4, what onnxruntime-genai's builder uses on CPU)."""
    import onnx

    ckpt = dfx.decoder_checkpoint(name)
    out = tmp_path / "out"
    export(ckpt, out, *mode_args("int4"), "--optimize", "--quantized-only", "--accuracy-level", "4")
    m = onnx.load(str(out / "model-quantized.onnx"))
    ops = [n.op_type for n in m.graph.node]
    assert "GroupQueryAttention" in ops and "MatMulNBits" in ops and "MatMul" not in ops, ops
    assert all(a.i == 4 for n in m.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
               if a.name == "accuracy_level")
    check_decoder(ckpt, out / "model-quantized.onnx", "int4", record_diff, f"{name} optimized acc4")


def test_streamed_int4_from_bf16_writes_no_fp32(tmp_path, record_diff):
    """--quantized-only from a bf16 checkpoint: the folder holds the int4 graph only, and it still agrees."""
    ckpt = dfx.decoder_checkpoint("llama", "bf16")
    out = tmp_path / "out"
    export(ckpt, out, *mode_args("int4"), "--quantized-only")
    assert sorted(p.name for p in out.glob("*.onnx*")) == ["model-quantized.onnx"]
    check_decoder(ckpt, out / "model-quantized.onnx", "int4", record_diff, "llama-bf16 streamed")


def test_tied_embeddings_quantized(tmp_path, record_diff):
    """A table big enough to be quantized (512 x 64) shared by the embedding Gather and a tied LM head: the
    Gather reads an 8-bit GatherBlockQuantized table, the head an int4 MatMulNBits; no float copy is left."""
    import onnx
    import transformers as tf
    import torch

    ckpt = tmp_path / "ckpt"
    cfg = tf.LlamaConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(3)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(ckpt, safe_serialization=True)
    dfx.write_tokenizer(ckpt, 512)
    for mode in ("int4", "int8"):
        out = tmp_path / mode
        export(ckpt, out, *mode_args(mode), "--quantized-only")
        m = onnx.load(str(out / "model-quantized.onnx"))
        ops = [n.op_type for n in m.graph.node]
        assert "GatherBlockQuantized" in ops and "Gather" not in ops, ops
        floats = [i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and
                  len(i.dims) == 2 and i.dims[0] * i.dims[1] >= 512 * 64]
        assert not floats, f"float tables left: {floats}"
        check_decoder(ckpt, out / "model-quantized.onnx", mode, record_diff, f"llama tied 512x64 {mode}")
    # Without quantized embeddings the table stays float and is read by Gather.
    out = tmp_path / "noemb"
    export(ckpt, out, *mode_args("int4"), "--quantized-only", "--no-quantize-embeddings")
    ops = [n.op_type for n in onnx.load(str(out / "model-quantized.onnx")).graph.node]
    assert "Gather" in ops and "GatherBlockQuantized" not in ops


def test_optimum_and_genai_load_quantized_decoder(tmp_path):
    """optimum's ORTModelForCausalLM and onnxruntime-genai run the int4 folder; their first greedy tokens are
    transformers' (random weights: later tokens may flip, see the bounds above)."""
    import subprocess

    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    ckpt = dfx.decoder_checkpoint("llama")
    out = tmp_path / "out"
    export(ckpt, out, *mode_args("int4"), "--quantized-only")
    ref = dfx.reference_model(ckpt)
    prompt = [1, 17, 42, 5, 63, 8, 21]
    args = dict(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=dfx.PAD)
    with torch.no_grad():
        want = ref.generate(**args)[0, len(prompt):].tolist()
    model = ORTModelForCausalLM.from_pretrained(out, file_name="model-quantized.onnx", use_cache=True)
    got = model.generate(**args)[0, len(prompt):].tolist()
    assert len(got) == NEW and common_prefix([got], [want])[0] >= 2, f"optimum {got}\ntransformers {want}"

    genai_py = fx.REPO / ".venv-genai" / "bin" / "python"
    if not genai_py.exists():
        pytest.skip(".venv-genai missing (scripts/setup makes it)")
    r = subprocess.run([str(genai_py), str(fx.REPO / "tests" / "python" / "genai_run.py"), str(out), "--prompt-ids",
                        ",".join(map(str, prompt)), "--max-new-tokens", str(NEW), "--ignore-eos"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"genai failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    got = json.loads(r.stdout.strip().splitlines()[0])
    assert common_prefix([got], [want])[0] >= 2, f"genai {got}\ntransformers {want}"


# ----------------------------------------------------------------------------------------------
# Encoder-decoders
# ----------------------------------------------------------------------------------------------

def seq2seq_reference(model, ids, mask, first, steps):
    import torch

    with torch.no_grad():
        enc = model.get_encoder()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        dec = torch.from_numpy(first)
        for _ in range(steps):
            logits = model(encoder_outputs=enc, attention_mask=torch.from_numpy(mask), decoder_input_ids=dec).logits
            dec = torch.cat([dec, logits[:, -1:].argmax(-1)], 1)
        logits = model(encoder_outputs=enc, attention_mask=torch.from_numpy(mask), decoder_input_ids=dec).logits
    return enc.last_hidden_state.numpy(), dec.numpy(), logits.numpy()


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("name", ["t5", "bart", "marian"])
def test_seq2seq_quantized_vs_transformers(tmp_path, record_diff, name, mode):
    import onnx

    ckpt = sfx.seq2seq_checkpoint(name)
    out = tmp_path / "out"
    export(ckpt, out, *mode_args(mode), "--quantized-only")
    assert sorted(p.name for p in out.glob("*.onnx")) == ["decoder_model_merged-quantized.onnx",
                                                         "encoder_model-quantized.onnx"]
    # One external-data file for the quantized set; nothing refers to the fp32 set's file.
    for f in out.glob("*.onnx"):
        locs = {e.value for i in onnx.load(str(f), load_external_data=False).graph.initializer
                for e in i.external_data if e.key == "location"}
        assert locs <= {"weights-quantized.data"}, (f.name, locs)
    assert (out / "weights-quantized.data").exists() and not (out / "weights.data").exists()

    ref = sfx.reference_model(ckpt)
    ids, mask = sfx.padded_batch()
    first = np.array([[sfx.START, 5, 7], [sfx.START, 9, 4]], dtype=np.int64)
    want_enc, seqs, want = seq2seq_reference(ref, ids, mask, first, NEW)
    run = sfx.OnnxSeq2Seq(out, "-quantized")
    enc = run.encode(ids, mask)
    enc_cos = np.concatenate([row_cosines(enc[b, mask[b] == 1], want_enc[b, mask[b] == 1]) for b in range(2)])
    rows = [run.step(seqs[:, :3])]
    for i in range(3, seqs.shape[1]):
        rows.append(run.step(seqs[:, i:i + 1]))
    got = np.concatenate(rows, 1)
    cos = row_cosines(got, want)
    agree = (got.argmax(-1) == want.argmax(-1)).mean()
    top3 = in_top3(got, want).mean()
    min_cos, min_agree, min_top3 = BOUNDS[mode]
    record_diff(f"seq2seq {name} {mode}: encoder cos {enc_cos.mean():.4f}, top-1 {agree:.3f}, in top-3 {top3:.3f}",
                "1 - mean cosine", 1 - cos.mean(), 1 - min_cos)
    assert top3 >= min_top3, f"argmax in transformers' top 3: {top3:.3f} < {min_top3}"
    assert enc_cos.mean() >= min_cos, f"encoder cosine {enc_cos.mean():.4f}"
    assert cos.mean() >= min_cos, f"decoder logit cosine {cos.mean():.4f} < {min_cos}"
    assert agree >= min_agree, f"top-1 agreement {agree:.3f} < {min_agree}"


def test_optimum_seq2seq_loads_quantized_set(tmp_path):
    """optimum's ORTModelForSeq2SeqLM loads the --quantized-only int4 folder as it is (its file patterns find
    encoder_model-quantized.onnx and decoder_model_merged-quantized.onnx; passing decoder_file_name would make
    optimum 2.x look for a decoder_with_past file) and runs greedy and beam search."""
    import torch
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    ckpt = sfx.seq2seq_checkpoint("bart")
    out = tmp_path / "out"
    export(ckpt, out, *mode_args("int4"), "--quantized-only")
    model = ORTModelForSeq2SeqLM.from_pretrained(out, use_cache=True)
    assert model.decoder.is_merged and model.decoder_with_past is None
    ref = sfx.reference_model(ckpt)
    ids, mask = sfx.padded_batch(seed=13)
    for beams in (1, 4):
        args = dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=NEW,
                    min_new_tokens=NEW, num_beams=beams, do_sample=False)
        with torch.no_grad():
            want = ref.generate(**args).numpy()
        got = model.generate(**args).numpy()
        assert got.shape[1] > NEW
        prefix = common_prefix(got[:, 1:].tolist(), want[:, 1:].tolist())
        assert min(prefix) >= 2, f"beams {beams}: optimum {got.tolist()}\ntransformers {want.tolist()}"


def test_quantize_option_errors(tmp_path):
    ckpt = dfx.decoder_checkpoint("llama")
    for extra, code, words in [(["--block-size", "16"], 1, ["--quantize"]),
                               (["--quantize", "int4", "--block-size", "24"], 1, ["block"]),
                               (["--quantize", "int8", "--block-size", "16"], 1, ["int4"]),
                               (["--quantize=int3"], 1, ["int3"]),
                               (["--quantized-only"], 1, ["--quantize"]),
                               (["--int8-accurate"], 1, ["--quantize"]),
                               (["--quantize", "int4", "--int8-accurate"], 1, ["int8"]),
                               (["--quantize", "int8", "--int8-accurate"], 1, ["encoders"])]:
        out = tmp_path / "o"
        r = fx.run_trex("export", "--model", ckpt, *extra, out)
        assert r.returncode == code, (extra, r.stdout, r.stderr)
        assert all(w in r.stderr for w in words), (extra, r.stderr)
        assert not out.exists(), extra


@pytest.mark.parametrize("model_type,head", [("bert", "feature-extraction"), ("roberta", "text-classification")])
def test_encoder_int4_export(tmp_path, model_type, head):
    """Encoders: --quantize int4 goes through the trex quantize workflow (MatMulNBits, calibrated GPTQ), which
    compares the int4 file with its fp32 source in ONNX Runtime (exit 3 below its cosine target)."""
    import onnx

    out = tmp_path / "model.onnx"
    report = tmp_path / "r.json"
    export(fx.checkpoint(model_type, head), out, "--pipeline", head, *mode_args("int4"), "--report", report)
    rep = json.loads(report.read_text())
    assert rep["quantized"]["vs_fp32"]["mean_cosine"] >= 0.95, rep["quantized"]
    assert rep["quantized"]["bits"] == 4 and rep["quantized"]["layers_quantized"] > 0, rep["quantized"]
    assert "layers_int8" not in rep["quantized"], rep["quantized"]
    ops = [n.op_type for n in onnx.load(str(tmp_path / "model-quantized.onnx")).graph.node]
    assert "MatMulNBits" in ops and "MatMulIntegerToFloat" not in ops
    r = fx.run_trex("export", "--model", fx.checkpoint(model_type, head), "--quantize", "int4", "--quantized-only",
                    tmp_path / "o2.onnx")
    assert r.returncode == 1 and "--quantized-only" in r.stderr and not (tmp_path / "o2.onnx").exists()


def test_nan_weight_refused_while_streaming(tmp_path):
    """A NaN in a weight met while the int4 codes are being written: an input error naming the tensor, and no
    output left (the folder, created by the export, is removed)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    src = dfx.decoder_checkpoint("llama")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name][3, 5] = np.nan
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    r = fx.run_trex("export", "--model", ckpt, *mode_args("int4"), "--quantized-only", out)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "up_proj" in r.stderr and "NaN" in r.stderr, r.stderr
    assert not out.exists()

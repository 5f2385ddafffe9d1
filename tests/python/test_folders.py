"""Output folders the ecosystem loads as they are: OUTPUT given as a folder gets model.onnx, config.json and the
tokenizer files, and optimum's ORTModelFor* / transformers' AutoTokenizer load it without any copying by hand,
with transformers' numbers."""
from __future__ import annotations

import numpy as np
import pytest

import fixtures as fx

ORT_CLASSES = {
    "feature-extraction": "ORTModelForFeatureExtraction",
    "text-classification": "ORTModelForSequenceClassification",
    "token-classification": "ORTModelForTokenClassification",
    "question-answering": "ORTModelForQuestionAnswering",
    "fill-mask": "ORTModelForMaskedLM",
}
OUTPUT_OF = {
    "feature-extraction": ["last_hidden_state"],
    "text-classification": ["logits"],
    "token-classification": ["logits"],
    "question-answering": ["start_logits", "end_logits"],
    "fill-mask": ["logits"],
}


def _compare_with_transformers(ort_model, ckpt, head, tol):
    """Runs optimum's model and transformers' (eager, fp32) on one padded batch; max abs diff on real tokens."""
    import torch
    import transformers as tf

    batch = fx.padded_batch("bert")
    feed = {k: torch.from_numpy(v) for k, v in batch.items()}
    got = ort_model(**feed)
    auto = getattr(tf, fx.HEADS[head][0]).from_pretrained(ckpt, attn_implementation="eager").eval()
    with torch.no_grad():
        want = auto(**feed)
    mask = batch["attention_mask"].astype(bool)
    for name in OUTPUT_OF[head]:
        a, b = np.asarray(getattr(got, name)), getattr(want, name).numpy()
        assert a.shape == b.shape, name
        if a.ndim >= 2 and a.shape[:2] == mask.shape:
            a, b = a[mask], b[mask]
        assert np.isfinite(a).all(), name
        if tol is not None:
            assert np.abs(a - b).max() <= tol, f"{name}: max abs diff {np.abs(a - b).max():.3g} > {tol}"


@pytest.mark.parametrize("head", list(ORT_CLASSES))
def test_optimum_loads_encoder_folder(trex_bin, tmp_path, head):
    import optimum.onnxruntime as oo

    ckpt = fx.checkpoint("bert", head)
    out = tmp_path / "folder"
    r = fx.run_trex("export", "--model", ckpt, "--pipeline", head, out)
    assert r.returncode == 0, r.stderr
    assert {"model.onnx", "config.json"} <= {p.name for p in out.iterdir()}
    _compare_with_transformers(getattr(oo, ORT_CLASSES[head]).from_pretrained(out), ckpt, head, 1e-5)


@pytest.mark.parametrize("head", list(ORT_CLASSES))
def test_optimum_layout_every_encoder_pipeline(trex_bin, tmp_path, head):
    """--layout optimum --optimize --quantize: optimum's own names (model.onnx, model_optimized.onnx,
    model_quantized.onnx); ORTModelFor* loads each by optimum's file_name; the plain model gives transformers'
    numbers within 1e-5, the fused one within 1e-4 (the tolerance trex checks it with). The int8 one loads and
    runs (its accuracy vs fp32 is checked by trex itself at export: mean cosine >= 0.99)."""
    import optimum.onnxruntime as oo

    ckpt = fx.checkpoint("bert", head)
    out = tmp_path / "folder"
    r = fx.run_trex("export", "--model", ckpt, "--pipeline", head, "--layout", "optimum", "--optimize", "--quantize",
                    out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".onnx") == [
        "model.onnx", "model_optimized.onnx", "model_quantized.onnx"]
    cls = getattr(oo, ORT_CLASSES[head])
    _compare_with_transformers(cls.from_pretrained(out), ckpt, head, 1e-5)
    _compare_with_transformers(cls.from_pretrained(out, file_name="model_optimized.onnx"), ckpt, head, 1e-4)
    _compare_with_transformers(cls.from_pretrained(out, file_name="model_quantized.onnx"), ckpt, head, None)


def test_optimum_layout_decoder(trex_bin, tmp_path):
    """A decoder in optimum's layout: ORTModelForCausalLM loads model.onnx and model_optimized.onnx (fused
    GroupQueryAttention); greedy generate() gives transformers' tokens with both."""
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    import decoder_fixtures as dfx

    ckpt = dfx.decoder_checkpoint("llama")
    out = tmp_path / "folder"
    r = fx.run_trex("export", "--model", ckpt, "--layout", "optimum", "--optimize", out)
    assert r.returncode == 0, r.stderr
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model_optimized.onnx", "config.json", "generation_config.json", "tokenizer.json"} <= names
    ref = dfx.reference_model(ckpt)
    ids, mask = dfx.left_padded_batch(seed=5, lengths=(8, 5))
    args = dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                pad_token_id=dfx.PAD, max_new_tokens=16, min_new_tokens=16)
    with torch.no_grad():
        want = ref.generate(**args)
    for file_name in ("model.onnx", "model_optimized.onnx"):
        got = ORTModelForCausalLM.from_pretrained(out, file_name=file_name, use_cache=True).generate(**args)
        assert torch.equal(got, want), f"{file_name}: optimum {got.tolist()}\ntransformers {want.tolist()}"


def test_optimum_layout_seq2seq(trex_bin, tmp_path):
    """An encoder-decoder in optimum's layout: encoder_model(_optimized).onnx + decoder_model_merged(_optimized).onnx;
    ORTModelForSeq2SeqLM loads the folder as it is; greedy generate() gives transformers' tokens. optimum 2.1 takes
    any decoder_file_name as a non-merged decoder (and then wants decoder_with_past_model.onnx), so the optimized
    pair is loaded through a folder of links under the standard names."""
    import torch
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    import seq2seq_fixtures as sfx

    ckpt = sfx.seq2seq_checkpoint("t5")
    out = tmp_path / "folder"
    r = fx.run_trex("export", "--model", ckpt, "--layout", "optimum", "--optimize", out)
    assert r.returncode == 0, r.stderr
    names = {p.name for p in out.iterdir()}
    assert {"encoder_model.onnx", "decoder_model_merged.onnx", "encoder_model_optimized.onnx",
            "decoder_model_merged_optimized.onnx", "config.json"} <= names, names
    ref = sfx.reference_model(ckpt)
    ids, mask = sfx.padded_batch(seed=13)
    args = dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=16,
                min_new_tokens=16, do_sample=False)
    with torch.no_grad():
        want = ref.generate(**args).numpy()
    linked = tmp_path / "optimized"
    linked.mkdir()
    for p in out.iterdir():
        if p.suffix != ".onnx":
            (linked / p.name).symlink_to(p)
    for graph in ("encoder_model", "decoder_model_merged"):
        (linked / f"{graph}.onnx").symlink_to(out / f"{graph}_optimized.onnx")
    for folder in (out, linked):
        got = ORTModelForSeq2SeqLM.from_pretrained(folder, use_cache=True).generate(**args).numpy()
        assert np.array_equal(got, want), f"{folder.name}: trex {got.tolist()}\ntransformers {want.tolist()}"


def test_minilm_folder_has_tokenizer_and_loads(trex_bin, tmp_path):
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    d = fx.minilm_dir()
    out = tmp_path / "minilm"
    r = fx.run_trex("export", "--model", d, out)
    assert r.returncode == 0, r.stderr
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
            "special_tokens_map.json"} <= names, names
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("Hello world")["input_ids"] == AutoTokenizer.from_pretrained(d)("Hello world")["input_ids"]
    model = ORTModelForFeatureExtraction.from_pretrained(out)
    enc = tok(["A sentence.", "Another, longer sentence here."], padding=True, return_tensors="pt")
    assert model(**enc).last_hidden_state.shape[:2] == enc["input_ids"].shape


def test_onnx_path_output_writes_no_companions(trex_bin, tmp_path):
    """A .onnx OUTPUT for an encoder writes just the model (and nothing beside it), as before."""
    out = tmp_path / "m.onnx"
    r = fx.run_trex("export", "--model", fx.checkpoint("bert"), out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_folder_output_refuses_the_checkpoint_folder(trex_bin, tmp_path):
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(fx.checkpoint("bert"), d)
    before = sorted(p.name for p in d.iterdir())
    r = fx.run_trex("export", "--model", d, d)
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("trex: error: ")
    assert sorted(p.name for p in d.iterdir()) == before

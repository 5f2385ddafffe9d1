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


@pytest.mark.parametrize("head", list(ORT_CLASSES))
def test_optimum_loads_encoder_folder(trex_bin, tmp_path, head):
    import torch
    import optimum.onnxruntime as oo

    ckpt = fx.checkpoint("bert", head)
    out = tmp_path / "folder"
    r = fx.run_trex("export", "--model", ckpt, "--pipeline", head, out)
    assert r.returncode == 0, r.stderr
    assert {"model.onnx", "config.json"} <= {p.name for p in out.iterdir()}
    model = getattr(oo, ORT_CLASSES[head]).from_pretrained(out)
    batch = fx.padded_batch("bert")
    feed = {k: torch.from_numpy(v) for k, v in batch.items()}
    got = model(**feed)
    import transformers as tf

    auto = getattr(tf, fx.HEADS[head][0]).from_pretrained(ckpt, attn_implementation="eager").eval()
    with torch.no_grad():
        want = auto(**feed)
    mask = batch["attention_mask"].astype(bool)
    for name in OUTPUT_OF[head]:
        a, b = np.asarray(getattr(got, name)), getattr(want, name).numpy()
        if a.ndim >= 2 and a.shape[:2] == mask.shape:
            a, b = a[mask], b[mask]
        assert np.abs(a - b).max() <= 1e-5, name


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

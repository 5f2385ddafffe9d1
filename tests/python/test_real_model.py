"""The bundled all-MiniLM-L6-v2 checkpoint (real weights, real tokenizer) vs transformers eager."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fixtures as fx
from test_oracle import check_io, check_onnx_file

TOL = 1e-4

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello!",
    "ONNX Runtime executes exported transformer graphs; trex writes them natively, without Python, "
    "straight from the safetensors weights of a Hugging Face checkpoint folder.",
    "A sentence of medium length about exporting models.",
]


@pytest.mark.real_model
def test_all_minilm_l6_v2(trex_bin, tmp_path, record_diff):
    import torch
    from transformers import AutoModel, AutoTokenizer

    model_dir = fx.minilm_dir()
    out = tmp_path / "minilm.onnx"
    r = fx.export(model_dir, out)
    assert "load check: ok" in r.stdout + r.stderr
    m = check_onnx_file(out, "bert", "feature-extraction")
    check_io(m, "bert", fx.expected_outputs("bert", "feature-extraction", fx.has_pooler(model_dir)))

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    feeds = {k: v.astype(np.int64) for k, v in enc.items()}
    assert feeds["attention_mask"].min() == 0, "batch should contain padding"

    got = fx.run_ort(out, feeds)
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    ref = {k: v.numpy() for k, v in ref.items() if isinstance(v, torch.Tensor)}
    diffs = fx.compare(got, ref, TOL)
    for k, d in diffs.items():
        record_diff("all-MiniLM-L6-v2", k, d, TOL)
    assert "last_hidden_state" in diffs
    assert all(d <= TOL for d in diffs.values()), diffs

    # Sentence embeddings (mean pooling over real tokens) agree too.
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    emb_t = (got["last_hidden_state"] * mask).sum(1) / mask.sum(1)
    emb_r = (ref["last_hidden_state"] * mask).sum(1) / mask.sum(1)
    assert np.max(np.abs(emb_t - emb_r)) <= TOL

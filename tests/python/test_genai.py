"""onnxruntime-genai runs trex's decoder folders as they are and gets transformers' greedy tokens.

onnxruntime-genai 0.18 needs its own onnxruntime (1.32) and its builder transformers 5, so it lives in
.venv-genai (made by scripts/setup); the test drives it through tests/python/genai_run.py in a subprocess.
genai has no left padding (rows of one batch must have equal length), so prompts here are unpadded.
"""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

import decoder_fixtures as dfx
import fixtures as fx

GENAI_PY = fx.REPO / ".venv-genai" / "bin" / "python"
RUNNER = fx.REPO / "tests" / "python" / "genai_run.py"
NEW_TOKENS = 32

pytestmark = pytest.mark.skipif(not GENAI_PY.exists(), reason=".venv-genai missing (scripts/setup makes it)")


def genai_tokens(folder, prompt, new_tokens=NEW_TOKENS):
    r = subprocess.run([str(GENAI_PY), str(RUNNER), str(folder), "--prompt-ids", ",".join(map(str, prompt)),
                        "--max-new-tokens", str(new_tokens)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"genai failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[0])


def transformers_tokens(ckpt, prompt, new_tokens=NEW_TOKENS):
    import torch

    ref = dfx.reference_model(ckpt)
    with torch.no_grad():
        out = ref.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                           max_new_tokens=new_tokens, do_sample=False, pad_token_id=dfx.PAD)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("graph", ["plain", "optimized"])
@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gpt2"])
def test_genai_runs_trex_folder(trex_bin, tmp_path, name, graph):
    ckpt = dfx.decoder_checkpoint(name)
    out = tmp_path / "folder"
    extra = ["--optimize"] if graph == "optimized" else []
    r = fx.run_trex("export", "--model", ckpt, "--pipeline", "text-generation", *extra, out)
    assert r.returncode == 0, r.stderr
    genai = json.loads((out / "genai_config.json").read_text())
    want_file = "model-optimized.onnx" if graph == "optimized" else "model.onnx"
    assert genai["model"]["decoder"]["filename"] == want_file
    # A fused graph's GroupQueryAttention writes the cache in place: genai keeps one max-length buffer per layer
    # (no copy of the past at every step); the plain graph (and a fused one whose heads GroupQueryAttention's CPU
    # kernel does not take, e.g. qwen2's here) concatenates, so its buffers must stay apart.
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / want_file), load_external_data=False).graph.node}
    assert genai["search"]["past_present_share_buffer"] is ("GroupQueryAttention" in ops)
    assert ("GroupQueryAttention" in ops) is (graph == "optimized" and name != "qwen2")
    prompt = [int(t) for t in np.random.default_rng(3).integers(3, dfx.VOCAB, size=9)]
    assert genai_tokens(out, prompt) == transformers_tokens(ckpt, prompt)

"""TorchScript export (`trex export --format torchscript`) vs transformers eager, for every architecture x head.

The .pt files are loaded with Python's torch.jit.load (and, for one model, with the C++ example through
torch::jit::load) and run at several sequence lengths — one longer than anything used while exporting (trex
never runs the model while exporting; the module is scripted, not traced).

Exporter: `$TREX_BIN export --format torchscript`. When trex was built without LibTorch (and
TREX_ALLOW_NO_TORCH=1), only the "clear error" test runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

import fixtures as fx
from fixtures import HEADS, MODEL_TYPES

TOL = 1e-5
REAL_TOL = 1e-4
SEQ_LENS = (5, 11, 77)  # 77 > any length seen at export time (there is none: nothing is traced)
OUTPUT_ORDER = ["last_hidden_state", "pooler_output", "logits", "start_logits", "end_logits"]
TS_EXAMPLE = Path(os.environ.get("TREX_TS_EXAMPLE", str(fx.TREX_BIN.parent / "trex_example_torchscript")))


# ----------------------------------------------------------------------------------------------
# Running the exporter
# ----------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _exporter() -> tuple[str, list[str]]:
    """("cli" | "disabled", argv prefix). scripts/setup builds trex with LibTorch, so "disabled" fails the tests
    unless TREX_ALLOW_NO_TORCH=1 says that a build without it is intended."""
    argv = [str(fx.TREX_BIN), "export", "--format", "torchscript"]
    import tempfile

    with tempfile.TemporaryDirectory() as td:
        probe = subprocess.run([*argv, "--model", str(fx.checkpoint("bert", "feature-extraction")),
                                str(Path(td) / "p.pt")], capture_output=True, text=True)
    if "needs LibTorch" in probe.stdout + probe.stderr:
        return "disabled", argv
    return "cli", argv


def _needs_torchscript():
    kind, _ = _exporter()
    if kind == "disabled":
        if os.environ.get("TREX_ALLOW_NO_TORCH") == "1":
            pytest.skip("trex was built without LibTorch (TorchScript export disabled)")
        pytest.fail("trex was built without LibTorch: run scripts/setup (or set TREX_ALLOW_NO_TORCH=1)")


def ts_export(model_dir: Path, out: Path, *extra, expect_ok: bool = True) -> subprocess.CompletedProcess:
    _, argv = _exporter()
    r = subprocess.run([*argv, "--model", str(model_dir), *map(str, extra), str(out)], capture_output=True, text=True,
                       timeout=300)
    if expect_ok:
        assert r.returncode == 0, f"export failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
        assert out.is_file()
    return r


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def _pad_id(model_type: str) -> int:
    return 1 if model_type in fx.ROBERTA_FAMILY else 0


def _run_module(module, feeds: dict[str, np.ndarray], pass_token_types: bool = True):
    import torch

    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        if pass_token_types and "token_type_ids" in t:
            out = module(t["input_ids"], t["attention_mask"], t["token_type_ids"])
        else:
            out = module(t["input_ids"], t["attention_mask"])
    assert isinstance(out, tuple), f"forward returned {type(out)}, expected a tuple"
    return out


def _ordered_reference(ref: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    return [(k, ref[k]) for k in OUTPUT_ORDER if k in ref]


def _compare_tuple(got, ref: dict[str, np.ndarray]) -> dict[str, float]:
    want = _ordered_reference(ref)
    assert len(got) == len(want), f"{len(got)} outputs, transformers has {[k for k, _ in want]}"
    diffs = {}
    for g, (name, r) in zip(got, want):
        g = g.numpy()
        assert g.shape == r.shape, f"{name}: shape {g.shape} != transformers {r.shape}"
        assert np.all(np.isfinite(g)), f"{name}: non-finite values"
        diffs[name] = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64))))
    return diffs


def _check_module_against(module, model_dir: Path, head: str, model_type: str, case_id: str, record_diff,
                          tol: float = TOL, hf_model=None):
    import torch

    worst: dict[str, float] = {}
    for seq in SEQ_LENS:
        feeds = fx.padded_batch(model_type, batch=3, seq=seq, pad_ids_in_padding=True, pad_token_id=_pad_id(model_type))
        ref = fx.run_oracle(model_dir, head, feeds) if hf_model is None else _run_hf(hf_model, feeds)
        for k, d in _compare_tuple(_run_module(module, feeds), ref).items():
            worst[k] = max(worst.get(k, 0.0), d)
    for k, d in worst.items():
        record_diff(case_id + " [torchscript]", k, d, tol)
    assert all(d <= tol for d in worst.values()), worst
    # Same parameters under the same names as transformers' state_dict, values bit-identical.
    hf = (hf_model or fx.load_oracle(model_dir, head)).state_dict()
    sd = module.state_dict()
    assert set(sd) == set(hf), f"state_dict keys differ: only trex {sorted(set(sd) - set(hf))}, " \
                               f"only transformers {sorted(set(hf) - set(sd))}"
    for k, v in sd.items():
        assert torch.equal(v, hf[k].float()), f"parameter {k} differs"
    return worst


def _run_hf(model, feeds):
    import torch

    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return {k: v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}


def _load(path: Path, extra=("config.json", "trex.json")):
    import torch

    files = {k: "" for k in extra}
    m = torch.jit.load(str(path), _extra_files=files)
    return m, files


# ----------------------------------------------------------------------------------------------
# Every architecture x head
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_torchscript_matches_transformers(model_type, head, tmp_path, record_diff):
    _needs_torchscript()
    ckpt = fx.checkpoint(model_type, head)
    out = tmp_path / "model.pt"
    ts_export(ckpt, out, "--pipeline", HEADS[head][1 + (MODEL_TYPES.index(model_type) % 2)])
    module, files = _load(out)
    assert json.loads(files["config.json"]) == json.loads((ckpt / "config.json").read_text())
    meta = json.loads(files["trex.json"])
    assert meta["model_type"] == model_type and meta["pipeline"] == head
    assert meta["outputs"] == [k for k in OUTPUT_ORDER if k in meta["outputs"]]
    _check_module_against(module, ckpt, head, model_type, f"{model_type}-{head}", record_diff)
    # No temporary file left next to the output.
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


@pytest.mark.parametrize("model_type,head,fmt", [
    ("bert", "fill-mask", "untied"),
    ("roberta", "fill-mask", "untied"),
    ("electra", "fill-mask", "untied"),
    ("bert", "feature-extraction", "act_gelu_new"),
    ("bert", "feature-extraction", "act_gelu_pytorch_tanh"),
    ("bert", "feature-extraction", "act_relu"),
    ("bert", "feature-extraction", "act_silu"),
    ("bert", "text-classification", "bin"),
    ("distilbert", "fill-mask", "sharded_bin"),
    ("roberta", "token-classification", "bf16"),
])
def test_torchscript_variants(model_type, head, fmt, tmp_path, record_diff):
    _needs_torchscript()
    case = fx.Case(model_type, head, fmt)
    out = tmp_path / "model.pt"
    ts_export(case.path, out)
    module, _ = _load(out)
    hf = fx.load_oracle(case.ref_path, head)
    if fmt == "bf16":  # the oracle runs the bf16 weights upcast, exactly what trex stores
        hf = hf.float()
    _check_module_against(module, case.ref_path, head, model_type, case.id, record_diff, hf_model=hf)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_eager_attention_option(model_type, tmp_path, record_diff):
    """--eager-attention: attention as transformers' eager op sequence (bit-identical in practice)."""
    _needs_torchscript()
    head = "fill-mask" if model_type in ("bert", "distilbert") else "question-answering"
    ckpt = fx.checkpoint(model_type, head)
    out = tmp_path / "m.pt"
    ts_export(ckpt, out, "--eager-attention")
    module, files = _load(out)
    assert json.loads(files["trex.json"])["attention"] == "eager"
    assert "scaled_dot_product_attention" not in module.code
    worst = _check_module_against(module, ckpt, head, model_type, f"{model_type}-{head}-eager-attention", record_diff)
    assert all(d <= 1e-6 for d in worst.values()), worst


def test_tied_decoder_is_its_own_parameter(tmp_path):
    """fill-mask: the decoder weight is a separate copy of the word embeddings under its transformers name."""
    _needs_torchscript()
    out = tmp_path / "mlm.pt"
    ts_export(fx.checkpoint("bert", "fill-mask"), out)
    module, _ = _load(out)
    sd = module.state_dict()
    dec, emb = sd["cls.predictions.decoder.weight"], sd["bert.embeddings.word_embeddings.weight"]
    assert dec.data_ptr() != emb.data_ptr()
    assert dec.untyped_storage().data_ptr() != emb.untyped_storage().data_ptr()
    import torch

    assert torch.equal(dec, emb)
    # Changing the embeddings must not change the decoder (no hidden aliasing in the saved file).
    with torch.no_grad():
        emb.add_(1.0)
    assert not torch.equal(dec, emb)


def test_feature_extraction_from_task_checkpoint(tmp_path, record_diff):
    """A task checkpoint (bert.* names) exported as feature-extraction: AutoModel's names, without the prefix.

    BertForMaskedLM has no pooler, so transformers' AutoModel adds a randomly initialized one that trex (rightly)
    does not invent: compare last_hidden_state and the parameters both have.
    """
    import torch

    _needs_torchscript()
    ckpt = fx.checkpoint("bert", "fill-mask")
    out = tmp_path / "base.pt"
    ts_export(ckpt, out, "--pipeline", "feature-extraction")
    module, _ = _load(out)
    hf = fx.load_oracle(ckpt, "feature-extraction")
    worst = 0.0
    for seq in SEQ_LENS:
        feeds = fx.padded_batch("bert", batch=3, seq=seq)
        got = _run_module(module, feeds)
        assert len(got) == 1
        ref = _run_hf(hf, feeds)["last_hidden_state"]
        worst = max(worst, float(np.max(np.abs(got[0].numpy() - ref))))
    record_diff("bert-fill-mask-ckpt-as-feature-extraction [torchscript]", "last_hidden_state", worst, TOL)
    assert worst <= TOL
    sd, hsd = module.state_dict(), hf.state_dict()
    assert set(sd) == {k for k in hsd if not k.startswith("pooler.")}
    assert all(torch.equal(v, hsd[k]) for k, v in sd.items())


def test_optional_inputs_default_like_transformers(tmp_path):
    """forward(input_ids) == forward(input_ids, ones, zeros) == transformers without mask / token types."""
    import torch

    _needs_torchscript()
    for model_type, head in [("bert", "text-classification"), ("roberta", "feature-extraction"),
                             ("distilbert", "question-answering")]:
        ckpt = fx.checkpoint(model_type, head)
        out = tmp_path / f"{model_type}.pt"
        ts_export(ckpt, out)
        module, _ = _load(out)
        ids = torch.from_numpy(fx.padded_batch(model_type, batch=2, seq=9, lengths=[9, 9])["input_ids"])
        with torch.no_grad():
            a = module(ids)
            b = module(ids, torch.ones_like(ids), torch.zeros_like(ids))
            ref = fx.load_oracle(ckpt, head)(input_ids=ids)
        ref_t = [ref[k] for k in OUTPUT_ORDER if k in ref and isinstance(ref[k], torch.Tensor)]
        for x, y, r in zip(a, b, ref_t):
            assert torch.equal(x, y)
            assert float((x - r).abs().max()) <= TOL


def test_opset11_graph_lowers_too(tmp_path, record_diff):
    """The pre-opset-17 graph (LayerNorm decomposed, axes as attributes) lowers to the same module."""
    _needs_torchscript()
    ckpt = fx.checkpoint("albert", "token-classification")
    out = tmp_path / "m.pt"
    ts_export(ckpt, out, "--opset", "11")
    module, _ = _load(out)
    _check_module_against(module, ckpt, "token-classification", "albert", "albert-token-classification-opset11",
                          record_diff)


def test_torchscript_file_layout(tmp_path):
    """A standard torch.jit archive: code/, data/, extra/config.json; parameters nested like transformers."""
    _needs_torchscript()
    out = tmp_path / "m.pt"
    ts_export(fx.checkpoint("albert", "fill-mask"), out)
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
    assert any(n.endswith("extra/config.json") for n in names)
    assert any(n.endswith("extra/trex.json") for n in names)
    assert any("/code/" in n for n in names)
    module, _ = _load(out)
    sub = dict(module.named_modules())
    assert "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.query" in sub


def test_output_folder_missing_is_created(tmp_path):
    """Missing output folders are created (issue 13), for TorchScript as for ONNX."""
    _needs_torchscript()
    out = tmp_path / "no" / "such" / "dir" / "m.pt"
    ts_export(fx.checkpoint("bert", "feature-extraction"), out)
    assert zipfile.is_zipfile(out)


def test_output_under_a_file_is_an_output_error(tmp_path):
    _needs_torchscript()
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "m.pt"
    r = ts_export(fx.checkpoint("bert", "feature-extraction"), out, expect_ok=False)
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert str(out) in r.stderr


def test_without_libtorch_says_how_to_enable(tmp_path):
    """Without the LibTorch plugin (a build without LibTorch, or the plugin missing), exit 1 with how to enable it."""
    kind, argv = _exporter()
    env = dict(os.environ)
    if kind != "disabled":
        env["TREX_TORCHSCRIPT_PLUGIN"] = str(tmp_path / "no-such-plugin.so")  # simulate the missing plugin
    out = tmp_path / "m.pt"
    r = subprocess.run([*argv, "--model", str(fx.checkpoint("bert", "feature-extraction")), str(out)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "needs LibTorch" in r.stderr and "-DTREX_WITH_TORCH=ON" in r.stderr, r.stderr
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# The C++ example (torch::jit::load)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type,head", [("bert", "question-answering"), ("roberta", "fill-mask")])
def test_cpp_example_runs_the_export(model_type, head, tmp_path, record_diff):
    _needs_torchscript()
    if not TS_EXAMPLE.is_file():
        pytest.skip(f"C++ example not built ({TS_EXAMPLE}); set TREX_TS_EXAMPLE")
    ckpt = fx.checkpoint(model_type, head)
    out = tmp_path / "m.pt"
    ts_export(ckpt, out)
    feeds = fx.padded_batch(model_type, batch=3, seq=23, pad_ids_in_padding=True, pad_token_id=_pad_id(model_type))
    args = [str(TS_EXAMPLE), str(out), "--threads", "1", "--raw", str(tmp_path / "out")]
    for row in feeds["input_ids"]:
        args += ["--ids", ",".join(map(str, row))]
    for row in feeds["attention_mask"]:
        args += ["--mask", ",".join(map(str, row))]
    for row in feeds.get("token_type_ids", []):
        args += ["--types", ",".join(map(str, row))]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ref = _ordered_reference(fx.run_oracle(ckpt, head, feeds))
    for i, (name, want) in enumerate(ref):
        shape = [int(x) for x in (tmp_path / f"out{i}.shape").read_text().split()]
        got = np.fromfile(tmp_path / f"out{i}.bin", dtype="<f4").reshape(shape)
        assert got.shape == want.shape
        d = float(np.max(np.abs(got.astype(np.float64) - want)))
        record_diff(f"{model_type}-{head} [torchscript C++ example]", name, d, TOL)
        assert d <= TOL


# ----------------------------------------------------------------------------------------------
# Real weights
# ----------------------------------------------------------------------------------------------

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello!",
    "TorchScript files written by trex are scripted, so they accept any sequence length up to the "
    "position table, unlike a model traced with one dummy sentence.",
]


@pytest.mark.real_model
def test_all_minilm_l6_v2_torchscript(tmp_path, record_diff):
    import torch
    from transformers import AutoModel, AutoTokenizer

    _needs_torchscript()
    model_dir = fx.minilm_dir()
    out = tmp_path / "minilm.pt"
    ts_export(model_dir, out)
    module, _ = _load(out)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    hf = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager", dtype=torch.float32).eval()
    worst = {}
    for sents in (SENTENCES, SENTENCES[:1], [s * 4 for s in SENTENCES]):  # the last batch is ~200 tokens
        enc = tok(sents, padding=True, truncation=True, return_tensors="np")
        feeds = {k: v.astype(np.int64) for k, v in enc.items()}
        for k, d in _compare_tuple(_run_module(module, feeds), _run_hf(hf, feeds)).items():
            worst[k] = max(worst.get(k, 0.0), d)
    for k, d in worst.items():
        record_diff("all-MiniLM-L6-v2 [torchscript]", k, d, REAL_TOL)
    assert all(d <= REAL_TOL for d in worst.values()), worst

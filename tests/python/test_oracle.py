"""trex export vs the transformers oracle, for every architecture x head x checkpoint format."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import fixtures as fx
from fixtures import HEADS, Case

TOL = 1e-5
CASES = fx.oracle_cases()


def _pipeline_names(head: str) -> set[str]:
    return {HEADS[head][1], HEADS[head][2]}


def check_onnx_file(path, model_type: str, head: str, opset: int = 17):
    """Full checker, standard-domain-only nodes, metadata, default opset."""
    onnx.checker.check_model(str(path), full_check=True)
    m = onnx.load(str(path), load_external_data=False)
    domains = {n.domain for n in m.graph.node}
    assert domains <= {""}, f"non-standard node domains: {sorted(domains)}"
    assert not m.functions, "plain export should not define local functions"
    opsets = {o.domain: o.version for o in m.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == opset, f"opset_import {opsets}"
    assert m.producer_name == "trex", f"producer_name {m.producer_name!r}"
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta.get("model_type") == model_type, f"metadata {meta}"
    assert meta.get("pipeline") in _pipeline_names(head), f"metadata {meta}"
    return m


def check_io(m: onnx.ModelProto, model_type: str, expected_outputs: set[str], dynamic: bool = True):
    inputs = {i.name: i for i in m.graph.input}
    initializer_names = {t.name for t in m.graph.initializer}
    real_inputs = {k for k in inputs if k not in initializer_names}
    want_in = {"input_ids", "attention_mask"} | ({"token_type_ids"} if fx.has_token_types(model_type) else set())
    assert real_inputs == want_in, f"graph inputs {sorted(real_inputs)} != expected {sorted(want_in)}"
    for name in want_in:
        t = inputs[name].type.tensor_type
        assert t.elem_type == onnx.TensorProto.INT64, f"{name} is not int64"
        dims = t.shape.dim
        assert len(dims) == 2, f"{name} rank {len(dims)}"
        if dynamic:
            assert all(d.dim_param and not d.HasField("dim_value") for d in dims), \
                f"{name} dims not symbolic: {dims}"
    outs = {o.name for o in m.graph.output}
    assert outs == expected_outputs, f"graph outputs {sorted(outs)} != expected {sorted(expected_outputs)}"


def _export_and_compare(case: Case, tmp_path, record_diff, feeds=None, extra=(), case_id=None):
    out = tmp_path / "model.onnx"
    args = list(extra)
    if case.pipeline_arg:
        args += ["--pipeline", case.pipeline_arg]
    r = fx.export(case.path, out, *args)
    assert "load check: ok" in (r.stdout + r.stderr), f"no load check line:\n{r.stdout}\n{r.stderr}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"], \
        f"unexpected files in output dir: {sorted(p.name for p in tmp_path.iterdir())}"

    m = check_onnx_file(out, case.model_type, case.head)
    check_io(m, case.model_type, fx.expected_outputs(case.model_type, case.head, fx.has_pooler(case.path)))

    feeds = feeds or fx.padded_batch(case.model_type)
    got = fx.run_ort(out, feeds)
    ref = fx.run_oracle(case.ref_path, case.head, feeds)
    diffs = fx.compare(got, ref, TOL)
    for name, d in diffs.items():
        record_diff(case_id or case.id, name, d, TOL)
    bad = {k: v for k, v in diffs.items() if not v <= TOL}
    if bad:
        detail = []
        mask = feeds["attention_mask"].astype(bool)
        for k in bad:
            diff = np.abs(got[k].astype(np.float64) - ref[k])
            if diff.ndim >= 2 and diff.shape[:2] == mask.shape:
                real = float(diff[mask].max())
                pad = float(diff[~mask].max()) if (~mask).any() else 0.0
                detail.append(f"{k}: max diff {bad[k]:.3e} (unpadded positions {real:.3e}, padded {pad:.3e})")
            else:
                detail.append(f"{k}: max diff {bad[k]:.3e}")
        pytest.fail(f"{case.id}: " + "; ".join(detail))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_oracle(case, trex_bin, tmp_path, record_diff):
    _export_and_compare(case, tmp_path, record_diff)


@pytest.mark.parametrize("model_type", ["roberta", "bert"])
def test_pad_ids_in_padded_positions(model_type, trex_bin, tmp_path, record_diff):
    """Tokenizer-style batch: padded positions hold pad_token_id (roberta position ids depend on it)."""
    case = Case(model_type, "feature-extraction")
    pad = json.loads((case.path / "config.json").read_text())["pad_token_id"]
    feeds = fx.padded_batch(model_type, pad_ids_in_padding=True, pad_token_id=pad)
    _export_and_compare(case, tmp_path, record_diff, feeds=feeds, case_id=f"{case.id}[pad ids]")


def test_pipeline_override(trex_bin, tmp_path, record_diff):
    """--pipeline feature-extraction on a sequence-classification checkpoint: base model + pooler only."""
    path = fx.checkpoint("bert", "text-classification")
    out = tmp_path / "model.onnx"
    fx.export(path, out, "--pipeline", "feature-extraction")
    m = check_onnx_file(out, "bert", "feature-extraction")
    check_io(m, "bert", {"last_hidden_state", "pooler_output"})
    feeds = fx.padded_batch("bert")
    diffs = fx.compare(fx.run_ort(out, feeds), fx.run_oracle(path, "feature-extraction", feeds), TOL)
    for k, d in diffs.items():
        record_diff("bert-text-classification-ckpt[--pipeline feature-extraction]", k, d, TOL)
    assert all(d <= TOL for d in diffs.values()), diffs


def test_fill_mask_ckpt_as_feature_extraction_has_no_pooler(trex_bin, tmp_path):
    """A BertForMaskedLM checkpoint has no pooler weights, so no pooler_output is exported."""
    path = fx.checkpoint("bert", "fill-mask")
    out = tmp_path / "model.onnx"
    fx.export(path, out, "--pipeline", "feature-extraction", "--no-check")
    m = onnx.load(str(out))
    assert {o.name for o in m.graph.output} == {"last_hidden_state"}


# Config features beyond the tiny defaults, each with the one outcome trex must give: "match" (exported and
# equal to transformers) or "refuse" (input error naming config.json). Pinned per variant, so a supported
# variant that starts being refused, or a refused one that starts exporting, fails the test.
CONFIG_VARIANT_OUTCOME = {
    "act_relu": "match",
    "act_gelu_new": "match",
    "act_gelu_pytorch_tanh": "match",
    "act_silu": "match",
    "relative_key": "refuse",
    "relative_key_query": "refuse",
}


@pytest.mark.parametrize("variant", sorted(CONFIG_VARIANT_OUTCOME))
def test_config_variant_matches_or_is_refused(variant, trex_bin, tmp_path, record_diff):
    """Config features beyond the tiny defaults: trex must either export them exactly or refuse
    them with an input error (exit 2) naming config.json -- never export a silently wrong model."""
    case = Case("bert", "feature-extraction", variant)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "model.onnx"
    r = fx.run_trex("export", "--model", case.path, out)
    if CONFIG_VARIANT_OUTCOME[variant] == "refuse":
        assert r.returncode == 2, f"{variant} should be refused (exit 2), got exit {r.returncode}: {r.stderr}"
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("trex: error: ") and "config.json" in lines[0], r.stderr
        assert list(out_dir.iterdir()) == []
        print(f"  {variant}: refused: {lines[0]}")
        return
    assert r.returncode == 0, f"{variant} should export, got exit {r.returncode}: {r.stderr}"
    feeds = fx.padded_batch("bert")
    diffs = fx.compare(fx.run_ort(out, feeds), fx.run_oracle(case.path, case.head, feeds), TOL)
    assert set(diffs) == fx.expected_outputs("bert", "feature-extraction", fx.has_pooler(case.path)), diffs
    for k, d in diffs.items():
        record_diff(case.id, k, d, TOL)
    assert all(d <= TOL for d in diffs.values()), f"{variant} exported but does not match: {diffs}"

"""Dynamic and static shapes, opsets, external data."""
from __future__ import annotations

import onnx
import pytest

import fixtures as fx
from test_oracle import TOL, check_io, check_onnx_file

SHAPES = [(1, 5), (4, 17), (2, 40), (1, 1)]


def _match(out, path, model_type, head, batch, seq, record_diff, case_id, sess=None):
    feeds = fx.padded_batch(model_type, batch=batch, seq=seq, seed=batch * 100 + seq)
    got = fx.run_ort(out, feeds, sess=sess)
    ref = fx.run_oracle(path, head, feeds)
    diffs = fx.compare(got, ref, TOL)
    for k, d in diffs.items():
        record_diff(f"{case_id}[{batch}x{seq}]", k, d, TOL)
    assert all(d <= TOL for d in diffs.values()), f"{batch}x{seq}: {diffs}"


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_dynamic_shapes(model_type, trex_bin, tmp_path, record_diff):
    path = fx.checkpoint(model_type, "feature-extraction")
    out = tmp_path / "model.onnx"
    fx.export(path, out)
    sess = fx.ort_session(out)
    for b, s in SHAPES:
        _match(out, path, model_type, "feature-extraction", b, s, record_diff, f"{model_type}-dynamic", sess=sess)


def test_dynamic_shapes_token_classification(trex_bin, tmp_path, record_diff):
    path = fx.checkpoint("electra", "token-classification")
    out = tmp_path / "model.onnx"
    fx.export(path, out)
    sess = fx.ort_session(out)
    for b, s in SHAPES:
        _match(out, path, "electra", "token-classification", b, s, record_diff, "electra-tokcls-dynamic", sess)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_static_shape(model_type, trex_bin, tmp_path, record_diff):
    path = fx.checkpoint(model_type, "feature-extraction")
    out = tmp_path / "model.onnx"
    r = fx.export(path, out, "--static-shape", "2,8")
    assert "load check: ok" in r.stdout + r.stderr
    m = onnx.load(str(out))
    for inp in m.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inp.type.tensor_type.shape.dim]
        assert dims == [2, 8], f"{inp.name}: {dims}"
    sess = fx.ort_session(out)
    _match(out, path, model_type, "feature-extraction", 2, 8, record_diff, f"{model_type}-static", sess=sess)
    for b, s in [(3, 8), (2, 9)]:
        feeds = fx.padded_batch(model_type, batch=b, seq=s)
        with pytest.raises(Exception) as ei:
            fx.run_ort(out, feeds, sess=sess)
        assert "dimension" in str(ei.value).lower() or "shape" in str(ei.value).lower(), str(ei.value)


@pytest.mark.parametrize("opset", [11, 13, 14, 18, 21])
def test_opsets(opset, trex_bin, tmp_path, record_diff):
    path = fx.checkpoint("bert", "feature-extraction")
    out = tmp_path / "model.onnx"
    fx.export(path, out, "--opset", opset)
    m = check_onnx_file(out, "bert", "feature-extraction", opset=opset)
    check_io(m, "bert", {"last_hidden_state", "pooler_output"})
    feeds = fx.padded_batch("bert")
    diffs = fx.compare(fx.run_ort(out, feeds), fx.run_oracle(path, "feature-extraction", feeds), TOL)
    for k, d in diffs.items():
        record_diff(f"bert-feature-extraction[opset {opset}]", k, d, TOL)
    assert all(d <= TOL for d in diffs.values()), diffs


@pytest.mark.parametrize("opset", [11, 13, 21])
@pytest.mark.parametrize("model_type,head", [("roberta", "fill-mask"), ("distilbert", "question-answering"),
                                             ("albert", "feature-extraction"), ("electra", "token-classification"),
                                             ("xlm-roberta", "text-classification")])
def test_opsets_other_architectures(model_type, head, opset, trex_bin, tmp_path, record_diff):
    path = fx.checkpoint(model_type, head)
    out = tmp_path / "model.onnx"
    fx.export(path, out, "--opset", opset)
    check_onnx_file(out, model_type, head, opset=opset)
    feeds = fx.padded_batch(model_type)
    diffs = fx.compare(fx.run_ort(out, feeds), fx.run_oracle(path, head, feeds), TOL)
    for k, d in diffs.items():
        record_diff(f"{model_type}-{head}[opset {opset}]", k, d, TOL)
    assert all(d <= TOL for d in diffs.values()), diffs


@pytest.mark.parametrize("opset", [10, 22])
def test_opset_out_of_range_is_usage_error(opset, trex_bin, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = fx.run_trex("export", "--model", fx.checkpoint("bert"), "--opset", opset, out_dir / "m.onnx")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.startswith("trex: error: ") and "opset" in r.stderr.lower(), r.stderr
    assert list(out_dir.iterdir()) == []


def test_external_data_always(trex_bin, tmp_path, record_diff):
    path = fx.checkpoint("bert", "feature-extraction")
    out = tmp_path / "model.onnx"
    r = fx.export(path, out, "--external-data", "always")
    assert "load check: ok" in r.stdout + r.stderr
    data = tmp_path / "model.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    # Weights live in the data file, the graph file stays small.
    assert data.stat().st_size > out.stat().st_size
    m = onnx.load(str(out), load_external_data=False)
    locations = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}, locations
    check_onnx_file(out, "bert", "feature-extraction")
    _match(out, path, "bert", "feature-extraction", 3, 11, record_diff, "bert-external-data")


def test_external_data_never_and_auto_single_file(trex_bin, tmp_path):
    path = fx.checkpoint("bert", "feature-extraction")
    for mode in ["never", "auto"]:
        d = tmp_path / mode
        d.mkdir()
        fx.export(path, d / "model.onnx", "--external-data", mode, "--no-check")
        assert [p.name for p in d.iterdir()] == ["model.onnx"], mode
        m = onnx.load(str(d / "model.onnx"), load_external_data=False)
        assert not any(t.external_data for t in m.graph.initializer), mode


def test_external_data_bad_value_is_usage_error(trex_bin, tmp_path):
    r = fx.run_trex("export", "--model", fx.checkpoint("bert"), "--external-data", "sometimes", tmp_path / "m.onnx")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["2", "2,0", "a,b", "2,8,1", "-1,8"])
def test_bad_static_shape_is_usage_error(bad, trex_bin, tmp_path):
    r = fx.run_trex("export", "--model", fx.checkpoint("bert"), "--static-shape", bad, tmp_path / "m.onnx")
    assert r.returncode == 1, (bad, r.returncode, r.stderr)
    assert r.stderr.startswith("trex: error: "), r.stderr
    assert list(tmp_path.iterdir()) == []

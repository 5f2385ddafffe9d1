"""The command line's own rules (issue 13, CLI side): outputs never overwrite inputs, output folders are created
(and removed again on failure), the output format follows --format or the extension, numbers are validated,
verify/quantize/optimize edge cases. Every failure: its exit code, exactly one stderr line `trex: error: ...`
(no ONNX Runtime log lines, no colour), nothing left behind or modified."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

import fixtures as fx

PLUGIN = fx.TREX_BIN.parent / "libtrex_torchscript_plugin.so"


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root (symlinks not followed) -> content hash, to prove nothing changed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = Path(dirpath) / f
            rel = os.path.relpath(p, root)
            out[rel] = "link:" + os.readlink(p) if p.is_symlink() else hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def expect_error(args, code: int, root: Path, words=(), cwd=None):
    """Runs trex; asserts the exit code, exactly one `trex: error: ` stderr line holding `words`
    (case-insensitive), no terminal escapes, and that nothing under `root` changed."""
    before = snapshot(root)
    r = fx.run_trex(*args) if cwd is None else _run_in(cwd, *args)
    assert r.returncode == code, f"exit {r.returncode} (want {code})\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"stderr should be exactly one line, got {len(lines)}:\n{r.stderr}"
    msg = lines[0]
    assert msg.startswith("trex: error: "), msg
    assert "\x1b" not in r.stderr, f"terminal escapes in stderr: {r.stderr!r}"
    for w in words:
        assert w.lower() in msg.lower(), f"{w!r} not in: {msg}"
    assert snapshot(root) == before, "files changed"
    print(f"  exit {r.returncode}: {msg}")
    return msg


def _run_in(cwd: Path, *args):
    import subprocess

    return subprocess.run([str(fx.TREX_BIN), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


def copy_ckpt(tmp_path: Path, fmt="safetensors", head="feature-extraction") -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(fx.checkpoint("bert", head, fmt), dst)
    (dst / ".complete").unlink(missing_ok=True)
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory, trex_bin):
    """A plain tiny BERT export and its int8 version (read-only for the tests)."""
    d = tmp_path_factory.mktemp("models")
    plain, q = d / "plain.onnx", d / "int8.onnx"
    fx.export(fx.checkpoint("bert"), plain, "-q")
    r = fx.run_trex("quantize", plain, q, "--no-check", "--no-auto-policy", "-q")
    assert r.returncode == 0, r.stderr
    return {"plain": plain, "int8": q}


@pytest.fixture
def plain_copy(tmp_path, models):
    d = tmp_path / "m"
    d.mkdir()
    p = d / "model.onnx"
    shutil.copy(models["plain"], p)
    return p


# ----------------------------------------------------------------------------------------------
# 1. Never overwrite an input
# ----------------------------------------------------------------------------------------------

def bin_ckpt(tmp_path: Path) -> Path:
    """The tiny BERT as pytorch_model.bin (written here, from its safetensors)."""
    import torch
    from safetensors.torch import load_file

    d = copy_ckpt(tmp_path)
    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    return d


@pytest.mark.parametrize("fmt,name", [
    ("safetensors", "model.safetensors"),
    ("safetensors", "config.json"),
    ("bin", "pytorch_model.bin"),
    ("sharded_st", "model.safetensors.index.json"),
    ("sharded_st", "model-00001-of-*.safetensors"),
])
def test_export_refuses_to_overwrite_a_checkpoint_file(tmp_path, trex_bin, fmt, name):
    d = bin_ckpt(tmp_path) if fmt == "bin" else copy_ckpt(tmp_path, fmt)
    target = sorted(d.glob(name))[0]
    expect_error(["export", "--model", d, target], 1, tmp_path, words=[target.name, "overwrite"])


@pytest.mark.parametrize("spelling", ["dotdot", "dot", "symlink", "hardlink", "cwd-relative"])
def test_export_refuses_other_spellings_of_an_input(tmp_path, trex_bin, spelling):
    d = copy_ckpt(tmp_path)
    cwd = None
    if spelling == "dotdot":
        out = d / ".." / "ckpt" / "model.safetensors"
    elif spelling == "dot":
        out = Path(str(d) + "/./model.safetensors")
    elif spelling == "symlink":
        out = tmp_path / "link.onnx"
        out.symlink_to(d / "model.safetensors")
    elif spelling == "hardlink":
        out = tmp_path / "hard.onnx"
        os.link(d / "model.safetensors", out)
    else:
        cwd, out = d, Path("./model.safetensors")
        expect_error(["export", "--model", ".", out], 1, tmp_path, words=["overwrite"], cwd=cwd)
        return
    expect_error(["export", "--model", d, out], 1, tmp_path, words=["overwrite"])


@pytest.mark.parametrize("sibling", ["-optimized.onnx", "-quantized.onnx", ".onnx.data"])
def test_export_refuses_sibling_outputs_that_are_inputs(tmp_path, trex_bin, sibling):
    """The extra files an export writes (<stem>-optimized/-quantized.onnx, OUT.onnx.data) are checked too."""
    d = copy_ckpt(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / f"m{sibling}").symlink_to(d / "model.safetensors")
    extra = {"-optimized.onnx": ["--optimize"], "-quantized.onnx": ["--quantize"],
             ".onnx.data": ["--external-data", "always"]}[sibling]
    expect_error(["export", "--model", d, *extra, out_dir / "m.onnx"], 1, tmp_path, words=["overwrite"])


def test_export_report_may_not_overwrite_an_input(tmp_path, trex_bin):
    d = copy_ckpt(tmp_path)
    expect_error(["export", "--model", d, "--report", d / "config.json", tmp_path / "m.onnx"], 1, tmp_path,
                 words=["config.json"])


@pytest.mark.parametrize("cmd", ["optimize", "quantize"])
@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "external-data"])
def test_optimize_and_quantize_refuse_to_overwrite_their_input(tmp_path, plain_copy, cmd, spelling):
    src = plain_copy
    if spelling == "same":
        out = src
    elif spelling == "dot":
        out = Path(str(src.parent) + "/./" + src.name)
    elif spelling == "symlink":
        out = tmp_path / "link.onnx"
        out.symlink_to(src)
    else:  # the output's external data file would be the input
        out = tmp_path / "x.onnx"
        (tmp_path / "x.onnx.data").symlink_to(src)
    expect_error([cmd, src, out], 1, tmp_path, words=["overwrite"])


def test_verify_report_may_not_overwrite_a_model(tmp_path, plain_copy):
    expect_error(["verify", plain_copy, "--against", plain_copy, "--report", plain_copy], 1, tmp_path,
                 words=["overwrite"])


def test_quantize_refuses_to_overwrite_the_input_relative(tmp_path, plain_copy):
    expect_error(["quantize", "model.onnx", "./model.onnx"], 1, tmp_path, words=["overwrite"], cwd=plain_copy.parent)


# ----------------------------------------------------------------------------------------------
# 2. Output folders
# ----------------------------------------------------------------------------------------------

def test_export_creates_missing_output_folders(tmp_path, trex_bin):
    out = tmp_path / "a" / "b" / "model.onnx"
    report = tmp_path / "r" / "s" / "report.json"
    fx.export(fx.checkpoint("bert"), out, "--report", report, "-q")
    assert out.is_file() and json.loads(report.read_text())["model_type"] == "bert"


def test_failed_export_removes_the_folders_it_created(tmp_path, trex_bin):
    bad = copy_ckpt(tmp_path)
    (bad / "config.json").write_text("{not json")
    root = tmp_path / "out"
    root.mkdir()
    expect_error(["export", "--model", bad, root / "new" / "sub" / "model.onnx", "--report",
                  root / "rep" / "r.json"], 2, root, words=["config.json"])
    assert list(root.iterdir()) == []


def test_failed_torchscript_export_removes_the_folders_it_created(tmp_path, trex_bin):
    bad = copy_ckpt(tmp_path)
    (bad / "model.safetensors").write_bytes(b"\0" * 16)
    root = tmp_path / "out"
    root.mkdir()
    r = fx.run_trex("export", "--model", bad, root / "new" / "model.pt")
    assert r.returncode in (1, 2), r.stderr  # 1 when trex was built without LibTorch
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("trex: error: "), r.stderr
    assert list(root.iterdir()) == []


def test_report_that_cannot_be_written_leaves_no_model(tmp_path, trex_bin):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "report.json").mkdir()  # a folder where the report should go
    expect_error(["export", "--model", fx.checkpoint("bert"), "--report", out_dir / "report.json",
                  out_dir / "model.onnx"], 4, tmp_path, words=["report.json"])
    assert sorted(p.name for p in out_dir.iterdir()) == ["report.json"]


def test_quantize_report_that_cannot_be_written_leaves_no_model(tmp_path, models):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "q.json").mkdir()
    expect_error(["quantize", models["plain"], out_dir / "q.onnx", "--report", out_dir / "q.json"], 4, tmp_path,
                 words=["q.json"])


def test_optimize_and_quantize_create_output_folders(tmp_path, models):
    fx_out = tmp_path / "o" / "p" / "opt.onnx"
    r = fx.run_trex("optimize", models["plain"], fx_out)
    assert r.returncode == 0 and fx_out.is_file(), r.stderr
    q_out = tmp_path / "q" / "r" / "q.onnx"
    r = fx.run_trex("quantize", models["plain"], q_out, "-q", "--report", tmp_path / "rep" / "q.json")
    assert r.returncode == 0 and q_out.is_file() and (tmp_path / "rep" / "q.json").is_file(), r.stderr


# ----------------------------------------------------------------------------------------------
# 3. Output format: --format or the extension, never contradicting
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,name", [("torchscript", "x.onnx"), ("onnx", "x.pt")])
def test_format_contradicting_the_extension_is_refused(tmp_path, trex_bin, fmt, name):
    expect_error(["export", "--model", fx.checkpoint("bert"), "--format", fmt, tmp_path / name], 1, tmp_path,
                 words=[name, "--format"])


def test_pt_extension_selects_torchscript(tmp_path, trex_bin):
    out = tmp_path / "model.pt"
    r = fx.run_trex("export", "--model", fx.checkpoint("bert"), out)
    if not PLUGIN.exists():
        assert r.returncode == 1 and "LibTorch" in r.stderr, r.stderr
        return
    assert r.returncode == 0, r.stderr
    assert zipfile.is_zipfile(out), "a .pt output must be a TorchScript archive, not ONNX"


@pytest.mark.parametrize("option", [["--report", "r.json"], ["--external-data", "always"],
                                    ["--no-check"], ["--optimize"], ["--quantize"], ["--static-shape", "1,8"],
                                    ["--gelu-approximation"]])
def test_onnx_only_options_are_refused_for_torchscript(tmp_path, trex_bin, option):
    option = [str(tmp_path / o) if o.endswith(".json") else o for o in option]  # never into the cwd
    expect_error(["export", "--model", fx.checkpoint("bert"), *option, tmp_path / "model.pt"], 1, tmp_path,
                 words=[option[0], "TorchScript"])


# ----------------------------------------------------------------------------------------------
# 4. --task = --pipeline
# ----------------------------------------------------------------------------------------------

def test_task_is_an_alias_of_pipeline(tmp_path, trex_bin):
    out = tmp_path / "m.onnx"
    fx.export(fx.checkpoint("bert", "text-classification"), out, "--task", "feature-extraction", "--no-check")
    assert {o.name for o in onnx.load(str(out)).graph.output} == {"last_hidden_state", "pooler_output"}


# ----------------------------------------------------------------------------------------------
# 5. Numbers on the command line; ONNX Runtime never prints
# ----------------------------------------------------------------------------------------------

BAD_NUMBERS = {
    "verify": [["--batch", "-5"], ["--batch", "0"], ["--seq", "0"], ["--batch", "99999999999999999999"],
               ["--batch", "4096", "--seq", "4096"], ["--atol", "-1"], ["--atol", "nan"], ["--min-cosine", "2"],
               ["--vocab", "0"], ["--seq", "1e3"]],
    "quantize": [["--samples", "-3"], ["--samples", "0"], ["--batch", "0"], ["--seq", "-1"],
                 ["--min-cosine", "inf"], ["--min-label-agreement", "1.5"], ["--min-elements", "-1"]],
    "export": [["--static-shape", "99999999999999999999,1"], ["--static-shape", "0,1"], ["--static-shape", "1,-1"],
               ["--static-shape", "2,8,3"], ["--static-shape", "100000,100000"], ["--opset", "5"],
               ["--opset", "99999999999"]],
}


@pytest.mark.parametrize("cmd,option", [(c, o) for c, opts in BAD_NUMBERS.items() for o in opts],
                         ids=lambda v: v if isinstance(v, str) else "=".join(v))
def test_bad_numbers_are_usage_errors(tmp_path, models, cmd, option):
    out = tmp_path / "out.onnx"
    if cmd == "verify":
        args = ["verify", models["int8"], "--against", models["plain"], *option]
    elif cmd == "quantize":
        args = ["quantize", models["plain"], out, *option]
    else:
        args = ["export", "--model", fx.checkpoint("bert"), *option, out]
    expect_error(args, 1, tmp_path, words=[option[0]])


def model_onnx_runtime_cannot_load(tmp_path, models) -> Path:
    """The plain model with one node turned into an op no runtime has (a valid ONNX file ORT refuses)."""
    m = onnx.load(str(models["plain"]))
    m.graph.node[3].op_type = "NoSuchOp"
    m.graph.node[3].domain = "com.example"
    m.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    return bad


def test_onnx_runtime_failure_is_one_clean_line(tmp_path, models):
    bad = model_onnx_runtime_cannot_load(tmp_path, models)
    expect_error(["verify", bad, "--against", models["plain"]], 3, tmp_path, words=["bad.onnx", "NoSuchOp"])
    expect_error(["optimize", bad, tmp_path / "o.onnx"], 2, tmp_path, words=["bad.onnx"])


def test_onnx_runtime_run_failure_is_one_clean_line(tmp_path, trex_bin):
    """A model that loads but fails while running: ONNX Runtime logs the kernel error itself (several lines,
    coloured) unless trex keeps its logger quiet."""
    h = onnx.helper
    shape = onnx.numpy_helper.from_array(np.array([3], np.int64), "shape")
    g = h.make_graph([h.make_node("Reshape", ["x", "shape"], ["y"])], "bad_reshape",
                     [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch_size", 4])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3])], [shape])
    p = tmp_path / "reshape.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8), str(p))
    expect_error(["verify", p, "--against", p], 3, tmp_path, words=["reshape.onnx"])


# ----------------------------------------------------------------------------------------------
# 6. verify: --outputs, --min-cosine, TorchScript files
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def without_pooler(tmp_path, models):
    """The plain model with pooler_output dropped (as another exporter might emit it)."""
    m = onnx.load(str(models["plain"]))
    keep = [o for o in m.graph.output if o.name != "pooler_output"]
    del m.graph.output[:]
    m.graph.output.extend(keep)
    p = tmp_path / "no_pooler.onnx"
    onnx.save(m, str(p))
    return p


def test_verify_compares_the_shared_outputs_by_default(models, without_pooler):
    r = fx.run_trex("verify", models["plain"], "--against", without_pooler)
    assert r.returncode == 0, r.stderr
    rows = [line.split()[0] for line in r.stdout.splitlines()[1:] if not line.startswith("not compared")]
    assert rows == ["last_hidden_state"], r.stdout
    assert "not compared (only in one model): pooler_output" in r.stdout, r.stdout


def test_verify_outputs_option(tmp_path, models, without_pooler):
    r = fx.run_trex("verify", models["plain"], "--against", models["plain"], "--outputs", "pooler_output")
    assert r.returncode == 0, r.stderr
    assert "pooler_output" in r.stdout and "last_hidden_state" not in r.stdout, r.stdout
    expect_error(["verify", models["plain"], "--against", without_pooler, "--outputs", "last_hidden_state,pooler_output"],
                 1, tmp_path, words=["pooler_output", "no_pooler.onnx"])


def test_verify_min_cosine_passes_int8_that_misses_atol(tmp_path, models):
    args = ["verify", models["int8"], "--against", models["plain"], "--atol", "1e-7"]
    expect_error(args, 3, tmp_path, words=["atol"])
    report = tmp_path / "rep" / "v.json"
    r = fx.run_trex(*args, "--min-cosine", "0.9", "--report", report)
    assert r.returncode == 0, r.stderr
    assert "ok (cosine)" in r.stdout, r.stdout
    j = json.loads(report.read_text())
    assert j["ok"] is True and j["min_cosine"] == pytest.approx(0.9)
    expect_error([*args, "--min-cosine", "1"], 3, tmp_path, words=["cosine"])


@pytest.mark.parametrize("side", ["model", "reference"])
def test_verify_on_torchscript_is_a_clear_usage_error(tmp_path, models, side):
    pt = tmp_path / "model.pt"
    with zipfile.ZipFile(pt, "w") as z:  # what torch.jit.save writes: a zip archive
        z.writestr("model/data.pkl", b"\x80\x02}q\x00.")
    a, b = (pt, models["plain"]) if side == "model" else (models["plain"], pt)
    msg = expect_error(["verify", a, "--against", b], 1, tmp_path, words=["model.pt", "TorchScript"])
    assert "protobuf" not in msg.lower()


# ----------------------------------------------------------------------------------------------
# 7. quantize: no re-quantizing, no output when ONNX Runtime cannot load the model
# ----------------------------------------------------------------------------------------------

def test_quantize_refuses_an_already_quantized_model(tmp_path, models):
    expect_error(["quantize", models["int8"], tmp_path / "again.onnx"], 1, tmp_path, words=["already quantized"])


def test_quantize_refuses_a_qdq_model(tmp_path, models):
    """int8 weights behind DequantizeLinear (the QDQ format of other quantizers)."""
    h = onnx.helper
    w = onnx.numpy_helper.from_array(np.ones((4, 4), np.int8), "w_q")
    s = onnx.numpy_helper.from_array(np.array(0.1, np.float32), "w_scale")
    g = h.make_graph([h.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"]),
                      h.make_node("MatMul", ["x", "w"], ["y"])], "qdq",
                     [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [w, s])
    p = tmp_path / "qdq.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8), str(p))
    expect_error(["quantize", p, tmp_path / "q.onnx"], 1, tmp_path, words=["already quantized", "DequantizeLinear"])


def test_quantize_leaves_no_output_when_onnx_runtime_cannot_load(tmp_path, models):
    bad = model_onnx_runtime_cannot_load(tmp_path, models)
    expect_error(["quantize", bad, tmp_path / "q" / "bad-int8.onnx"], 3, tmp_path, words=["NoSuchOp"])
    assert not (tmp_path / "q").exists()


# ----------------------------------------------------------------------------------------------
# 8. trex optimize: metadata and opset imports
# ----------------------------------------------------------------------------------------------

def test_optimize_metadata_and_opset_imports(tmp_path, models):
    out = tmp_path / "opt.onnx"
    r = fx.run_trex("optimize", models["plain"], out)
    assert r.returncode == 0, r.stderr
    m = onnx.load(str(out))
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["graph"] == "onnxruntime-optimized" and meta["model_type"] == "bert"
    used = {n.domain or "" for n in m.graph.node} | {""}
    declared = [o.domain for o in m.opset_import]
    assert len(declared) == len(set(declared))
    assert set(declared) <= used, f"unused opset imports: {set(declared) - used}"
    onnx.checker.check_model(m)


# ----------------------------------------------------------------------------------------------
# 9. Buffers are not "unused weights"
# ----------------------------------------------------------------------------------------------

def add_tensors(st: Path, extra: dict[str, np.ndarray]):
    raw = st.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + n]), bytearray(raw[8 + n:])
    dtypes = {np.dtype(np.int64): "I64", np.dtype(np.float32): "F32"}
    for name, a in extra.items():
        start = len(data)
        data += a.tobytes()
        header[name] = {"dtype": dtypes[a.dtype], "shape": list(a.shape), "data_offsets": [start, len(data)]}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    st.write_bytes(struct.pack("<Q", len(hb)) + hb + bytes(data))


def test_position_ids_buffer_is_not_noted(tmp_path, trex_bin):
    d = copy_ckpt(tmp_path)
    add_tensors(d / "model.safetensors", {"embeddings.position_ids": np.arange(128, dtype=np.int64)[None]})
    r = fx.export(d, tmp_path / "m.onnx", "--no-check")
    assert "note:" not in r.stdout, r.stdout
    # A real unused tensor is still reported, and the buffer is not listed beside it.
    add_tensors(d / "model.safetensors", {"extra.weight": np.ones(4, np.float32)})
    r = fx.export(d, tmp_path / "m2.onnx", "--no-check")
    note = [line for line in r.stdout.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "extra.weight" in note[0] and "position_ids" not in note[0], r.stdout


# ----------------------------------------------------------------------------------------------
# 10. Help
# ----------------------------------------------------------------------------------------------

def test_help_lists_every_exit_code(trex_bin):
    r = fx.run_trex("--help")
    assert r.returncode == 0
    for words in ["0 ok", "1 usage", "2 input", "3 verification", "4 output", "5 internal"]:
        assert words in r.stdout, f"{words!r} missing from the help:\n{r.stdout}"


def test_export_quantize_summary_line_matches_the_report(tmp_path, trex_bin):
    """The printed int8-vs-fp32 line carries the same figures as the JSON report (each in its own place)."""
    import re
    import subprocess

    out, report = tmp_path / "out", tmp_path / "r.json"
    r = subprocess.run([str(fx.TREX_BIN), "export", "--model", str(fx.checkpoint("bert", "text-classification")),
                        "--quantize", "--report", str(report), "--latency-repeats", "0", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = re.search(r"int8 vs fp32: max abs diff (\S+), mean cosine (\S+) \(min (\S+)\), label agreement (\S+) %",
                  r.stdout)
    assert m, r.stdout
    got = json.loads(report.read_text())["quantized"]["vs_fp32"]
    assert float(m.group(1)) == pytest.approx(got["max_abs_diff"], rel=1e-3)
    assert float(m.group(2)) == pytest.approx(got["mean_cosine"], abs=1e-5)
    assert float(m.group(3)) == pytest.approx(got["min_cosine"], abs=1e-5)
    assert float(m.group(4)) == pytest.approx(100 * got["label_agreement"], abs=1e-3)

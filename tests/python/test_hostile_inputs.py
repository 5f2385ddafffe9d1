"""Hostile inputs on the reading side (issue 13): files opened only as regular files inside their folder,
external-data locations confined, sizes checked before allocation, bounded JSON and pickles, duplicate
header names, config sanity, non-finite weights.

Each case: exit code, exactly one stderr line `trex: error: <file>: <problem>`, nothing left in the output
folder, bounded time (subprocess timeout) and, where the old behaviour was a memory blow-up, bounded memory
(RLIMIT_AS in the child)."""
from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fixtures as fx

ST = "model.safetensors"
GIB = 1 << 30


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def read_st(path: Path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st_bytes(path: Path, header: bytes, data: bytes = b""):
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def copy_ckpt(tmp_path: Path, model_type="bert", fmt="safetensors", name="ckpt") -> Path:
    dst = tmp_path / name
    shutil.copytree(fx.checkpoint(model_type, "feature-extraction", fmt), dst)
    (dst / ".complete").unlink(missing_ok=True)
    return dst


def listing(d: Path):
    return sorted(p.name for p in d.iterdir()) if d.exists() else None


def run_limited(args, timeout=30, mem_bytes=None):
    """Runs trex with a wall-clock timeout and optionally an address-space limit; returns (result, seconds)."""
    def limit():
        # An ASan build reserves terabytes of address space: TREX_NO_RLIMIT=1 runs these tests against it.
        if mem_bytes and not os.environ.get("TREX_NO_RLIMIT"):
            resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    t0 = time.monotonic()
    r = subprocess.run([str(fx.TREX_BIN), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                       preexec_fn=limit)
    return r, time.monotonic() - t0


def expect_error(args, code=2, words=(), any_of=(), out_dir: Path | None = None, timeout=30, mem_bytes=None,
                 max_seconds=None):
    before = listing(out_dir) if out_dir else None
    r, secs = run_limited(args, timeout=timeout, mem_bytes=mem_bytes)
    lines = r.stderr.strip().splitlines()
    print(f"  exit {r.returncode} in {secs:.2f} s: {r.stderr.strip()[:300]}")
    assert r.returncode == code, f"exit {r.returncode} (want {code})\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[:2000]}"
    assert len(lines) == 1, f"stderr should be one line, got {len(lines)}:\n{r.stderr[:2000]}"
    msg = lines[0]
    assert msg.startswith("trex: error: "), msg
    assert len(msg) <= 1100, f"error line of {len(msg)} characters"
    low = msg.lower()
    for w in words:
        assert w.lower() in low, f"{w!r} not in message: {msg}"
    for alts in any_of:
        assert any(a.lower() in low for a in alts), f"none of {alts} in message: {msg}"
    if out_dir is not None:
        assert listing(out_dir) == before, f"output folder changed: {before} -> {listing(out_dir)}"
    if max_seconds is not None:
        assert secs < max_seconds, f"took {secs:.1f} s"
    return msg


@pytest.fixture
def out(tmp_path, trex_bin):
    d = tmp_path / "out"
    d.mkdir()
    return d / "model.onnx"


def export_args(model_dir, out_path, *extra):
    return ["export", "--model", model_dir, "--no-check", *extra, out_path]


# ----------------------------------------------------------------------------------------------
# 1. Regular files inside the checkpoint folder
# ----------------------------------------------------------------------------------------------

def test_config_fifo_fails_at_once(tmp_path, out):
    ckpt = copy_ckpt(tmp_path)
    (ckpt / "config.json").unlink()
    os.mkfifo(ckpt / "config.json")
    expect_error(export_args(ckpt, out), words=["config.json", "fifo"], out_dir=out.parent, timeout=20, max_seconds=10)


def test_index_fifo_fails_at_once(tmp_path, out):
    ckpt = copy_ckpt(tmp_path)
    (ckpt / ST).rename(ckpt / "model-00001-of-00001.safetensors")
    os.mkfifo(ckpt / "model.safetensors.index.json")
    expect_error(export_args(ckpt, out), words=["index.json", "fifo"], out_dir=out.parent, timeout=20, max_seconds=10)


def test_config_symlink_to_dev_zero(tmp_path, out):
    ckpt = copy_ckpt(tmp_path)
    (ckpt / "config.json").unlink()
    (ckpt / "config.json").symlink_to("/dev/zero")
    expect_error(export_args(ckpt, out), words=["config.json"], any_of=[("outside", "device")],
                 out_dir=out.parent, timeout=20, max_seconds=10, mem_bytes=2 * GIB)


def test_config_symlink_outside_folder(tmp_path, out):
    ckpt = copy_ckpt(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (ckpt / "config.json").rename(elsewhere / "config.json")
    (ckpt / "config.json").symlink_to(elsewhere / "config.json")
    expect_error(export_args(ckpt, out), words=["config.json", "outside"], out_dir=out.parent)


def test_weights_symlink_outside_folder(tmp_path, out):
    """A checkpoint whose weights file points elsewhere (e.g. at a file of the user's) is refused."""
    ckpt = copy_ckpt(tmp_path)
    elsewhere = tmp_path / "secret"
    elsewhere.mkdir()
    (ckpt / ST).rename(elsewhere / ST)
    (ckpt / ST).symlink_to(elsewhere / ST)
    expect_error(export_args(ckpt, out), words=[ST, "outside"], out_dir=out.parent)


def test_weights_directory_and_device(tmp_path, out):
    ckpt = copy_ckpt(tmp_path)
    (ckpt / ST).unlink()
    (ckpt / ST).mkdir()
    expect_error(export_args(ckpt, out), words=[ST, "directory"], out_dir=out.parent)


def test_hub_cache_layout_still_exports(tmp_path, out):
    """Control: a Hugging Face cache snapshot (files are symlinks into <repo>/blobs) is inside its root."""
    src = fx.checkpoint("bert", "feature-extraction", "safetensors")
    repo = tmp_path / "models--x--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in ("config.json", ST):
        blob = repo / "blobs" / (f + ".blob")
        shutil.copy(src / f, blob)
        (snap / f).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    r = fx.run_trex(*export_args(snap, out))
    assert r.returncode == 0, r.stderr
    assert out.exists()


def test_config_too_big(tmp_path, out):
    ckpt = copy_ckpt(tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["padding"] = "x" * (17 << 20)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    expect_error(export_args(ckpt, out), words=["config.json", "limit"], out_dir=out.parent, max_seconds=10)


# ----------------------------------------------------------------------------------------------
# 4./6. Bounded JSON, duplicate names
# ----------------------------------------------------------------------------------------------

def test_deeply_nested_shape_in_header(tmp_path, out):
    ckpt = copy_ckpt(tmp_path)
    header, data = read_st(ckpt / ST)
    first = next(k for k in header if k != "__metadata__")
    text = json.dumps(header, separators=(",", ":"))
    deep = "[" * 75000 + "]" * 75000
    needle = json.dumps(header[first]["shape"], separators=(",", ":"))
    text = text.replace(needle, deep, 1)
    write_st_bytes(ckpt / ST, text.encode(), data)
    expect_error(export_args(ckpt, out), words=[ST, "nesting"], out_dir=out.parent, max_seconds=10)


def test_deeply_nested_config(tmp_path, out):
    ckpt = copy_ckpt(tmp_path)
    cfg = (ckpt / "config.json").read_text().rstrip().rstrip("}")
    (ckpt / "config.json").write_text(cfg + ', "x": ' + "[" * 100000 + "]" * 100000 + "}")
    expect_error(export_args(ckpt, out), words=["config.json", "nesting"], out_dir=out.parent, max_seconds=10)


def test_duplicate_tensor_name_in_header(tmp_path, out):
    ckpt = copy_ckpt(tmp_path)
    header, data = read_st(ckpt / ST)
    first = next(k for k in header if k != "__metadata__")
    text = json.dumps(header, separators=(",", ":"))
    entry = json.dumps({first: header[first]}, separators=(",", ":"))[1:-1]
    text = text[:-1] + "," + entry + "}"  # same name again at the end: the last one used to win silently
    write_st_bytes(ckpt / ST, text.encode(), data)
    expect_error(export_args(ckpt, out), words=[ST, first, "more than once"], out_dir=out.parent)


def test_header_above_limit(tmp_path, out):
    ckpt = copy_ckpt(tmp_path)
    header, data = read_st(ckpt / ST)
    header["__metadata__"] = {"pad": "x" * (40 << 20)}
    write_st_bytes(ckpt / ST, json.dumps(header).encode(), data)
    expect_error(export_args(ckpt, out), words=[ST, "limit"], out_dir=out.parent, max_seconds=10,
                 mem_bytes=2 * GIB)


def test_huge_shape_array_not_serialized(tmp_path, out):
    """A 1M-element shape is refused while parsing (at most 64 dims), not built and dumped into the message."""
    ckpt = copy_ckpt(tmp_path)
    header, data = read_st(ckpt / ST)
    first = next(k for k in header if k != "__metadata__")
    header[first]["shape"] = [-1] * 1_000_000
    write_st_bytes(ckpt / ST, json.dumps(header, separators=(",", ":")).encode(), data)
    expect_error(export_args(ckpt, out), words=[ST, "more than 64"], out_dir=out.parent)


def test_many_header_entries_parse_in_linear_time(tmp_path, out):
    """200,000 (empty) tensor entries: parsed in linear time and memory, then the missing weights reported."""
    ckpt = copy_ckpt(tmp_path)
    entry = '{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    text = "{" + ",".join(f'"x{i}":{entry}' for i in range(200_000)) + "}"
    write_st_bytes(ckpt / ST, text.encode())
    expect_error(export_args(ckpt, out), words=[ST, "missing"], out_dir=out.parent, max_seconds=15,
                 mem_bytes=2 * GIB)


# ----------------------------------------------------------------------------------------------
# 7. Config sanity
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layers", [1_000_000_000, 100_000])
def test_absurd_layer_count(tmp_path, out, layers):
    ckpt = copy_ckpt(tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["num_hidden_layers"] = layers
    (ckpt / "config.json").write_text(json.dumps(cfg))
    expect_error(export_args(ckpt, out), words=["config.json", "num_hidden_layers"], out_dir=out.parent,
                 max_seconds=10, mem_bytes=2 * GIB)


def test_long_error_line_is_capped(tmp_path, out):
    """1000 layers (within the sanity bound) against 2 present: the missing list is long; one capped line."""
    ckpt = copy_ckpt(tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["num_hidden_layers"] = 1000
    (ckpt / "config.json").write_text(json.dumps(cfg))
    expect_error(export_args(ckpt, out), words=["missing"], out_dir=out.parent, max_seconds=20)


# ----------------------------------------------------------------------------------------------
# 5. Pickle amplification
# ----------------------------------------------------------------------------------------------

def _zip_bin(path: Path, pkl: bytes, storages: dict[str, bytes] | None = None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for k, v in (storages or {}).items():
            z.writestr(f"archive/data/{k}", v)


def test_pickle_memo_reduce_amplification(tmp_path, out):
    """~1 MB pickle: one memoized list of 100k pairs passed to OrderedDict 100k times (was gigabytes)."""
    k = 100_000
    p = bytearray(b"\x80\x02")
    p += b"ccollections\nOrderedDict\nq\x00"                 # memo 0: OrderedDict
    p += b"X\x01\x00\x00\x00aK\x01\x86q\x01"                  # memo 1: ('a', 1)
    p += b"(" + b"h\x01" * k + b"lq\x02"                       # memo 2: [pair] * k
    p += b"("                                                  # a list of many OrderedDict(memo 2)
    p += b"h\x00h\x02\x85R" * 100_000
    p += b"l."
    ckpt = copy_ckpt(tmp_path)
    (ckpt / ST).unlink()
    _zip_bin(ckpt / "pytorch_model.bin", bytes(p))
    expect_error(export_args(ckpt, out), words=["pytorch_model.bin", "amplification"], out_dir=out.parent,
                 max_seconds=15, mem_bytes=2 * GIB)


def test_pickle_many_noncontiguous_views(tmp_path, out):
    """600 transposed views of one 4 MB storage in a 4 MB .bin (was 2.4 GB of copies)."""
    import torch
    base = torch.zeros(1024, 1024)
    ckpt = copy_ckpt(tmp_path)
    (ckpt / ST).unlink()
    torch.save({f"t{i}": base.t() for i in range(600)}, ckpt / "pytorch_model.bin")
    assert (ckpt / "pytorch_model.bin").stat().st_size < 6 << 20
    expect_error(export_args(ckpt, out), words=["pytorch_model.bin", "amplification"], out_dir=out.parent,
                 max_seconds=15, mem_bytes=2 * GIB)


# ----------------------------------------------------------------------------------------------
# 8. Non-finite weights
# ----------------------------------------------------------------------------------------------

def _poison(ckpt: Path, pick, value):
    header, data = read_st(ckpt / ST)
    name = pick(header)
    b, _ = header[name]["data_offsets"]
    assert header[name]["dtype"] == "F32"
    data = bytearray(data)
    data[b + 4 * 5:b + 4 * 6] = struct.pack("<f", value)
    raw = (ckpt / ST).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    (ckpt / ST).write_bytes(raw[:8 + n] + bytes(data))
    return name


def test_nan_in_embedding_row(tmp_path, out):
    ckpt = copy_ckpt(tmp_path)
    name = _poison(ckpt, lambda h: next(k for k in h if "word_embeddings" in k), float("nan"))
    expect_error(export_args(ckpt, out), words=[name, "nan"], out_dir=out.parent)


def test_inf_bias(tmp_path, out):
    ckpt = copy_ckpt(tmp_path)
    name = _poison(ckpt, lambda h: next(k for k in h if k.endswith("dense.bias") and h[k]["shape"][0] > 8),
                   float("inf"))
    expect_error(export_args(ckpt, out), words=["nan or infinity"], out_dir=out.parent)
    assert name


def test_nan_refused_for_torchscript(tmp_path, out):
    ckpt = copy_ckpt(tmp_path)
    name = _poison(ckpt, lambda h: next(k for k in h if "word_embeddings" in k), float("nan"))
    pt = out.parent / "model.pt"
    probe = fx.run_trex("export", "--model", ckpt, "--format", "torchscript", pt)
    if "needs LibTorch" in probe.stderr:
        pytest.skip("this trex was built without LibTorch")
    expect_error(["export", "--model", ckpt, "--format", "torchscript", pt], words=[name, "nan"], out_dir=out.parent)


# ----------------------------------------------------------------------------------------------
# 2./3. ONNX models: external data confined, sizes checked before allocation
# ----------------------------------------------------------------------------------------------

def _matmul_model(path: Path, w_tensor, extra_inits=()):
    import onnx
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph([node], "g", [x], [y], initializer=[w_tensor, *extra_inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def test_verify_huge_static_input_shape(tmp_path):
    """An input declared [2^40, 64]: sample data is refused (exit 2), not allocated (was an internal error)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1 << 40, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1 << 40, 64])
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    m = tmp_path / "m.onnx"
    m.write_bytes(model.SerializeToString())
    expect_error(["verify", m, "--against", m], words=["m.onnx", "'x'", "too large"], mem_bytes=4 * GIB)


def _external_w(location: str, dims=(64, 64)):
    from onnx import TensorProto
    t = TensorProto()
    t.name = "w"
    t.data_type = TensorProto.FLOAT
    t.dims.extend(dims)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(int(np.prod(dims)) * 4))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def _secret(tmp_path: Path) -> Path:
    s = tmp_path / "secret.bin"
    s.write_bytes(b"SECRET!!" * 2048)  # 16 KiB, enough for a 64x64 float weight
    return s


def _model_dir(tmp_path: Path, location: str) -> Path:
    d = tmp_path / "a" / "b" / "m"
    d.mkdir(parents=True)
    return _matmul_model(d / "model.onnx", _external_w(location))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
@pytest.mark.parametrize("command", ["optimize", "quantize", "verify"])
def test_external_data_outside_model_folder(tmp_path, kind, command):
    secret = _secret(tmp_path)
    if kind == "dotdot":
        model = _model_dir(tmp_path, "../../../secret.bin")
    elif kind == "absolute":
        model = _model_dir(tmp_path, str(secret))
    else:
        model = _model_dir(tmp_path, "w.bin")
        (model.parent / "w.bin").symlink_to(secret)
    outd = tmp_path / "outd"
    outd.mkdir()
    if command == "verify":
        args = ["verify", model, "--against", model]
    else:
        args = [command, model, outd / "o.onnx"]
    expect_error(args, words=["model.onnx", "external data location"], out_dir=outd)


def test_external_data_in_hub_cache_snapshot_is_followed(tmp_path):
    """Control: in a hub cache snapshot, model.onnx and its external data are symlinks into <repo>/blobs."""
    repo = tmp_path / "models--x--m"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "rev" / "onnx"
    snap.mkdir(parents=True)
    (repo / "blobs" / "data").write_bytes(np.ones((64, 64), np.float32).tobytes())
    _matmul_model(repo / "blobs" / "model", _external_w("model.onnx_data"))
    (snap / "model.onnx").symlink_to(Path("../../..") / "blobs" / "model")
    (snap / "model.onnx_data").symlink_to(Path("../../..") / "blobs" / "data")
    outd = tmp_path / "outd"
    outd.mkdir()
    r = fx.run_trex("quantize", snap / "model.onnx", outd / "q.onnx", "--no-check", "--no-auto-policy")
    assert r.returncode == 0, r.stderr


def test_external_data_in_subgraph_outside(tmp_path):
    """A tensor attribute of a Constant node inside an If branch points outside: refused before ORT loads."""
    import onnx
    from onnx import TensorProto, helper
    secret = _secret(tmp_path)
    d = tmp_path / "m"
    d.mkdir()
    t = _external_w(str(secret))
    const = helper.make_node("Constant", [], ["c"], value=t)
    branch = helper.make_graph([const], "b", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [64, 64])])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    model = helper.make_model(helper.make_graph([node], "g", [cond], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (d / "model.onnx").write_bytes(model.SerializeToString())
    outd = tmp_path / "outd"
    outd.mkdir()
    expect_error(["optimize", d / "model.onnx", outd / "o.onnx"], words=["model.onnx", "absolute"], out_dir=outd)


def test_onnx_dims_overflow_quantize(tmp_path):
    """dims [2^56, 64] with empty data: elements*4 used to wrap to 0 and the quantizer segfaulted."""
    from onnx import TensorProto
    w = TensorProto()
    w.name = "w"
    w.data_type = TensorProto.FLOAT
    w.dims.extend([1 << 56, 64])
    w.raw_data = b""
    model = _matmul_model(tmp_path / "m.onnx", w)
    outd = tmp_path / "outd"
    outd.mkdir()
    expect_error(["quantize", model, outd / "q.onnx"], words=["m.onnx", "'w'"], out_dir=outd)


def test_onnx_declared_big_without_data(tmp_path):
    """A [16384, 16384] float initializer with no values: refused before allocating 1 GB."""
    from onnx import TensorProto
    w = TensorProto()
    w.name = "w"
    w.data_type = TensorProto.FLOAT
    w.dims.extend([1 << 14, 1 << 14])
    model = _matmul_model(tmp_path / "m.onnx", w)
    outd = tmp_path / "outd"
    outd.mkdir()
    expect_error(["quantize", model, outd / "q.onnx"], words=["m.onnx", "'w'"], out_dir=outd,
                 mem_bytes=768 << 20)

"""Bad and hostile inputs: exit code, one clear stderr line naming file + problem, no output left behind."""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import struct
import zipfile
from pathlib import Path

import pytest

import fixtures as fx

ST = "model.safetensors"


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def read_st(path: Path):
    """(header dict, data bytes) of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path: Path, header: dict, data: bytes, header_len: int | None = None, header_bytes: bytes | None = None):
    hb = header_bytes if header_bytes is not None else json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    n = len(hb) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + hb + data)


def tensors_by_offset(header: dict):
    return sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0])


def copy_ckpt(tmp_path: Path, model_type="bert", head="feature-extraction", fmt="safetensors") -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(fx.checkpoint(model_type, head, fmt), dst)
    (dst / ".complete").unlink(missing_ok=True)
    return dst


def listing(d: Path):
    return sorted(p.name for p in d.iterdir()) if d.exists() else None


def run_expect_error(model_dir, out: Path, code: int, *extra, words=(), any_of=()):
    """Runs trex export, asserts exit code, one 'trex: error: ' stderr line containing all `words`
    and, for each tuple in `any_of`, at least one of its alternatives (case-insensitive); and that
    the output directory holds exactly what it held before."""
    before = listing(out.parent)
    r = fx.run_trex("export", "--model", model_dir, *extra, out)
    after = listing(out.parent)
    assert r.returncode == code, f"exit {r.returncode} (want {code})\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"stderr should be exactly one line, got {len(lines)}:\n{r.stderr}"
    msg = lines[0]
    print(f"  exit {r.returncode}: {msg}")
    assert msg.startswith("trex: error: "), msg
    low = msg.lower()
    for w in words:
        assert w.lower() in low, f"{w!r} not in message: {msg}"
    for alts in any_of:
        assert any(a.lower() in low for a in alts), f"none of {alts} in message: {msg}"
    assert after == before, f"output dir changed: before {before}, after {after}"
    assert not out.exists() and not Path(str(out) + ".data").exists()
    return msg


@pytest.fixture
def out(tmp_path, trex_bin):
    d = tmp_path / "out"
    d.mkdir()
    return d / "model.onnx"


# ----------------------------------------------------------------------------------------------
# Folder / config / CLI problems
# ----------------------------------------------------------------------------------------------

def test_missing_model_dir(tmp_path, out):
    missing = tmp_path / "no_such_model"
    run_expect_error(missing, out, 2, words=["no_such_model"],
                     any_of=[("not found", "no such", "does not exist", "missing", "not a directory", "cannot")])


def test_folder_without_config(tmp_path, out):
    d = copy_ckpt(tmp_path)
    (d / "config.json").unlink()
    run_expect_error(d, out, 2, words=["config.json"],
                     any_of=[("not found", "no such", "does not exist", "missing", "cannot open", "cannot read")])


def test_config_invalid_json(tmp_path, out):
    d = copy_ckpt(tmp_path)
    (d / "config.json").write_text('{"model_type": "bert", "hidden_size": 32,,}')
    run_expect_error(d, out, 2, words=["config.json"], any_of=[("json", "parse", "syntax", "invalid")])


def test_config_without_model_type(tmp_path, out):
    d = copy_ckpt(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["model_type"]
    (d / "config.json").write_text(json.dumps(cfg))
    run_expect_error(d, out, 2, words=["config.json", "model_type"])


def test_unsupported_model_type(tmp_path, out):
    d = copy_ckpt(tmp_path)
    (d / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 32, "n_layer": 2, "n_head": 4,
        "vocab_size": 99}))
    run_expect_error(d, out, 2, words=["gpt2"], any_of=[("config.json", "model_type", "unsupported")])


def test_unknown_pipeline(tmp_path, out):
    run_expect_error(fx.checkpoint("bert"), out, 1, "--pipeline", "translate-to-klingon",
                     words=["translate-to-klingon"])


def test_unknown_option(tmp_path, out):
    run_expect_error(fx.checkpoint("bert"), out, 1, "--frobnicate")


# ----------------------------------------------------------------------------------------------
# Corrupt safetensors
# ----------------------------------------------------------------------------------------------

def test_safetensors_truncated(tmp_path, out):
    d = copy_ckpt(tmp_path)
    raw = (d / ST).read_bytes()
    (d / ST).write_bytes(raw[: len(raw) // 2])
    run_expect_error(d, out, 2, words=[ST], any_of=[
        ("truncat", "beyond", "exceed", "out of range", "past the end", "end of file", "bounds", "short", "size")])


@pytest.mark.parametrize("size", [0, 5])
def test_safetensors_too_small(tmp_path, out, size):
    d = copy_ckpt(tmp_path)
    (d / ST).write_bytes(b"\x10" * size)
    run_expect_error(d, out, 2, words=[ST])


@pytest.mark.parametrize("how", ["file+1000", "2^63", "2^64-1"])
def test_safetensors_header_length_beyond_file(tmp_path, out, how):
    d = copy_ckpt(tmp_path)
    raw = bytearray((d / ST).read_bytes())
    n = {"file+1000": len(raw) + 1000, "2^63": 2**63, "2^64-1": 2**64 - 1}[how]
    raw[:8] = struct.pack("<Q", n)
    (d / ST).write_bytes(bytes(raw))
    run_expect_error(d, out, 2, words=[ST, "header"])


def test_safetensors_header_not_json(tmp_path, out):
    d = copy_ckpt(tmp_path)
    header, data = read_st(d / ST)
    hb = json.dumps(header).encode()
    bad = b"{this is not json" + b" " * (len(hb) - len(b"{this is not json"))
    write_st(d / ST, header, data, header_bytes=bad)
    run_expect_error(d, out, 2, words=[ST], any_of=[("json", "header", "parse")])


def test_safetensors_out_of_range_offsets(tmp_path, out):
    d = copy_ckpt(tmp_path)
    header, data = read_st(d / ST)
    name, info = tensors_by_offset(header)[3]
    b, e = info["data_offsets"]
    info["data_offsets"] = [len(data) + 64, len(data) + 64 + (e - b)]
    write_st(d / ST, header, data)
    run_expect_error(d, out, 2, words=[ST], any_of=[
        ("range", "offset", "bounds", "beyond", "exceed", "past the end", "outside")])


def test_safetensors_overlapping_offsets(tmp_path, out):
    d = copy_ckpt(tmp_path)
    header, data = read_st(d / ST)
    order = tensors_by_offset(header)
    (_, prev), (last_name, last) = order[-2], order[-1]
    b, e = last["data_offsets"]
    assert e == len(data)
    # Move the last tensor 4 bytes back so it overlaps the previous one; shorten the data: no gaps.
    last["data_offsets"] = [b - 4, e - 4]
    assert prev["data_offsets"][1] == b
    write_st(d / ST, header, data[:-4])
    run_expect_error(d, out, 2, words=[ST, "overlap"])


def test_safetensors_unknown_dtype(tmp_path, out):
    d = copy_ckpt(tmp_path)
    header, data = read_st(d / ST)
    name, info = tensors_by_offset(header)[0]
    info["dtype"] = "Q7"
    write_st(d / ST, header, data)
    run_expect_error(d, out, 2, words=[ST], any_of=[("q7", "dtype")])


def test_safetensors_size_mismatch(tmp_path, out):
    """Offsets span fewer bytes than shape x dtype requires."""
    d = copy_ckpt(tmp_path)
    header, data = read_st(d / ST)
    name, info = tensors_by_offset(header)[0]
    info["shape"] = [info["shape"][0] + 1] + info["shape"][1:]
    write_st(d / ST, header, data)
    run_expect_error(d, out, 2, words=[ST])


# ----------------------------------------------------------------------------------------------
# Hostile pickles
# ----------------------------------------------------------------------------------------------

class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _evil_zip_bin(path: Path, cmd: str):
    payload = pickle.dumps({"embeddings.word_embeddings.weight": _Evil(cmd)}, protocol=2)
    assert b"system" in payload
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        z.writestr("archive/data/0", b"\0" * 64)


def _evil_legacy_bin(path: Path, cmd: str):
    path.write_bytes(pickle.dumps(_Evil(cmd), protocol=2))


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_hostile_pickle(tmp_path, out, layout):
    d = tmp_path / "ckpt"
    d.mkdir()
    shutil.copy(fx.checkpoint("bert") / "config.json", d / "config.json")
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}"
    (_evil_zip_bin if layout == "zip" else _evil_legacy_bin)(d / "pytorch_model.bin", cmd)
    run_expect_error(d, out, 2, words=["pytorch_model.bin"], any_of=[
        ("pickle", "global", "posix", "system", "disallow", "forbidden", "not allowed", "unsupported", "refus",
         "unknown", "unexpected", "magic")])
    assert not marker.exists(), "the pickle's os.system payload RAN"


def test_bin_is_not_a_pickle(tmp_path, out):
    d = tmp_path / "ckpt"
    d.mkdir()
    shutil.copy(fx.checkpoint("bert") / "config.json", d / "config.json")
    (d / "pytorch_model.bin").write_bytes(b"\x00garbage" * 100)
    run_expect_error(d, out, 2, words=["pytorch_model.bin"])


# ----------------------------------------------------------------------------------------------
# Tensor problems
# ----------------------------------------------------------------------------------------------

def test_wrong_shape(tmp_path, out):
    from safetensors.torch import load_file, save_file

    d = copy_ckpt(tmp_path)
    sd = load_file(str(d / ST))
    name = "encoder.layer.0.intermediate.dense.weight"
    assert tuple(sd[name].shape) == (37, 32)
    sd[name] = sd[name].t().contiguous()
    save_file(sd, str(d / ST), metadata={"format": "pt"})
    msg = run_expect_error(d, out, 2, words=["layer.0.intermediate.dense.weight"])
    assert re.search(r"37\D{1,12}32", msg) and re.search(r"32\D{1,12}37", msg), \
        f"expected and actual shapes not both in message: {msg}"


def test_missing_two_tensors(tmp_path, out):
    from safetensors.torch import load_file, save_file

    d = copy_ckpt(tmp_path)
    sd = load_file(str(d / ST))
    gone = ["encoder.layer.1.attention.self.key.bias", "encoder.layer.0.output.dense.weight"]
    for g in gone:
        del sd[g]
    save_file(sd, str(d / ST), metadata={"format": "pt"})
    run_expect_error(d, out, 2, words=["layer.1.attention.self.key.bias", "layer.0.output.dense.weight"],
                     any_of=[("missing", "not found", "absent")])


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_shard_index_path_escape(tmp_path, out, kind):
    d = copy_ckpt(tmp_path, fmt="sharded_st")
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first_shard = sorted(set(index["weight_map"].values()))[0]
    # A real shard outside the checkpoint folder, so the only problem is where it lives.
    outside = tmp_path / "evil.safetensors"
    shutil.copy(d / first_shard, outside)
    target = "../evil.safetensors" if kind == "dotdot" else str(outside)
    index["weight_map"] = {k: (target if v == first_shard else v) for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    run_expect_error(d, out, 2, any_of=[
        ("model.safetensors.index.json", "evil.safetensors"),
        ("..", "outside", "travers", "absolute", "escape", "not allowed", "invalid", "separator")])


def test_shard_missing(tmp_path, out):
    d = copy_ckpt(tmp_path, fmt="sharded_st")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (d / shard).unlink()
    run_expect_error(d, out, 2, words=[shard])


# ----------------------------------------------------------------------------------------------
# Output problems (exit 4)
# ----------------------------------------------------------------------------------------------

def test_output_under_regular_file(tmp_path, trex_bin):
    f = tmp_path / "file.txt"
    f.write_text("not a directory")
    target = f / "out.onnx"
    before = listing(tmp_path)
    r = fx.run_trex("export", "--model", fx.checkpoint("bert"), target)
    assert r.returncode == 4, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trex: error: ") and "out.onnx" in lines[0], r.stderr
    assert listing(tmp_path) == before
    assert f.read_text() == "not a directory"


def test_output_in_proc(tmp_path, trex_bin):
    target = Path("/proc/trex_out.onnx")
    r = fx.run_trex("export", "--model", fx.checkpoint("bert"), "--external-data", "always", target)
    assert r.returncode == 4, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trex: error: ") and "trex_out.onnx" in lines[0], r.stderr
    assert not target.exists() and not Path("/proc/trex_out.onnx.data").exists()


def test_output_dir_does_not_exist(tmp_path, trex_bin):
    """A missing output folder is created (issue 13); test_cli.py checks it is removed again on failure."""
    target = tmp_path / "nodir" / "out.onnx"
    r = fx.run_trex("export", "--model", fx.checkpoint("bert"), target)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert listing(tmp_path) == ["nodir"] and listing(tmp_path / "nodir") == ["out.onnx"]


def test_output_is_a_directory(tmp_path, trex_bin):
    target = tmp_path / "adir.onnx"
    target.mkdir()
    r = fx.run_trex("export", "--model", fx.checkpoint("bert"), target)
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert r.stderr.startswith("trex: error: "), r.stderr
    assert listing(target) == [] and sorted(listing(tmp_path)) == ["adir.onnx"]


def test_existing_output_is_replaced_atomically_on_success(tmp_path, trex_bin):
    """Sanity: a successful export into a dir with other files leaves exactly model.onnx added."""
    (tmp_path / "keep.txt").write_text("x")
    fx.export(fx.checkpoint("bert"), tmp_path / "model.onnx", "--no-check")
    assert listing(tmp_path) == ["keep.txt", "model.onnx"]


def test_input_error_with_external_data_leaves_nothing(tmp_path, out):
    d = copy_ckpt(tmp_path)
    raw = (d / ST).read_bytes()
    (d / ST).write_bytes(raw[: len(raw) - 100])
    run_expect_error(d, out, 2, "--external-data", "always", words=[ST])

"""Int4 accuracy measurements shared by tests/python/test_int4.py and bench/quantize_int4_bench.py.

The corpus: lines of text that other people wrote and this machine ships, in many languages — the localized
manual pages under /usr/share/man/<lang> and the translated strings of the gettext catalogs under
/usr/share/locale/<lang>/LC_MESSAGES. Deterministic for a given machine: files in sorted order, lines taken
round-robin over the languages, de-duplicated, 20..300 characters.
"""
from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np

_ROFF_FONT = re.compile(r"\\f[BIRP]|\\f\(..|\\f\[[^\]]*\]")
_ROFF_CHAR = {r"\-": "-", r"\(aq": "'", r"\(dq": '"', r"\(em": "—", r"\(en": "–", r"\ ": " ", r"\&": "",
              r"\(lq": "“", r"\(rq": "”", r"\e": "\\", r"\(bu": "•"}


def _man_text(path: Path) -> list[str]:
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError):
        return []
    out = []
    for line in text.split("\n"):
        if not line or line.startswith((".", "'", "\\\"")):
            continue
        line = _ROFF_FONT.sub("", line)
        for k, v in _ROFF_CHAR.items():
            line = line.replace(k, v)
        if "\\" in line:
            continue  # other escapes: skip the line rather than guess
        out.append(line.strip())
    return out


def _catalog_strings(path: Path) -> list[str]:
    """msgstr entries of a GNU .mo file (format: magic, revision, count, original table, translation table)."""
    data = path.read_bytes()
    if len(data) < 20:
        return []
    order = {0x950412DE: "<", 0xDE120495: ">"}.get(struct.unpack("<I", data[:4])[0])
    if order is None:
        return []
    count, _, table = struct.unpack(order + "3I", data[8:20])
    out = []
    for i in range(1, count):  # entry 0 is the catalog header
        length, offset = struct.unpack(order + "2I", data[table + 8 * i: table + 8 * i + 8])
        try:
            s = data[offset: offset + length].decode("utf-8")
        except UnicodeDecodeError:
            continue
        out.extend(part.strip() for part in s.split("\x00")[0].split("\n"))
    return out


def corpus(lines: int = 480) -> list[str]:
    pools: dict[str, list[str]] = {}
    man = Path("/usr/share/man")
    if man.is_dir():
        for d in sorted(p for p in man.iterdir() if p.is_dir() and not p.name.startswith("man")):
            for page in sorted(d.glob("man*/*.gz"))[:40]:
                pools.setdefault(d.name.split("_")[0], []).extend(_man_text(page))
    loc = Path("/usr/share/locale")
    if loc.is_dir():
        for mo in sorted(loc.glob("*/LC_MESSAGES/*.mo")):
            pools.setdefault(mo.parts[-3].split("_")[0].split("@")[0], []).extend(_catalog_strings(mo))
    seen: set[str] = set()
    kept = []
    for lang in sorted(pools):
        good = []
        for s in pools[lang]:
            if 20 <= len(s) <= 300 and s not in seen and any(c.isalpha() for c in s):
                seen.add(s)
                good.append(s)
        if good:
            kept.append(good)
    out, i = [], 0
    while len(out) < lines and any(i < len(p) for p in kept):
        for p in kept:
            if i < len(p) and len(out) < lines:
                out.append(p[i])
        i += 1
    return out


def embeddings(path: Path, tok, texts: list[str], batch: int = 32, threads: int = 2) -> np.ndarray:
    """Mean-pooled, L2-normalized sentence embeddings of last_hidden_state (sentence-transformers' recipe)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in s.get_inputs()}
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i: i + batch], padding=True, truncation=True, max_length=128, return_tensors="np")
        feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in names}
        h = s.run(["last_hidden_state"], feeds)[0]
        m = enc["attention_mask"][..., None].astype(np.float32)
        e = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        out.append(e / np.linalg.norm(e, axis=1, keepdims=True))
    return np.concatenate(out)


def ort_int4(src: Path, dst: Path, block_size: int, symmetric: bool) -> None:
    """ONNX Runtime's own int4 quantizer (MatMulNBitsQuantizer, round-to-nearest)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=block_size, is_symmetric=symmetric)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


def file_mib(path: Path) -> float:
    total = path.stat().st_size
    data = path.with_name(path.name + ".data")
    if data.exists():
        total += data.stat().st_size
    return total / 2**20


def dequantized_weights(path: Path) -> dict[str, tuple[np.ndarray, dict]]:
    """B input name -> (the K×N weight a MatMulNBits node stands for, its attributes), unpacked in numpy."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    out = {}
    for node in m.graph.node:
        if node.op_type != "MatMulNBits" or node.input[1] in out:
            continue
        attrs = {a.name: a.i for a in node.attribute}
        k, n, bs = attrs["K"], attrs["N"], attrs["block_size"]
        kb = (k + bs - 1) // bs
        b = inits[node.input[1]]
        assert b.dtype == np.uint8 and b.shape == (n, kb, bs // 2), b.shape
        codes = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(n, kb, bs).astype(np.float32)
        scales = inits[node.input[2]].reshape(n, kb).astype(np.float32)
        if len(node.input) > 3 and node.input[3]:
            zp = inits[node.input[3]].reshape(n, -1)
            zp = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)[:, :kb].astype(np.float32)
        else:
            zp = np.full((n, kb), 8, np.float32)
        w = ((codes - zp[..., None]) * scales[..., None]).reshape(n, kb * bs)[:, :k].T
        out[node.input[1]] = (w, attrs)
    return out


def weight_mse(fp32: Path, q: Path) -> float:
    """Mean squared error of every MatMulNBits weight vs its fp32 initializer (matched by name: <weight>_Q4)."""
    import onnx
    from onnx import numpy_helper

    ref = {t.name: t for t in onnx.load(str(fp32)).graph.initializer}
    se, count = 0.0, 0
    for name, (w, _) in dequantized_weights(q).items():
        base = name[:-3] if name.endswith("_Q4") else name
        if base not in ref:
            return float("nan")
        r = numpy_helper.to_array(ref[base]).astype(np.float32)
        se += float(((r - w) ** 2).sum())
        count += r.size
    return se / max(count, 1)

"""A multilingual text corpus assembled from files shipped on this machine by others (Debian's gettext
catalogs, localized man pages, package documentation, Python package metadata), for the tokenizer tests and
bench. Deterministic for a given machine: files are read in sorted order and lines taken round-robin by
language. Written to tests/fixtures/generated/<version>/tokenizers/corpus.txt (one line per text, UTF-8), or
under $TREX_TOKENIZER_CACHE."""
from __future__ import annotations

import gzip
import os
import struct
import sys
from collections import OrderedDict
from pathlib import Path

MIN_LINES = 12000
MAX_LINE_BYTES = 2000


def _mo_strings(path: Path) -> list[str]:
    """Translated strings (msgstr) of a GNU gettext .mo catalog."""
    data = path.read_bytes()
    if len(data) < 28:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if endian is None:
        return []
    _, n, _, trans_off = struct.unpack(endian + "4I", data[4:20])
    out = []
    for i in range(n):
        length, off = struct.unpack(endian + "2I", data[trans_off + 8 * i: trans_off + 8 * i + 8])
        raw = data[off: off + length]
        if i == 0 and raw.startswith(b"Project-Id") or b"Content-Type:" in raw[:400]:
            continue  # the catalog header
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        out.extend(p for s in text.split("\x00") for p in s.split("\n"))
    return out


def _man_lines(path: Path) -> list[str]:
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [l for l in text.split("\n") if l and not l.startswith((".", "'\\\"", "\\\""))]


def _text_lines(path: Path) -> list[str]:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError):
        return []


def _sources() -> "OrderedDict[str, list[str]]":
    """Groups of lines by language / source, in a fixed order."""
    groups: "OrderedDict[str, list[str]]" = OrderedDict()
    locale = Path("/usr/share/locale")
    if locale.is_dir():
        for mo in sorted(locale.glob("*/LC_MESSAGES/*.mo")):
            lang = mo.parts[-3]
            groups.setdefault("mo:" + lang, []).extend(_mo_strings(mo))
    man = Path("/usr/share/man")
    if man.is_dir():
        for d in sorted(p for p in man.iterdir() if p.is_dir() and not p.name.startswith("man")):
            for page in sorted(d.glob("man*/*.gz"))[:60]:
                groups.setdefault("man:" + d.name, []).extend(_man_lines(page))
    doc = Path("/usr/share/doc")
    if doc.is_dir():
        for f in sorted(doc.glob("*/copyright"))[:300] + sorted(doc.glob("*/README*"))[:100]:
            groups.setdefault("doc", []).extend(_text_lines(f))
    site = sorted(Path(sys.prefix).glob("lib/python3*/site-packages"))
    for sp in site[:1]:
        for f in sorted(sp.glob("*.dist-info/METADATA"))[:200]:
            groups.setdefault("pypi", []).extend(_text_lines(f))
    return groups


def build(min_lines: int = MIN_LINES) -> list[str]:
    seen: set[str] = set()
    pools = []
    for name, lines in _sources().items():
        kept = []
        for l in lines:
            l = l.rstrip("\r")
            if not l.strip() or len(l.encode()) > MAX_LINE_BYTES or l in seen:
                continue
            seen.add(l)
            kept.append(l)
        if kept:
            pools.append(kept)
    # Round-robin over the groups so that every language and source is represented.
    out, i = [], 0
    while len(out) < min_lines and any(i < len(p) for p in pools):
        for p in pools:
            if i < len(p):
                out.append(p[i])
        i += 1
    return out


def cache_dir() -> Path:
    """Where the corpus and the trained tokenizers are cached: $TREX_TOKENIZER_CACHE, else the generated
    fixtures folder."""
    if os.environ.get("TREX_TOKENIZER_CACHE"):
        return Path(os.environ["TREX_TOKENIZER_CACHE"])
    import fixtures as fx
    return fx.GENERATED / "tokenizers"


def corpus_path() -> Path:
    return cache_dir() / "corpus.txt"


def load() -> list[str]:
    """The corpus lines (built on first use)."""
    path = corpus_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = build()
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes("\n".join(lines).encode() + b"\n")
        tmp.replace(path)
    return path.read_bytes().decode().split("\n")[:-1]


if __name__ == "__main__":
    lines = build()
    import unicodedata
    scripts = {}
    for l in lines:
        for ch in l:
            if ch.isalpha():
                name = unicodedata.name(ch, "?").split(" ")[0]
                scripts[name] = scripts.get(name, 0) + 1
    print(len(lines), "lines,", sum(len(l.encode()) for l in lines), "bytes")
    print(sorted(scripts.items(), key=lambda kv: -kv[1])[:40])

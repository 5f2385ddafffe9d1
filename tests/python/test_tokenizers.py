"""`trex tokenize` against Hugging Face tokenizers: identical ids and (char) offsets on a multilingual corpus of
>= 10k lines for seven tokenizers (the real MiniLM WordPiece and six trained ones, see tokenizer_cases.py), special
tokens on and off; decoding; hostile strings; invalid UTF-8 refused with a clear error."""
from __future__ import annotations

import json
import subprocess

import pytest

import fixtures as fx
import tokenizer_cases as tc
import tokenizer_corpus


def trex_tokenize(folder, lines: list[str], *flags) -> list:
    data = "".join(l + "\n" for l in lines).encode()
    r = subprocess.run([str(fx.TREX_BIN), "tokenize", str(folder), *flags], input=data, capture_output=True,
                       timeout=600)
    assert r.returncode == 0, f"trex tokenize failed (exit {r.returncode}): {r.stderr.decode()[:2000]}"
    out = r.stdout.decode().split("\n")
    assert out[-1] == ""
    return [json.loads(l) for l in out[:-1]]


def hf_tokenizer(folder):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def compare(folder, lines, add_special=True):
    """(number of lines whose ids differ, number whose offsets / word ids / sequence ids differ, first examples)."""
    hf = hf_tokenizer(folder)
    flags = ["--offsets"] + ([] if add_special else ["--no-special-tokens"])
    got = trex_tokenize(folder, lines, *flags)
    assert len(got) == len(lines)
    id_bad, off_bad, examples = 0, 0, []
    for line, g in zip(lines, got):
        e = hf.encode(line, add_special_tokens=add_special)
        offsets = [list(o) for o in e.offsets]
        if g["ids"] != e.ids:
            id_bad += 1
            if len(examples) < 5:
                examples.append(f"ids  {line[:80]!r}\n  trex {g['tokens'][:40]}\n  hf   {e.tokens[:40]}")
        elif g["offsets"] != offsets or g["word_ids"] != e.word_ids or g["sequence_ids"] != e.sequence_ids:
            off_bad += 1
            if len(examples) < 5:
                diff = [(t, a, b) for t, a, b in zip(e.tokens, zip(g["offsets"], g["word_ids"]),
                                                     zip(offsets, e.word_ids)) if a != b][:8]
                examples.append(f"offsets/words {line[:80]!r}: (token, trex, hf) {diff}")
    return id_bad, off_bad, examples


@pytest.fixture(scope="module")
def corpus():
    lines = tokenizer_corpus.load()
    assert len(lines) >= 10000
    return lines


@pytest.mark.parametrize("name", tc.NAMES)
def test_corpus_identical_to_hf(name, corpus):
    folder = tc.folder(name)
    id_bad, off_bad, examples = compare(folder, corpus)
    assert (id_bad, off_bad) == (0, 0), (f"{name}: {id_bad} lines with other ids, {off_bad} with other offsets "
                                         f"of {len(corpus)}\n" + "\n".join(examples))


@pytest.mark.parametrize("name", tc.NAMES)
def test_without_special_tokens(name, corpus):
    folder = tc.folder(name)
    id_bad, off_bad, examples = compare(folder, corpus[:2000], add_special=False)
    assert (id_bad, off_bad) == (0, 0), "\n".join(examples)


HOSTILE = [
    "",
    " ",
    "   leading and trailing spaces   ",
    "a" * 10000,
    "word " * 2000,
    "e\u0301 a\u0300\u0316 Z\u0351\u0352\u0353\u0354\u0355\u0356\u0357 \u1e9b\u0323",  # combining marks (Zalgo)
    "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466 family \U0001F3F3\uFE0F\u200D\U0001F308 flag",
    "\U0001F1EB\U0001F1F7\U0001F1E9\U0001F1EA \U0001F44D\U0001F3FD thumbs",
    "ctrl \x00 nul \x01\x02\x1b[31mred\x1b[0m \x7f del \x85 nel",
    "tabs\tand\rcarriage\x0bvertical\x0cfeed",
    "line\u2028separator\u2029paragraph",
    "\ufeffBOM at start, zero\u200bwidth\u200cjoiners\u200d",
    "العربية والعبرية עברית mixed RTL",
    "日本語のテキストと中文文本와 한국어",
    "[CLS] [SEP] <s> </s> <unk> <mask> [MASK] special-looking text",
    "<s>glued</s>text<mask>and [UNK]x",
    "<0x41> <0xFF> byte-token names",
    "İstanbul ΣΊΣΥΦΟΣ ǅ ß ﬁ ℌ ① ＡＢＣ",
    "isn't it's we're I'll you've I'd they'm   double  spaces\n",
    "\ud7ff\ue000\uffff \U0010FFFD private \u0378 \U00031350 unassigned \u00ad\u0600 format",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math alphanumerics 𝟘𝟙𝟚",
    "123 4567 ١٢٣ ৪৫৬ 3.14 1,000,000",
    "x\u0301y a\u0301y e\u0323\u0301 \u1e9b\u0323 q\u05b4\u05b0 \u09dfz \u09af\u09bc\u09be \uac00\u11a8 \u1100\u1161",  # reordering, composition
]


@pytest.mark.parametrize("name", tc.NAMES)
def test_hostile_strings(name):
    folder = tc.folder(name)
    lines = [h.replace("\n", " ") for h in HOSTILE]
    id_bad, off_bad, examples = compare(folder, lines)
    assert (id_bad, off_bad) == (0, 0), "\n".join(examples)


def test_lines_split_on_newline_only(trex_bin):
    folder = tc.folder("bytelevel-bpe")
    r = subprocess.run([str(trex_bin), "tokenize", str(folder)], input="a\rb\u2028c\nd".encode(),
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.decode().splitlines()) == 2
    hf = hf_tokenizer(folder)
    assert [json.loads(l) for l in r.stdout.decode().split("\n")[:-1]] == [hf.encode("a\rb\u2028c").ids,
                                                                          hf.encode("d").ids]


@pytest.mark.parametrize("bad", [b"ok\n\xff\xfe\n", b"\xc3\x28\n", b"\xed\xa0\x80 surrogate\n", b"\xf0\x9f\x98\n"])
def test_invalid_utf8_is_a_clear_error(trex_bin, bad):
    folder = tc.folder("bytelevel-bpe")
    r = subprocess.run([str(trex_bin), "tokenize", str(folder)], input=bad, capture_output=True, timeout=60)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert err.startswith("trex: error: stdin line ") and "not valid UTF-8" in err, err
    assert len(err.strip().splitlines()) == 1


def test_unknown_component_is_named(trex_bin, tmp_path):
    j = json.loads((tc.folder("bytelevel-bpe") / "tokenizer.json").read_text())
    j["pre_tokenizer"] = {"type": "FancyNewSplitter"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(j))
    r = subprocess.run([str(trex_bin), "tokenize", str(tmp_path)], input=b"x\n", capture_output=True, timeout=60)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "tokenizer.json" in err and "FancyNewSplitter" in err, err


def test_missing_tokenizer_json(trex_bin, tmp_path):
    r = subprocess.run([str(trex_bin), "tokenize", str(tmp_path)], input=b"x\n", capture_output=True, timeout=60)
    assert r.returncode == 2 and "tokenizer.json" in r.stderr.decode()


@pytest.mark.parametrize("name", tc.NAMES)
def test_decode_identical_to_hf(name, corpus):
    folder = tc.folder(name)
    hf = hf_tokenizer(folder)
    hf.no_padding()
    lines = corpus[:1500] + [h.replace("\n", " ") for h in HOSTILE]
    ids = [e.ids for e in hf.encode_batch(lines)]
    data = "".join(json.dumps(i) + "\n" for i in ids).encode()
    for keep in (False, True):
        flags = ["--decode"] + (["--keep-special-tokens"] if keep else [])
        r = subprocess.run([str(fx.TREX_BIN), "tokenize", str(folder), *flags], input=data, capture_output=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr.decode()
        got = [json.loads(l) for l in r.stdout.decode().split("\n")[:-1]]
        want = hf.decode_batch(ids, skip_special_tokens=not keep)
        bad = [(w, g) for w, g in zip(want, got) if w != g]
        assert len(got) == len(want) and not bad, f"{len(bad)} differ, e.g. {bad[:3]}"


def test_decode_invalid_utf8_bytes_like_hf():
    """Random runs of byte tokens (what a generating model emits mid-character): the invalid UTF-8 they make is
    replaced as the reference's from_utf8_lossy does (one U+FFFD per maximal invalid subpart)."""
    import random
    from tokenizers.pre_tokenizers import ByteLevel
    folder = tc.folder("bytelevel-bpe")
    hf = hf_tokenizer(folder)
    byte_ids = [hf.token_to_id(ch) for ch in ByteLevel.alphabet()]
    assert None not in byte_ids
    rng = random.Random(0)
    cases = [[rng.choice(byte_ids) for _ in range(rng.randint(1, 12))] for _ in range(3000)]
    data = "".join(json.dumps(c) + "\n" for c in cases).encode()
    r = subprocess.run([str(fx.TREX_BIN), "tokenize", str(folder), "--decode"], input=data, capture_output=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    got = [json.loads(l) for l in r.stdout.decode().split("\n")[:-1]]
    want = hf.decode_batch(cases)
    bad = [(c, w, g) for c, w, g in zip(cases, want, got) if w != g]
    assert len(got) == len(want) and not bad, f"{len(bad)} differ, e.g. {bad[:3]}"
    assert sum("\ufffd" in w for w in want) > 1000  # the cases do hold invalid sequences


@pytest.mark.parametrize("name", tc.NAMES)
def test_pairs_identical_to_hf(name, corpus):
    """Sequence pairs (consecutive corpus lines, long ones too, so truncation shares the budget): ids, type ids,
    offsets."""
    folder = tc.folder(name)
    hf = hf_tokenizer(folder)
    pairs = [(corpus[i], corpus[i + 1]) for i in range(0, 1600, 2)] + [(corpus[0] * 20, corpus[1]),
                                                                         (corpus[2], corpus[3] * 30), ("", "x")]
    data = "".join(json.dumps(p) + "\n" for p in pairs).encode()
    for add in (True, False):
        flags = ["--pairs", "--offsets"] + ([] if add else ["--no-special-tokens"])
        r = subprocess.run([str(fx.TREX_BIN), "tokenize", str(folder), *flags], input=data, capture_output=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr.decode()
        got = [json.loads(l) for l in r.stdout.decode().split("\n")[:-1]]
        bad = []
        for (a, b), g in zip(pairs, got):
            e = hf.encode(a, b, add_special_tokens=add)
            if ((g["ids"], g["type_ids"], g["offsets"], g["word_ids"], g["sequence_ids"]) !=
                    (e.ids, e.type_ids, [list(o) for o in e.offsets], e.word_ids, e.sequence_ids)):
                bad.append((a[:60], b[:60], g["tokens"][:20], e.tokens[:20]))
        assert len(got) == len(pairs) and not bad, f"{len(bad)} pairs differ, e.g. {bad[:2]}"


@pytest.mark.parametrize("name", tc.NAMES)
def test_windows_identical_to_hf_overflow(name, corpus):
    """--windows MAX,STRIDE (question + long context) == HF truncation only_second + stride: the encoding and its
    overflowing encodings."""
    folder = tc.folder(name)
    hf = hf_tokenizer(folder)
    max_length, stride = 64, 8
    hf.enable_truncation(max_length=max_length, stride=stride, strategy="only_second")
    pairs = [(corpus[i][:12], " ".join(corpus[i + 1: i + 12])) for i in range(0, 600, 12)]
    data = "".join(json.dumps(p) + "\n" for p in pairs).encode()
    r = subprocess.run([str(fx.TREX_BIN), "tokenize", str(folder), "--pairs", f"--windows={max_length},{stride}"],
                       input=data, capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    got = [json.loads(l) for l in r.stdout.decode().split("\n")[:-1]]
    assert len(got) == len(pairs)
    bad, n_windows = [], 0
    for (q, c), windows in zip(pairs, got):
        e = hf.encode(q, c)
        want = [e] + list(e.overflowing)
        n_windows += len(want)
        fields = lambda w: (w.ids, w.type_ids, [list(o) for o in w.offsets], w.word_ids, w.sequence_ids)
        mine = [(w["ids"], w["type_ids"], w["offsets"], w["word_ids"], w["sequence_ids"]) for w in windows]
        if mine != [fields(w) for w in want]:
            bad.append((q, len(windows), len(want)))
    # Overflow happened (whole-word tokens give fewer windows than subwords).
    assert n_windows > (1.5 if name == "wordlevel" else 2) * len(pairs)
    assert not bad, f"{len(bad)} of {len(pairs)} differ, e.g. {bad[:3]}"


@pytest.mark.parametrize("blob", [b"\x01\x02", b"\xff\xff\xff\x7f" + b"\x00" * 16, b"\x06\x00\x00\x00" + b"\x00" * 16,
                                  b"\x08\x00\x00\x00" + b"\xff" * 8 + b"\xc3\x28"])
def test_hostile_precompiled_charsmap(trex_bin, tmp_path, blob):
    """A charsmap whose header, trie size or replacement pool is wrong is refused with the file named."""
    import base64
    j = json.loads((tc.folder("t5-spm") / "tokenizer.json").read_text())
    pre = [n for n in j["normalizer"]["normalizers"] if n["type"] == "Precompiled"]
    assert pre
    pre[0]["precompiled_charsmap"] = base64.b64encode(blob).decode()
    (tmp_path / "tokenizer.json").write_text(json.dumps(j))
    r = subprocess.run([str(trex_bin), "tokenize", str(tmp_path)], input=b"x\n", capture_output=True, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 2 and "tokenizer.json" in err and "Precompiled" in err, err
    assert len(err.strip().splitlines()) == 1


def test_precompiled_trie_indices_bounded(trex_bin, tmp_path):
    """A trie whose units point outside the array or the pool: no crash, text left as the rule-less reference
    would read it (no match)."""
    import base64
    import struct
    units = [struct.pack("<I", (0xFFFFF << 10) | 0x100 | ord("a"))] * 4  # huge offsets, leaf flags, label 'a'
    blob = struct.pack("<I", 16) + b"".join(units) + b"x\x00"
    j = json.loads((tc.folder("t5-spm") / "tokenizer.json").read_text())
    for n in j["normalizer"]["normalizers"]:
        if n["type"] == "Precompiled":
            n["precompiled_charsmap"] = base64.b64encode(blob).decode()
    (tmp_path / "tokenizer.json").write_text(json.dumps(j))
    r = subprocess.run([str(trex_bin), "tokenize", str(tmp_path)], input=b"aaa abc\n\xc3\xa9a\n", capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert len(r.stdout.decode().splitlines()) == 2

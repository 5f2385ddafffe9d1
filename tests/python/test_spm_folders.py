"""Folders with SentencePiece model files and no tokenizer.json (read through libsentencepiece): `trex tokenize`
ids equal to transformers' slow tokenizers (T5Tokenizer on spiece.model; MarianTokenizer on source.spm +
target.spm + vocab.json; LlamaTokenizer on tokenizer.model, byte-fallback BPE) on the corpus, decoding equal to theirs, and corrupt / missing files refused with the
file named. The .model files are trained here with the `sentencepiece` package (tokenizer_cases.spm_model)."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

import fixtures as fx
import tokenizer_cases as tc
import tokenizer_corpus
from test_tokenizers import HOSTILE


def run_trex(folder, data: bytes, *flags):
    r = subprocess.run([str(fx.TREX_BIN), "tokenize", str(folder), *flags], input=data, capture_output=True,
                       timeout=600)
    assert r.returncode == 0, f"trex tokenize failed (exit {r.returncode}): {r.stderr.decode()[:2000]}"
    return [json.loads(l) for l in r.stdout.decode().split("\n")[:-1]]


def marian_vocab(*models) -> dict:
    """A vocab.json as Marian checkpoints carry one (joint, over the source and target models' pieces): </s> 0,
    <unk> 1, the pieces in another order than the models' (so spm ids would be wrong), a few pieces left out (they
    must map to <unk>), <pad> last."""
    import sentencepiece as spm
    pieces = set()
    for model in models:
        sp = spm.SentencePieceProcessor(model_file=str(model))
        pieces |= {sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_control(i) and not sp.is_unknown(i)}
    pieces = sorted(pieces, key=lambda p: (len(p), p))
    dropped = set(pieces[40:3000:97])
    vocab = {"</s>": 0, "<unk>": 1}
    for p in pieces:
        if p not in dropped:
            vocab.setdefault(p, len(vocab))
    vocab[">>fra<<"] = len(vocab)  # a target-language code, as multilingual Marian vocabularies have
    vocab["<pad>"] = len(vocab)
    return vocab


def marian_folder(path):
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(tc.spm_model(), path / "source.spm")
    shutil.copy(tc.spm_model("bpe"), path / "target.spm")
    (path / "vocab.json").write_text(json.dumps(marian_vocab(tc.spm_model(), tc.spm_model("bpe")), ensure_ascii=False))
    return path


def t5_folder(path):
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(tc.spm_model(), path / "spiece.model")
    return path


def llama_folder(path):
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(tc.spm_model("llama"), path / "tokenizer.model")
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    return {"t5": t5_folder(root / "t5"), "marian": marian_folder(root / "marian"),
            "llama": llama_folder(root / "llama")}


def slow_tokenizer(kind, folder):
    from transformers import LlamaTokenizer, MarianTokenizer, T5Tokenizer
    if kind == "t5":
        return T5Tokenizer(vocab_file=str(folder / "spiece.model"))
    if kind == "llama":
        return LlamaTokenizer(vocab_file=str(folder / "tokenizer.model"), legacy=True)
    return MarianTokenizer(source_spm=str(folder / "source.spm"), target_spm=str(folder / "target.spm"),
                           vocab=str(folder / "vocab.json"))


@pytest.fixture(scope="module")
def lines():
    corpus = tokenizer_corpus.load()
    assert len(corpus) >= 10000
    return corpus + [h.replace("\n", " ") for h in HOSTILE] + [
        ">>fra<< Hello world", ">>deu<< a >>x<< b << c", "text >>fra<< after", ">><< >>a<<", "<s>>>fra<</s>x",
        "a </s> b<unk>c <pad>", "<extra_id_0> x <extra_id_99>", "<s>x</s> <s> y"]


@pytest.mark.parametrize("kind", ["t5", "marian", "llama"])
def test_ids_identical_to_slow_tokenizer(kind, folders, lines):
    folder = folders[kind]
    hf = slow_tokenizer(kind, folder)
    got = run_trex(folder, "".join(l + "\n" for l in lines).encode())
    want = hf(lines)["input_ids"]
    assert len(got) == len(want)
    bad = [(l[:80], g[:20], w[:20]) for l, g, w in zip(lines, got, want) if g != w]
    assert not bad, f"{kind}: {len(bad)} of {len(lines)} lines differ, e.g. {bad[:3]}"
    if kind == "marian":  # the vocab.json ids, unknown pieces to <unk>, were exercised
        assert sum(1 in w for w in want) > 100


@pytest.mark.parametrize("kind", ["t5", "marian", "llama"])
def test_decode_identical_to_slow_tokenizer(kind, folders, lines):
    folder = folders[kind]
    hf = slow_tokenizer(kind, folder)
    sample = lines[:1500] + lines[-len(HOSTILE) - 8:]
    ids = hf(sample)["input_ids"]
    data = "".join(json.dumps(i) + "\n" for i in ids).encode()
    for keep in (False, True):
        got = run_trex(folder, data, "--decode", *(["--keep-special-tokens"] if keep else []))
        want = [hf.decode(i, skip_special_tokens=not keep, clean_up_tokenization_spaces=False) for i in ids]
        bad = [(w, g) for w, g in zip(want, got) if w != g]
        assert len(got) == len(want) and not bad, f"{kind} keep={keep}: {len(bad)} differ, e.g. {bad[:3]}"
    if kind == "t5":  # a round trip: text -> ids -> text gives the model's normalized text back
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
        got = run_trex(folder, data, "--decode")
        assert sum(g == sp.decode(sp.encode(t)) for g, t in zip(got, sample)) > 0.95 * len(sample)


@pytest.mark.parametrize("kind", ["t5", "marian"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_model_is_a_clear_error(kind, damage, folders, tmp_path):
    folder = tmp_path / kind
    shutil.copytree(folders[kind], folder)
    name = "spiece.model" if kind == "t5" else "source.spm"
    data = (folder / name).read_bytes()
    (folder / name).write_bytes({"garbage": b"\xff\xfe not a model" * 50, "truncated": data[: len(data) // 3],
                                 "empty": b""}[damage])
    r = subprocess.run([str(fx.TREX_BIN), "tokenize", str(folder)], input=b"x\n", capture_output=True, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 2 and name in err and "SentencePiece" in err, err
    assert len(err.strip().splitlines()) == 1 and r.stdout == b""


def test_marian_missing_vocab_is_named(folders, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(folders["marian"], folder)
    (folder / "vocab.json").unlink()
    r = subprocess.run([str(fx.TREX_BIN), "tokenize", str(folder)], input=b"x\n", capture_output=True, timeout=60)
    assert r.returncode == 2 and "vocab.json" in r.stderr.decode(), r.stderr.decode()


def test_model_symlink_outside_folder_refused(folders, tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    outside = tmp_path / "elsewhere.model"
    shutil.copy(folders["t5"] / "spiece.model", outside)
    (folder / "spiece.model").symlink_to(outside)
    r = subprocess.run([str(fx.TREX_BIN), "tokenize", str(folder)], input=b"x\n", capture_output=True, timeout=60)
    assert r.returncode == 2 and "spiece.model" in r.stderr.decode(), r.stderr.decode()


# ------------------------------------------------------------------------------------------------------------
# trex run --pipeline translation on a Marian folder with only source.spm / target.spm / vocab.json
# ------------------------------------------------------------------------------------------------------------

SOURCES = [">>fra<< The quick brown fox jumps over the lazy dog.", "Datei konnte nicht geöffnet werden",
           "Impossible d'ouvrir le fichier « %s »", "x"]


def _marian_spm_checkpoint(out):
    """A random tiny MarianMTModel (seq2seq_fixtures' marian recipe) sized to a trained SentencePiece vocab, saved
    with MarianTokenizer.save_pretrained: no tokenizer.json."""
    import torch
    import transformers as tf
    import seq2seq_fixtures as sfx
    marian_folder(out)
    vocab = json.loads((out / "vocab.json").read_text())
    tok = tf.MarianTokenizer(source_spm=str(out / "source.spm"), target_spm=str(out / "target.spm"),
                             vocab=str(out / "vocab.json"))
    kw = dict(sfx.SEQ2SEQ_CASES["marian"][2], vocab_size=len(vocab), decoder_vocab_size=len(vocab),
              pad_token_id=vocab["<pad>"], eos_token_id=vocab["</s>"], decoder_start_token_id=vocab["<pad>"],
              bos_token_id=None)
    torch.manual_seed(0)
    model = tf.MarianMTModel(tf.MarianConfig(**kw))
    gen = torch.Generator().manual_seed(4242)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" not in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        model.final_logits_bias.add_(0.5 * torch.randn(model.final_logits_bias.shape, generator=gen))
    model.eval().save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    assert not (out / "tokenizer.json").exists()


@pytest.mark.parametrize("beams", [1, 3])
def test_run_translation_on_spm_marian_folder(beams, tmp_path_factory):
    import torch
    import transformers as tf
    ckpt = fx._materialize(f"seq2seq1-marian-spm-v{tc.VERSION}.2", _marian_spm_checkpoint)
    out = tmp_path_factory.getbasetemp() / "marian-spm-export"
    if not (out / "config.json").exists():
        fx.export(ckpt, out)
    assert {"source.spm", "target.spm", "vocab.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "tokenizer.json").exists()
    args = [str(fx.TREX_BIN), "run", str(out), "--pipeline", "translation", "--max-new-tokens", "12",
            "--num-beams", str(beams), "--repetition-penalty", "1.3", "--json", *SOURCES]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = [json.loads(l) for l in r.stdout.splitlines()]
    torch.set_num_threads(1)
    model = tf.AutoModelForSeq2SeqLM.from_pretrained(ckpt, attn_implementation="eager",
                                                     torch_dtype=torch.float32).eval()
    tok = tf.AutoTokenizer.from_pretrained(ckpt)
    assert type(tok).__name__ == "MarianTokenizer"
    p = tf.pipeline("translation", model=model, tokenizer=tok, device="cpu")
    want = [p(s, max_new_tokens=12, num_beams=beams, repetition_penalty=1.3) for s in SOURCES]
    assert got == want
    assert sum(len(a[0]["translation_text"]) > 5 for a in want) >= 3  # real text, not empty answers

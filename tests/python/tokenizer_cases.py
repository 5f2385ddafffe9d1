"""Tokenizers for the tokenizer tests and bench: the real all-MiniLM-L6-v2 WordPiece tokenizer, and byte-level
BPE, Unigram/Metaspace and byte-fallback BPE tokenizers trained here with the `tokenizers` package on every
other line of the corpus, and the tokenizer.json that transformers' converters make (T5, XLM-R, ALBERT) from a
SentencePiece model trained here (Precompiled normalizer). Each is a folder with tokenizer.json, cached under the generated fixtures."""
from __future__ import annotations

import json
from pathlib import Path

import fixtures as fx
import tokenizer_corpus

NAMES = ["minilm-wordpiece", "bytelevel-bpe", "unigram-metaspace", "bytefallback-bpe", "split-regex-bpe",
         "whitespace-wordpiece", "wordlevel", "t5-spm", "xlmr-spm", "albert-spm"]
VERSION = "1"  # bump when a recipe changes


def _train_lines():
    return tokenizer_corpus.load()[::2]


def _byte_level_bpe(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_train_lines(), trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")), trim_offsets=True,
                                                      add_prefix_space=True)
    tok.save(str(path))
    # Merges in the older list-of-strings form ("a b"), which many checkpoints on the Hub still use.
    j = json.loads(path.read_text())
    j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    # <mask> as RoBERTa has it: lstrip.
    for t in j["added_tokens"]:
        if t["content"] == "<mask>":
            t["lstrip"] = True
    path.write_text(json.dumps(j, ensure_ascii=False))


def _unigram_metaspace(path: Path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("``", '"')])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(prepend_scheme="always")])
    tok.decoder = decoders.Metaspace(prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=3000, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(_train_lines(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    tok.save(str(path))


def _byte_fallback_bpe(path: Path):
    """Llama-style: SentencePiece-like BPE with byte fallback, '▁' for spaces, no pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    # A small alphabet, so that rarer characters fall back to bytes.
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=300,
                                  show_progress=False)
    tok.train_from_iterator([l[:200] for l in _train_lines()], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(str(path))
    j = json.loads(path.read_text())
    vocab = j["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    path.write_text(json.dumps(j, ensure_ascii=False))


# The pre-tokenizer pattern of GPT-4-era tokenizers (cl100k), as Llama 3 / Qwen tokenizer.json files carry it.
CL100K = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
          r"\s+(?!\S)|\s+")


def _split_regex_bpe(path: Path):
    """Split(Regex) + ByteLevel without its own regex: the Llama 3 / Qwen layout."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CL100K), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_train_lines(), trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    tok.save(str(path))


def _whitespace_wordpiece(path: Path):
    """Components the other cases leave out: NFD + Lowercase + StripAccents + Strip, Whitespace, Punctuation,
    Digits, BertProcessing."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=40))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents(),
                                           normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Punctuation(behavior="isolated"),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=3000, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"],
                                        show_progress=False)
    tok.train_from_iterator(_train_lines(), trainer)
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    tok.save(str(path))


def _wordlevel(path: Path):
    """WordLevel (whole words, unknown ones to [UNK]) behind Lowercase + Whitespace, as the generation fixtures'
    tokenizers are; TemplateProcessing adds [CLS]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=3000, special_tokens=["[UNK]", "[CLS]", "[PAD]"],
                                        show_progress=False)
    tok.train_from_iterator(_train_lines(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A", pair="[CLS] $A $B:1",
                                                       special_tokens=[("[CLS]", tok.token_to_id("[CLS]"))])
    tok.save(str(path))


def spm_model(kind: str = "unigram") -> Path:
    """A SentencePiece model trained here with the `sentencepiece` package on every other corpus line (default
    nmt_nfkc normalization rule, so its tokenizer.json carries a Precompiled normalizer); cached."""
    d = tokenizer_corpus.cache_dir() / f"spm-{kind}-v{VERSION}"
    model = d / "spm.model"
    if not model.exists():
        import sentencepiece as spm
        d.mkdir(parents=True, exist_ok=True)
        text = d / "train.txt"
        text.write_text("".join(l + "\n" for l in _train_lines()), encoding="utf-8")
        # T5 / Marian ids (pad 0, eos 1, unk 2, no bos), or Llama's (unk 0, bos 1, eos 2, byte fallback).
        ids = (dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True) if kind == "llama" else
               dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(d / "tmp"), vocab_size=3000,
                                       model_type="bpe" if kind == "llama" else kind, character_coverage=0.9995,
                                       num_threads=1, minloglevel=2, input_sentence_size=0, **ids)
        (d / "tmp.vocab").unlink()
        (d / "tmp.model").replace(model)
    return model


def _from_spm(cls_name: str):
    def make(path: Path):
        import shutil
        import transformers
        cls = getattr(transformers, cls_name)
        src = path.parent / "spiece.model"
        shutil.copy(spm_model(), src)
        tok = cls(vocab_file=str(src))
        tok.backend_tokenizer.save(str(path))
        src.unlink()
    return make


def folder(name: str) -> Path:
    """Folder holding tokenizer.json for the named case (trained on first use)."""
    if name == "minilm-wordpiece":
        return fx.minilm_dir()
    d = tokenizer_corpus.cache_dir() / f"{name}-v{VERSION}"
    path = d / "tokenizer.json"
    if not path.exists():
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "tokenizer.json.tmp"
        {"bytelevel-bpe": _byte_level_bpe, "unigram-metaspace": _unigram_metaspace,
         "bytefallback-bpe": _byte_fallback_bpe, "split-regex-bpe": _split_regex_bpe,
         "whitespace-wordpiece": _whitespace_wordpiece, "wordlevel": _wordlevel,
         "t5-spm": _from_spm("T5TokenizerFast"), "xlmr-spm": _from_spm("XLMRobertaTokenizerFast"),
         "albert-spm": _from_spm("AlbertTokenizerFast")}[name](tmp)
        tmp.replace(path)
    return d

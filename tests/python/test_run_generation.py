"""`trex run --json` for the generation pipelines against transformers' pipeline() on the same checkpoints
(random tiny models transformers created, eager attention, fp32): text-generation (gpt2 and llama-family, a batch
of prompts of different lengths, which trex runs together left-padded while the reference runs them one by one),
translation / summarization (greedy and beam search), repetition penalty, max_new_tokens, eos stops, sampling
(top_k=1 is greedy, a seed repeats, temperature / top-p only pick tokens the reference's warpers keep) and
streaming (--stream prints the final answer's text)."""
from __future__ import annotations

import functools
import json
import shutil
import subprocess

import pytest

import decoder_fixtures as dfx
import fixtures as fx
import seq2seq_fixtures as sfx

PROMPTS = ["w5 w6 w7", "w9 w10 w11 w12 w40 w41 w17 w3", "w20", "w33 w34 w35 w36 w37"]
SOURCES = ["w5 w6 w7 w8 w9", "w9 w10 w11 w12 w40 w3 w3 w61 w2", "w20 w21"]


def _bytelevel_llama() -> "Path":
    """A tiny random Llama with a byte-level BPE tokenizer that adds <s> (bench/_llama_checkpoint.py): a random
    model emits byte tokens that split characters, which decoding and streaming must handle as the reference."""
    import sys
    sys.path.insert(0, str(fx.REPO / "bench"))
    import _llama_checkpoint as lc
    return fx._materialize("rungen-bytelevel-llama-v1", lambda d: lc.make_tiny_llama(d))


@functools.lru_cache(maxsize=None)
def _exported(kind: str, name: str, root: str, optimize: bool = False):
    from pathlib import Path
    if kind == "bytelevel":
        ckpt = _bytelevel_llama()
    else:
        ckpt = dfx.decoder_checkpoint(name) if kind == "decoder" else sfx.seq2seq_checkpoint(name)
    out = Path(root) / f"{kind}-{name}{'-optimized' if optimize else ''}"
    fx.export(ckpt, out, *(["--optimize"] if optimize else []))
    return ckpt, out


@pytest.fixture(scope="module")
def export_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("rungen"))


def trex_run(folder, inputs, *flags, json_out=True):
    args = [str(fx.TREX_BIN), "run", str(folder), *map(str, flags)] + (["--json"] if json_out else [])
    r = subprocess.run(args + list(inputs), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"trex run failed (exit {r.returncode}): {r.stderr}"
    if not json_out:
        return r.stdout
    lines = r.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == len(inputs) + 1, r.stdout
    return [json.loads(l) for l in lines[:-1]]


@functools.lru_cache(maxsize=None)
def _reference_pipeline(task: str, ckpt: str, seq2seq: bool):
    import torch
    import transformers as tf

    torch.set_num_threads(1)
    cls = tf.AutoModelForSeq2SeqLM if seq2seq else tf.AutoModelForCausalLM
    model = cls.from_pretrained(ckpt, attn_implementation="eager", torch_dtype=torch.float32).eval()
    tok = tf.AutoTokenizer.from_pretrained(ckpt)
    return tf.pipeline(task, model=model, tokenizer=tok, device="cpu")


def reference(task, ckpt, inputs, seq2seq=False, **kw):
    """pipeline(task)(text, **kw) for each input on its own: one list of answers per input."""
    p = _reference_pipeline(task, str(ckpt), seq2seq)
    out = []
    for text in inputs:
        a = p(text, **kw)
        out.append(a if isinstance(a, list) else [a])
    return out


def n_words(text: str) -> int:
    return len(text.split())


# ------------------------------------------------------------------------------------------------------------
# text-generation
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "mistral"])
def test_text_generation_greedy_batch(name, export_root):
    ckpt, folder = _exported("decoder", name, export_root)
    got = trex_run(folder, PROMPTS, "--max-new-tokens", 12, "--batch-size", 4)
    want = reference("text-generation", ckpt, PROMPTS, do_sample=False, max_new_tokens=12)
    assert got == want
    # At most max_new_tokens words (fewer when the fixture's eos came, and it is not printed), exactly that many
    # for some prompt.
    added = [n_words(g[0]["generated_text"]) - n_words(p) for p, g in zip(PROMPTS, got)]
    assert max(added) == 12 and min(added) >= 0


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_text_generation_beam_search(name, export_root):
    """Decoder-only beam search over a left-padded batch (each prompt its own beams and length limit)."""
    ckpt, folder = _exported("decoder", name, export_root)
    got = trex_run(folder, PROMPTS, "--max-new-tokens", 8, "--num-beams", 3, "--length-penalty", 0.7,
                   "--repetition-penalty", 1.2)
    want = reference("text-generation", ckpt, PROMPTS, do_sample=False, max_new_tokens=8, num_beams=3,
                     length_penalty=0.7, repetition_penalty=1.2)
    assert got == want
    greedy = trex_run(folder, PROMPTS, "--max-new-tokens", 8, "--repetition-penalty", 1.2)
    assert got != greedy  # the beams found other continuations somewhere


def test_text_generation_new_text_only(export_root):
    ckpt, folder = _exported("decoder", "llama", export_root)
    got = trex_run(folder, PROMPTS, "--max-new-tokens", 6, "--new-text-only")
    want = reference("text-generation", ckpt, PROMPTS, do_sample=False, max_new_tokens=6, return_full_text=False)
    assert got == want
    assert not any(g[0]["generated_text"].startswith(p) for p, g in zip(PROMPTS, got))


def test_task_specific_params(export_root, tmp_path):
    """config.json's task_specific_params for the task: its prefix goes before each source, its generation keys
    (here num_beams, length_penalty) apply, as the reference pipeline applies them."""
    import transformers as tf
    ckpt, folder = _exported("seq2seq", "t5", export_root)
    params = {"translation_en_to_de": {"prefix": "w7 w8 ", "num_beams": 2, "length_penalty": 0.5}}
    copy = tmp_path / "t5-tsp"
    shutil.copytree(folder, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["task_specific_params"] = params
    (copy / "config.json").write_text(json.dumps(cfg))
    got = trex_run(copy, SOURCES, "--pipeline", "translation_en_to_de", "--max-new-tokens", 8,
                   "--repetition-penalty", 1.3)
    base = _reference_pipeline("translation_en_to_de", str(ckpt), True)
    model = sfx.reference_model(ckpt)
    model.config.task_specific_params = params
    p = tf.pipeline("translation_en_to_de", model=model, tokenizer=base.tokenizer, device="cpu")
    want = [p(s, max_new_tokens=8, repetition_penalty=1.3) for s in SOURCES]
    assert got == want
    plain = trex_run(folder, SOURCES, "--pipeline", "translation_en_to_de", "--max-new-tokens", 8,
                     "--repetition-penalty", 1.3)
    assert got != plain


@pytest.mark.parametrize("kind,name,task,size,beams", [("decoder", "gpt2", "text-generation", 2, 1),
                                                       ("decoder", "llama", "text-generation", 1, 2),
                                                       ("seq2seq", "bart", "summarization", 3, 4)])
def test_no_repeat_ngram_size(kind, name, task, size, beams, export_root):
    ckpt, folder = _exported(kind, name, export_root)
    inputs = PROMPTS if kind == "decoder" else SOURCES
    got = trex_run(folder, inputs, "--pipeline", task, "--max-new-tokens", 10, "--no-repeat-ngram-size", size,
                   "--num-beams", beams)
    kw = dict(do_sample=False) if kind == "decoder" else {}
    want = reference(task, ckpt, inputs, seq2seq=kind == "seq2seq", max_new_tokens=10, no_repeat_ngram_size=size,
                     num_beams=beams, **kw)
    assert got == want
    plain = trex_run(folder, inputs, "--pipeline", task, "--max-new-tokens", 10, "--num-beams", beams)
    assert got != plain


def test_text_generation_repetition_penalty(export_root):
    ckpt, folder = _exported("decoder", "gpt2", export_root)
    got = trex_run(folder, PROMPTS, "--max-new-tokens", 10, "--repetition-penalty", 1.6)
    want = reference("text-generation", ckpt, PROMPTS, do_sample=False, max_new_tokens=10, repetition_penalty=1.6)
    assert got == want
    plain = trex_run(folder, PROMPTS, "--max-new-tokens", 10)
    assert got != plain  # the penalty changed something (gpt2's fixture repeats itself greedily)


def test_text_generation_stops_at_eos(export_root, tmp_path):
    """eos_token_id as a list in generation_config.json, one of them a token greedy decoding reaches."""
    ckpt, folder = _exported("decoder", "llama", export_root)
    free = trex_run(folder, PROMPTS[:2], "--max-new-tokens", 10)
    # The 4th new word of the first prompt becomes an eos token.
    stop_word = free[0][0]["generated_text"].split()[n_words(PROMPTS[0]) + 3]
    stop_id = int(stop_word[1:])
    copy = tmp_path / "llama-eos"
    shutil.copytree(folder, copy)
    gen = json.loads((copy / "generation_config.json").read_text())
    gen["eos_token_id"] = [2, stop_id]
    (copy / "generation_config.json").write_text(json.dumps(gen))
    got = trex_run(copy, PROMPTS[:2], "--max-new-tokens", 10)
    want = reference("text-generation", ckpt, PROMPTS[:2], do_sample=False, max_new_tokens=10, eos_token_id=[2, stop_id])
    assert got == want
    # Stopped on the first occurrence of that word (a plain word, so the decoded text keeps it).
    new_words = free[0][0]["generated_text"].split()[n_words(PROMPTS[0]):]
    assert n_words(got[0][0]["generated_text"]) == n_words(PROMPTS[0]) + new_words.index(stop_word) + 1


def test_min_new_tokens_holds_eos_back(export_root):
    """qwen2's fixture reaches its eos within 12 tokens for some prompt; min_new_tokens keeps it from stopping."""
    ckpt, folder = _exported("decoder", "qwen2", export_root)
    free = trex_run(folder, PROMPTS, "--max-new-tokens", 12)
    assert any(n_words(g[0]["generated_text"]) < n_words(p) + 12 for p, g in zip(PROMPTS, free))
    got = trex_run(folder, PROMPTS, "--max-new-tokens", 12, "--min-new-tokens", 12)
    want = reference("text-generation", ckpt, PROMPTS, do_sample=False, max_new_tokens=12, min_new_tokens=12)
    assert got == want
    assert all(n_words(g[0]["generated_text"]) == n_words(p) + 12 for p, g in zip(PROMPTS, got))


def test_sampling_top_k_1_is_greedy_and_seeded(export_root):
    ckpt, folder = _exported("decoder", "llama", export_root)
    greedy = trex_run(folder, PROMPTS, "--max-new-tokens", 8)
    top1 = trex_run(folder, PROMPTS, "--max-new-tokens", 8, "--do-sample", "--sample-top-k", 1, "--seed", 3)
    assert top1 == greedy
    a = trex_run(folder, PROMPTS, "--max-new-tokens", 8, "--do-sample", "--seed", 11)
    b = trex_run(folder, PROMPTS, "--max-new-tokens", 8, "--do-sample", "--seed", 11)
    c = trex_run(folder, PROMPTS, "--max-new-tokens", 8, "--do-sample", "--seed", 12)
    assert a == b
    assert a != greedy and a != c


def test_sampling_settings_from_generation_config(export_root, tmp_path):
    """--do-sample with the model's top_k = 1 (generation_config.json) samples only the argmax: greedy's text;
    an explicit --sample-top-k overrides it."""
    _, folder = _exported("decoder", "llama", export_root)
    copy = tmp_path / "llama-topk1"
    shutil.copytree(folder, copy)
    gen = json.loads((copy / "generation_config.json").read_text())
    gen["top_k"] = 1
    (copy / "generation_config.json").write_text(json.dumps(gen))
    greedy = trex_run(copy, PROMPTS, "--max-new-tokens", 8)
    assert trex_run(copy, PROMPTS, "--max-new-tokens", 8, "--do-sample", "--seed", 5) == greedy
    assert trex_run(copy, PROMPTS, "--max-new-tokens", 8, "--do-sample", "--seed", 5, "--sample-top-k", 0) != greedy


@pytest.mark.parametrize("flags,warpers", [
    (("--temperature", 0.5, "--sample-top-k", 0), dict(temperature=0.5)),
    (("--top-p", 0.6, "--sample-top-k", 0), dict(top_p=0.6)),
    (("--temperature", 1.5, "--top-p", 0.7, "--sample-top-k", 5), dict(temperature=1.5, top_k=5, top_p=0.7)),
])
def test_sampling_keeps_what_the_reference_keeps(flags, warpers, export_root):
    """Every sampled token is one transformers' warpers keep for that prefix (the set, not RNG-equal text)."""
    import torch
    import transformers as tf

    ckpt, folder = _exported("decoder", "llama", export_root)
    p = _reference_pipeline("text-generation", str(ckpt), False)
    model, tok = p.model, p.tokenizer
    procs = []
    if "temperature" in warpers:
        procs.append(tf.TemperatureLogitsWarper(warpers["temperature"]))
    if "top_k" in warpers:
        procs.append(tf.TopKLogitsWarper(warpers["top_k"]))
    if "top_p" in warpers:
        procs.append(tf.TopPLogitsWarper(warpers["top_p"]))
    kept_sizes = []
    for seed in (1, 2, 3):
        got = trex_run(folder, PROMPTS[:2], "--max-new-tokens", 8, "--do-sample", "--seed", seed, *flags)
        for prompt, g in zip(PROMPTS[:2], got):
            ids = tok(g[0]["generated_text"], return_tensors="pt").input_ids
            start = tok(prompt, return_tensors="pt").input_ids.shape[1]
            with torch.no_grad():
                logits = model(ids).logits[0]
            for t in range(start, ids.shape[1]):
                scores = logits[t - 1][None].clone()
                for proc in procs:
                    scores = proc(ids[:, :t], scores)
                kept = torch.isfinite(scores[0])
                kept_sizes.append(int(kept.sum()))
                assert kept[ids[0, t]], f"token {int(ids[0, t])} at {t} is not one the reference keeps"
    if "temperature" not in warpers or len(warpers) > 1:
        assert min(kept_sizes) < dfx.VOCAB  # the warpers did remove tokens


def test_stream_prints_the_answer(export_root):
    _, folder = _exported("decoder", "gpt2", export_root)
    answers = trex_run(folder, PROMPTS[:2], "--max-new-tokens", 9)
    streamed = trex_run(folder, PROMPTS[:2], "--max-new-tokens", 9, "--stream", json_out=False)
    assert streamed == "".join(a[0]["generated_text"] + "\n" for a in answers)


def test_byte_level_text_and_stream(export_root):
    """Byte-level BPE with <s> added, non-ASCII prompts, continuations full of split characters: the decoded text
    (U+FFFD where the reference puts it, clean-up spaces) equals the reference, and --stream prints it."""
    ckpt, folder = _exported("bytelevel", "llama", export_root)
    prompts = ["héllo wörld", "日本語 text, isn't it ?", "ab cd"]
    got = trex_run(folder, prompts, "--max-new-tokens", 16)
    want = reference("text-generation", ckpt, prompts, do_sample=False, max_new_tokens=16)
    assert got == want
    assert any("\ufffd" in g[0]["generated_text"] for g in got)  # split characters did come out
    streamed = trex_run(folder, prompts, "--max-new-tokens", 16, "--stream", json_out=False)
    assert streamed == "".join(a[0]["generated_text"] + "\n" for a in got)


# ------------------------------------------------------------------------------------------------------------
# translation / summarization
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,task", [("marian", "translation"), ("bart", "summarization"), ("t5", "translation_en_to_de")])
@pytest.mark.parametrize("beams", [1, 4])
def test_seq2seq(name, task, beams, export_root):
    ckpt, folder = _exported("seq2seq", name, export_root)
    # A repetition penalty keeps the random models from repeating one word, so the beams differ.
    got = trex_run(folder, SOURCES, "--pipeline", task, "--max-new-tokens", 10, "--num-beams", beams,
                   "--repetition-penalty", 1.3)
    want = reference(task, ckpt, SOURCES, seq2seq=True, max_new_tokens=10, num_beams=beams, repetition_penalty=1.3)
    assert got == want
    key = "summary_text" if task == "summarization" else "translation_text"
    assert all(set(a[0]) == {key} for a in got)


@pytest.mark.parametrize("early_stopping", [False, True, "never"])
def test_beam_search_eos_and_length_penalty(early_stopping, export_root, tmp_path):
    """Beams that end on an eos token (one a beam reaches: greedy's 3rd word) with a length penalty."""
    ckpt, folder = _exported("seq2seq", "bart", export_root)
    free = trex_run(folder, SOURCES, "--pipeline", "summarization", "--max-new-tokens", 10, "--num-beams", 1,
                    "--repetition-penalty", 1.3)
    stop_id = int(free[0][0]["summary_text"].split()[2][1:])
    copy = tmp_path / "bart-eos"
    shutil.copytree(folder, copy)
    gen = json.loads((copy / "generation_config.json").read_text())
    gen.update(eos_token_id=[2, stop_id], early_stopping=early_stopping, num_beams=3, length_penalty=0.6)
    (copy / "generation_config.json").write_text(json.dumps(gen))
    got = trex_run(copy, SOURCES, "--pipeline", "summarization", "--max-new-tokens", 10, "--repetition-penalty", 1.3)
    want = reference("summarization", ckpt, SOURCES, seq2seq=True, max_new_tokens=10, repetition_penalty=1.3,
                     num_beams=3, eos_token_id=[2, stop_id], early_stopping=early_stopping, length_penalty=0.6)
    assert got == want
    assert any(n_words(a[0]["summary_text"]) < 10 for a in got)  # some answer ended on the eos


@pytest.mark.parametrize("kind,name", [("decoder", "llama"), ("seq2seq", "t5")])
def test_optimized_folder(kind, name, export_root):
    """A folder exported with --optimize: trex run uses the fused graphs (as genai_config.json does) and still
    answers as the reference."""
    ckpt, folder = _exported(kind, name, export_root, True)
    assert list(folder.glob("*-optimized.onnx"))
    if kind == "decoder":
        got = trex_run(folder, PROMPTS, "--max-new-tokens", 10)
        want = reference("text-generation", ckpt, PROMPTS, do_sample=False, max_new_tokens=10)
    else:
        got = trex_run(folder, SOURCES, "--pipeline", "summarization", "--max-new-tokens", 10,
                       "--repetition-penalty", 1.3)
        want = reference("summarization", ckpt, SOURCES, seq2seq=True, max_new_tokens=10, num_beams=4,
                         repetition_penalty=1.3)
    assert got == want
    # The fused graph is the one loaded: without the plain model.onnx beside it, the answers are the same.
    plain = folder / ("model.onnx" if kind == "decoder" else "encoder_model.onnx")
    hidden = plain.with_suffix(".hidden")
    plain.rename(hidden)
    try:
        if kind == "decoder":
            r = fx.run_trex("run", folder, "--pipeline", "text-generation", "--json", "--max-new-tokens", 10, *PROMPTS)
        else:
            r = fx.run_trex("run", folder, "--pipeline", "summarization", "--json", "--max-new-tokens", 10,
                            "--repetition-penalty", 1.3, *SOURCES)
    finally:
        hidden.rename(plain)
    assert r.returncode == 0, r.stderr
    assert [json.loads(l) for l in r.stdout.splitlines()] == got


# ------------------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------------------

def test_wrong_pipeline_for_the_folder(export_root):
    _, folder = _exported("seq2seq", "marian", export_root)
    r = fx.run_trex("run", folder, "--pipeline", "text-generation", "w5 w6")
    assert r.returncode == 1 and "decoder-only" in r.stderr and r.stdout == ""
    _, folder = _exported("decoder", "gpt2", export_root)
    r = fx.run_trex("run", folder, "--pipeline", "translation", "w5 w6")
    assert r.returncode == 1 and "encoder-decoder" in r.stderr and r.stdout == ""


def test_bad_generation_options(export_root):
    _, folder = _exported("decoder", "gpt2", export_root)
    for flags, message in [(["--max-new-tokens", 0], "max-new-tokens"), (["--num-beams", 1000], "num_beams"),
                           ([""], "empty prompt")]:
        r = fx.run_trex("run", folder, *flags, *([] if flags == [""] else ["w5 w6"]))
        assert r.returncode == 1 and message in r.stderr and r.stdout == "", (flags, r.stderr)


def test_bad_generation_config_is_named(export_root, tmp_path):
    _, folder = _exported("decoder", "gpt2", export_root)
    copy = tmp_path / "gpt2-bad"
    shutil.copytree(folder, copy)
    (copy / "generation_config.json").write_text('{"eos_token_id": "two"}')
    r = fx.run_trex("run", copy, "w5 w6")
    assert r.returncode == 2 and "generation_config.json" in r.stderr and "eos_token_id" in r.stderr
    assert r.stdout == ""

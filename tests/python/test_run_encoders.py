"""`trex run --json` for the encoder pipelines vs transformers' pipeline() on the same folders.

Tiny random BERT models (made by transformers from a config, seeded) carry the REAL all-MiniLM-L6-v2 WordPiece
tokenizer and its vocabulary size, so tokenization, offsets, subwords and truncation are the real ones. The
answers must match: scores within 1e-4, same labels, spans, tokens and words. The real MiniLM is compared with
sentence-transformers for the pooled, normalized embedding.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

import fixtures as fx

TOL = 1e-4
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "MISC"]
CLS_LABELS = ["negative", "neutral", "positive", "mixed"]

LONG = " ".join(["The committee reviewed the unusually long proposal, paragraph after paragraph,"] * 60)
LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello!",
    "",
    "Café crème, naïve façade, résumé: déjà vu at the Zürich Hauptbahnhof.",
    "東京は日本の首都です。北京和上海也很大。",
    "서울에서 만나요 🙂",
    "Emoji everywhere 😀🎉👍🏽 and a family 👨‍👩‍👧‍👦 too",
    "Unbelievably, uncharacteristically, the tokenization of supercalifragilisticexpialidocious works.",
    "John Smith lives in New York and works for the United Nations in Geneva.",
    "Ελληνικά γράμματα και русский текст вместе.",
    "   leading and trailing spaces   ",
    "Numbers 3.14159, 2,718 and 1e-10; symbols #hashtag @user $100 (50%)!",
    "Marie Curie was born in Warsaw.",
    "don't won't shouldn't it's we're they've",
    "العربية تكتب من اليمين إلى اليسار",
    "A tab\there and an ellipsis… and an em dash — done.",
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday.",
    "x",
    LONG,
]
MASK_LINES = [
    "The capital of France is [MASK].",
    "[MASK] is a word.",
    "Café [MASK] naïve façade.",
    "東京は[MASK]の首都です。",
    "Two masks: [MASK] and [MASK] here.",
    "Emoji 😀 then [MASK] 🎉",
]
QUESTIONS = ["Who reviewed the proposal?", "Where was Marie born?", "What happened?", "Qui est né à Varsovie ?"]
SHORT_CONTEXT = "Marie Curie was born in Warsaw. She later worked in Paris, at the Sorbonne, on radioactivity."
LONG_CONTEXT = " ".join([SHORT_CONTEXT, LONG[:2500], "The committee met in Geneva, Zürich and 東京."])


def _build_tiny(out, head: str, **overrides):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    labels = {"text-classification": CLS_LABELS, "token-classification": NER_LABELS}.get(head)
    kw = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=512, type_vocab_size=2, pad_token_id=0)
    if labels:
        kw.update(id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    cfg = tf.BertConfig(**kw, **overrides)
    cls = getattr(tf, fx.HEADS[head][0])
    model = cls.from_config(cfg, attn_implementation="eager")
    gen = torch.Generator().manual_seed(4321)
    with torch.no_grad():
        for _, p in model.named_parameters():
            # Larger noise than the export tests' so that the scores spread out (labels differ between tokens).
            p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    src = fx.minilm_dir()
    for f in TOKENIZER_FILES:
        shutil.copy(src / f, out / f)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory, trex_bin):
    """head → (checkpoint folder, trex export folder)."""
    root = tmp_path_factory.mktemp("run_enc")
    cases = {
        "feature-extraction": {},
        "text-classification": {},
        "multi-label": {"problem_type": "multi_label_classification"},
        "token-classification": {},
        "question-answering": {},
        "fill-mask": {},
    }
    out = {}
    for name, overrides in cases.items():
        head = "text-classification" if name == "multi-label" else name
        ckpt = _build_tiny(root / f"ckpt-{name}", head, **overrides)
        exported = root / f"onnx-{name}"
        fx.export(ckpt, exported)
        out[name] = (ckpt, exported)
    return out


def _trex_run(folder, inputs, *flags):
    r = subprocess.run([str(fx.TREX_BIN), "run", str(folder), "--json", *flags], input="\n".join(inputs) + "\n",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"trex run failed (exit {r.returncode}): {r.stderr}"
    lines = r.stdout.splitlines()
    assert len(lines) == len(inputs), r.stdout[:2000]
    return [json.loads(line) for line in lines]


def _pipeline(task, ckpt):
    import transformers as tf

    return tf.pipeline(task, model=str(ckpt), tokenizer=str(ckpt), framework="pt", device="cpu")


def _same(got, want, where="", tol=TOL):
    """Recursive comparison: floats within tol, everything else equal."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys {got} vs {want}"
        for k in want:
            _same(got[k], want[k], f"{where}.{k}", tol)
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r:.300} vs {want!r:.300}"
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{where}[{i}]", tol)
    elif isinstance(want, (float, np.floating)) and not isinstance(want, bool):
        assert abs(float(got) - float(want)) <= tol, f"{where}: {got} vs {want}"
    elif isinstance(want, (int, np.integer)) and not isinstance(want, bool):
        assert got == int(want), f"{where}: {got} vs {want}"
    else:
        assert got == want, f"{where}: {got!r} vs {want!r}"


def _compare(got, want, inputs):
    for i, (g, w) in enumerate(zip(got, want)):
        _same(g, w, f"input {i} ({inputs[i][:40]!r})")


def test_feature_extraction_hidden_states(folders):
    ckpt, out = folders["feature-extraction"]
    want = _pipeline("feature-extraction", ckpt)(LINES, tokenize_kwargs={"truncation": True})
    got = _trex_run(out, LINES)
    assert len(got[-1][0]) == 512, "the long line is truncated to the model's 512 positions"
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, (i, g.shape, w.shape)
        assert np.abs(g - w).max() <= TOL, (i, np.abs(g - w).max())


@pytest.mark.parametrize("flags,kwargs", [
    ((), {}),
    (("--top-k", "0"), {"top_k": None}),
    (("--top-k", "2"), {"top_k": 2}),
    (("--function-to-apply", "sigmoid"), {"function_to_apply": "sigmoid"}),
    (("--top-k", "1", "--function-to-apply", "none"), {"top_k": 1, "function_to_apply": "none"}),
])
def test_text_classification(folders, flags, kwargs):
    ckpt, out = folders["text-classification"]
    want = _pipeline("text-classification", ckpt)(LINES, truncation=True, **kwargs)
    got = _trex_run(out, LINES, *flags)
    _compare(got, want, LINES)
    assert len({(g if isinstance(g, dict) else g[0])["label"] for g in got}) > 1, "labels should vary across inputs"


def test_text_classification_multi_label(folders):
    ckpt, out = folders["multi-label"]
    for flags, kwargs in [((), {}), (("--top-k", "0"), {"top_k": None})]:
        want = _pipeline("text-classification", ckpt)(LINES, truncation=True, **kwargs)
        got = _trex_run(out, LINES, *flags)
        _compare(got, want, LINES)
    # Sigmoid scores: independent per label, so they do not sum to 1.
    assert abs(sum(d["score"] for d in got[0]) - 1.0) > 1e-3


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification(folders, strategy):
    ckpt, out = folders["token-classification"]
    want = _pipeline("token-classification", ckpt)(LINES, aggregation_strategy=strategy)
    got = _trex_run(out, LINES, "--aggregation-strategy", strategy)
    _compare(got, want, LINES)
    assert sum(len(g) for g in got) > 5, "the random model should tag entities"


@pytest.mark.parametrize("context,top_k", [(SHORT_CONTEXT, None), (LONG_CONTEXT, None), (LONG_CONTEXT, 3)],
                         ids=["short", "long", "long-top3"])
def test_question_answering(folders, context, top_k):
    ckpt, out = folders["question-answering"]
    qa = _pipeline("question-answering", ckpt)
    kwargs = {"top_k": top_k} if top_k else {}
    want = [qa(question=q, context=context, **kwargs) for q in QUESTIONS]
    flags = ("--context", context) + (("--top-k", str(top_k)) if top_k else ())
    got = _trex_run(out, QUESTIONS, *flags)
    _compare(got, want, QUESTIONS)


@pytest.mark.parametrize("top_k", [None, 3])
def test_fill_mask(folders, top_k):
    ckpt, out = folders["fill-mask"]
    kwargs = {"top_k": top_k} if top_k else {}
    want = _pipeline("fill-mask", ckpt)(MASK_LINES, **kwargs)
    got = _trex_run(out, MASK_LINES, *(("--top-k", str(top_k)) if top_k else ()))
    _compare(got, want, MASK_LINES)


@pytest.mark.real_model
def test_minilm_sentence_embeddings(trex_bin, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    model_dir = fx.minilm_dir()
    out = tmp_path / "minilm"
    fx.export(model_dir, out)
    for f in ["modules.json", "sentence_bert_config.json", "1_Pooling/config.json"]:
        assert (out / f).is_file(), f"trex export should copy {f}"
    want = st.SentenceTransformer(str(model_dir), device="cpu").encode(LINES, batch_size=8)
    got = np.asarray(_trex_run(out, LINES, "--batch-size", "8"))
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOL, np.abs(got - want).max()
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


# ---- hostile inputs ----

def test_folder_without_tokenizer(folders, tmp_path):
    _, out = folders["text-classification"]
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ["model.onnx", "config.json"]:
        shutil.copy(out / f, bare / f)
    r = fx.run_trex("run", bare, "--json", "hello")
    assert r.returncode == 2 and "tokenizer.json" in r.stderr and r.stdout == "", r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_unknown_pipeline(folders):
    _, out = folders["text-classification"]
    r = fx.run_trex("run", out, "--pipeline", "telepathy", "hello")
    assert r.returncode == 1 and "unknown pipeline 'telepathy'" in r.stderr and r.stdout == ""


def test_question_answering_needs_context(folders):
    _, out = folders["question-answering"]
    r = fx.run_trex("run", out, "--json", "Who?")
    assert r.returncode == 1 and "--context" in r.stderr and r.stdout == ""


def test_fill_mask_without_mask(folders):
    _, out = folders["fill-mask"]
    r = fx.run_trex("run", out, "--json", "no mask here")
    assert r.returncode == 2 and "[MASK]" in r.stderr and r.stdout == ""


# ---- the one-header C++ API (src/trex.h) through its example program ----

def test_example_program(folders, tmp_path):
    example = fx.TREX_BIN.parent / "trex_example_pipeline"
    if not example.is_file():
        pytest.fail(f"{example} not built (CMake target trex_example_pipeline)")
    ckpt, out = folders["token-classification"]
    texts = ["John Smith lives in New York.", "Café crème à Zürich 😀"]
    # Export through the API, then run: the answers are trex run's.
    api_out = tmp_path / "api"
    r = subprocess.run([str(example), str(api_out), "--export", str(ckpt), *texts], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert (api_out / "model.onnx").is_file() and (api_out / "tokenizer.json").is_file()
    assert [json.loads(line) for line in r.stdout.splitlines()] == _trex_run(out, texts)
    # Question answering with a context, and a clear error without one.
    _, qa_out = folders["question-answering"]
    r = subprocess.run([str(example), str(qa_out), "--context", SHORT_CONTEXT, QUESTIONS[1]], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == _trex_run(qa_out, [QUESTIONS[1]], "--context",
                                                                              SHORT_CONTEXT)
    r = subprocess.run([str(example), str(qa_out), QUESTIONS[1]], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "--context" in r.stderr and r.stdout == ""


def test_model_file_is_a_name_in_the_folder(folders):
    _, out = folders["text-classification"]
    for bad in ["../model.onnx", "/etc/passwd"]:
        r = fx.run_trex("run", out, "--model-file", bad, "hello")
        assert r.returncode == 1 and "--model-file" in r.stderr and r.stdout == "", (bad, r.stderr)
    r = fx.run_trex("run", out, "--model-file", "missing.onnx", "hello")
    assert r.returncode == 2 and "missing.onnx" in r.stderr and r.stdout == ""


def test_config_value_of_the_wrong_type(folders, tmp_path):
    _, out = folders["text-classification"]
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["max_position_embeddings"] = "many"
    (bad / "config.json").write_text(json.dumps(cfg))
    r = fx.run_trex("run", bad, "--json", "hello")
    assert r.returncode == 2 and "config.json" in r.stderr and r.stdout == "", r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

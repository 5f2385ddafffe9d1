"""Tiny random decoder-only LMs created by transformers itself, and the step-by-step oracle helpers.

Each case is a config (several head / kv-head / head_dim shapes, the variants each family has: rope scaling,
sliding windows, q/k norms, packed projections, (1 + w) norms), built by transformers with seeded random
weights perturbed by seeded noise, saved with save_pretrained, plus a small tokenizer made with the
tokenizers package (onnxruntime-genai refuses folders without one). Cached like fixtures.checkpoint().
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import fixtures as fx

VOCAB = 99
PAD = 0


def _llama_like(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=37, max_position_embeddings=128, rms_norm_eps=1e-5, pad_token_id=PAD,
                bos_token_id=1, eos_token_id=2)
    base.update(kw)
    return base


# name -> (config class name, kwargs). Names are the test ids. head_dim is 16 in most cases (ONNX Runtime's
# GroupQueryAttention wants a multiple of 16) and 8 in a few, which the optimized graph serves with plain attention.
DECODER_CASES = {
    "gpt2": ("GPT2Config", dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, n_inner=37,
                                 pad_token_id=PAD, bos_token_id=1, eos_token_id=2)),
    "llama": ("LlamaConfig", _llama_like()),
    "llama-mha-bias": ("LlamaConfig", _llama_like(hidden_size=32, num_key_value_heads=4, attention_bias=True,
                                                   mlp_bias=True,
                                                   tie_word_embeddings=True)),
    "llama-llama3-rope": ("LlamaConfig", _llama_like(num_attention_heads=2, num_key_value_heads=1, rope_theta=500000.0,
                                                      rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                                    "original_max_position_embeddings": 16})),
    "llama-linear-rope": ("LlamaConfig", _llama_like(rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "mistral": ("MistralConfig", _llama_like(num_key_value_heads=1, sliding_window=5, head_dim=16)),
    "qwen2": ("Qwen2Config", _llama_like(num_attention_heads=8, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", _llama_like(head_dim=16, num_attention_heads=6, num_key_value_heads=3,
                                          tie_word_embeddings=True)),
    "phi3": ("Phi3Config", _llama_like(num_key_value_heads=4, partial_rotary_factor=0.5, sliding_window=6)),
    "phi3-longrope": ("Phi3Config", _llama_like(num_key_value_heads=4, max_position_embeddings=64,
                                                 original_max_position_embeddings=16,
                                                 rope_scaling={"type": "longrope",
                                                               "short_factor": [1.0, 1.1, 1.2, 1.3, 1.5, 1.7, 1.9, 2.0],
                                                               "long_factor": [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]})),
    "gemma": ("GemmaConfig", _llama_like(head_dim=16, num_attention_heads=3, num_key_value_heads=1,
                                          hidden_activation="gelu_pytorch_tanh", hidden_act="gelu_pytorch_tanh")),
}


def build_decoder(name: str):
    import torch
    import transformers as tf

    cls_name, kw = DECODER_CASES[name]
    cfg = getattr(tf, cls_name)(**kw)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    gen = torch.Generator().manual_seed(4321 + sorted(DECODER_CASES).index(name))
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    model.eval()
    return model


def write_tokenizer(out: Path, vocab_size: int = VOCAB):
    """A word-level tokenizer over `vocab_size` tokens (<pad>, <s>, </s>, then w3 ...)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for i in range(3, vocab_size):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<pad>")
    fast.save_pretrained(out)


def _build(name: str, fmt: str, out: Path):
    import torch

    model = build_decoder(name)
    if fmt == "safetensors":
        model.save_pretrained(out, safe_serialization=True)
    elif fmt == "bf16":
        model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    elif fmt == "fp16":
        model.half().save_pretrained(out, safe_serialization=True)
    elif fmt == "sharded":
        model.save_pretrained(out, safe_serialization=True, max_shard_size="30KB")
        assert (out / "model.safetensors.index.json").exists(), "sharding did not happen"
    else:
        raise ValueError(fmt)
    write_tokenizer(out)


def decoder_checkpoint(name: str, fmt: str = "safetensors") -> Path:
    return fx._materialize(f"decoder2-{name}-{fmt}", lambda d: _build(name, fmt, d))


def reference_model(path: Path):
    import torch
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", torch_dtype=torch.float32)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------
# Step-by-step runs
# ----------------------------------------------------------------------------------------------

def left_padded_batch(seed: int = 7, lengths=(9, 5)):
    """input_ids / attention_mask for prompts of `lengths`, left-padded to the longest."""
    rng = np.random.default_rng(seed)
    s = max(lengths)
    ids = np.full((len(lengths), s), PAD, dtype=np.int64)
    mask = np.zeros((len(lengths), s), dtype=np.int64)
    for b, n in enumerate(lengths):
        ids[b, s - n:] = rng.integers(3, VOCAB, size=n)
        mask[b, s - n:] = 1
    return ids, mask


def position_ids(mask: np.ndarray, new: int) -> np.ndarray:
    """As generate() computes them: cumsum(mask) - 1, padding positions 1; the last `new` columns."""
    pos = np.cumsum(mask, axis=1) - 1
    pos[mask == 0] = 1
    return pos[:, -new:].astype(np.int64)


class OnnxDecoder:
    """Runs trex's decoder model step by step, feeding present.* back as past_key_values.*."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.layers = sum(1 for n in self.inputs if n.startswith("past_key_values.") and n.endswith(".key"))
        self.past = None

    def reset(self, batch: int):
        self.past = {}
        for n, i in self.inputs.items():
            if n.startswith("past_key_values."):
                self.past[n] = np.zeros((batch, i.shape[1], 0, i.shape[3]), dtype=np.float32)

    def step(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask, ids.shape[1])}
        feed.update(self.past)
        res = dict(zip(self.outputs, self.sess.run(None, feed)))
        for n in list(self.past):
            self.past[n] = res[n.replace("past_key_values.", "present.")]
        return res["logits"]

    def greedy(self, ids: np.ndarray, mask: np.ndarray, new_tokens: int, suppress: int | None = None) -> np.ndarray:
        """Greedy tokens; `suppress` (the eos id) is never chosen, as generate(min_new_tokens=...) does."""
        self.reset(ids.shape[0])
        out = []
        logits = self.step(ids, mask)
        for i in range(new_tokens):
            last = logits[:, -1, :].copy()
            if suppress is not None:
                last[:, suppress] = -np.inf
            nxt = last.argmax(-1).astype(np.int64)[:, None]
            out.append(nxt)
            if i + 1 < new_tokens:
                mask = np.concatenate([mask, np.ones_like(nxt)], axis=1)
                logits = self.step(nxt, mask)
        return np.concatenate(out, axis=1)

"""Tiny random encoder-decoder models (t5, mt5, bart, mbart, marian) created by transformers itself, and the
helpers that run trex's encoder_model.onnx + decoder_model_merged.onnx step by step.

Each case is a config with odd head counts and different encoder / decoder depths where the family allows it,
built by transformers with seeded random weights perturbed by seeded noise (so norms, biases and
final_logits_bias are non-trivial), saved with save_pretrained plus a small tokenizer. Cached like
fixtures.checkpoint() under the `seq2seq1-` prefix.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import decoder_fixtures as dfx
import fixtures as fx

VOCAB = 99
PAD, EOS, START = 0, 2, 0  # decoder_start_token_id: the pad token, as t5 / bart-family checkpoints mostly do

_T5 = dict(vocab_size=VOCAB, d_model=30, d_kv=10, d_ff=37, num_layers=3, num_decoder_layers=2, num_heads=3,
           relative_attention_num_buckets=8, relative_attention_max_distance=20, pad_token_id=PAD,
           eos_token_id=EOS, decoder_start_token_id=START)
_BART = dict(vocab_size=VOCAB, d_model=30, encoder_layers=3, decoder_layers=2, encoder_attention_heads=5,
             decoder_attention_heads=5, encoder_ffn_dim=37, decoder_ffn_dim=41, max_position_embeddings=64,
             pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS, decoder_start_token_id=START,
             forced_eos_token_id=None)

# name -> (config class, model class, kwargs). Encoder and decoder head counts are equal: optimum sizes the empty
# first-step cache from config.num_attention_heads (the encoder's); trex's graphs take any pair (test below).
SEQ2SEQ_CASES = {
    "t5": ("T5Config", "T5ForConditionalGeneration", dict(_T5, feed_forward_proj="relu")),
    "t5-v1_1": ("T5Config", "T5ForConditionalGeneration",
                dict(_T5, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    "mt5": ("MT5Config", "MT5ForConditionalGeneration", dict(_T5, feed_forward_proj="gated-gelu")),
    "bart": ("BartConfig", "BartForConditionalGeneration", dict(_BART, scale_embedding=True)),
    "mbart": ("MBartConfig", "MBartForConditionalGeneration", dict(_BART, activation_function="gelu_new")),
    "marian": ("MarianConfig", "MarianMTModel", dict(_BART, scale_embedding=True, activation_function="swish",
                                                    decoder_vocab_size=VOCAB)),
    # Separate encoder and decoder token tables, the head tied to the decoder's.
    "marian-unshared": ("MarianConfig", "MarianMTModel", dict(_BART, scale_embedding=True, decoder_vocab_size=VOCAB,
                                                             share_encoder_decoder_embeddings=False)),
    # Different encoder / decoder head counts: checked step by step (optimum cannot size its empty cache for it).
    "bart-heads": ("BartConfig", "BartForConditionalGeneration", dict(_BART, decoder_attention_heads=3)),
}
OPTIMUM_CASES = ["t5", "t5-v1_1", "mt5", "bart", "mbart", "marian"]


def build_seq2seq(name: str):
    import torch
    import transformers as tf

    cfg_cls, model_cls, kw = SEQ2SEQ_CASES[name]
    cfg = getattr(tf, cfg_cls)(**kw)
    torch.manual_seed(0)
    model = getattr(tf, model_cls)(cfg)
    gen = torch.Generator().manual_seed(977 + sorted(SEQ2SEQ_CASES).index(name))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "embed_positions" in pname and name == "marian":
                continue  # static sinusoids, not saved
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.add_(0.5 * torch.randn(model.final_logits_bias.shape, generator=gen))
    model.eval()
    return model


def _build(name: str, out: Path):
    build_seq2seq(name).save_pretrained(out, safe_serialization=True)
    dfx.write_tokenizer(out, VOCAB)


def seq2seq_checkpoint(name: str) -> Path:
    return fx._materialize(f"seq2seq1-{name}", lambda d: _build(name, d))


def reference_model(path: Path):
    import torch
    import transformers as tf

    model = tf.AutoModelForSeq2SeqLM.from_pretrained(path, attn_implementation="eager", torch_dtype=torch.float32)
    model.eval()
    return model


def padded_batch(seed: int = 5, lengths=(9, 6)):
    """input_ids / attention_mask of a right-padded batch (as tokenizers pad encoder inputs), eos-terminated."""
    rng = np.random.default_rng(seed)
    s = max(lengths)
    ids = np.full((len(lengths), s), PAD, dtype=np.int64)
    mask = np.zeros((len(lengths), s), dtype=np.int64)
    for b, n in enumerate(lengths):
        ids[b, :n - 1] = rng.integers(3, VOCAB, size=n - 1)
        ids[b, n - 1] = EOS
        mask[b, :n] = 1
    return ids, mask


class OnnxSeq2Seq:
    """trex's folder run by hand: the encoder once, then the merged decoder step by step with its caches, as
    optimum's ORTModelForSeq2SeqLM does: the self-attention cache is each step's present.*.decoder.*, the
    cross-attention cache the first step's present.*.encoder.* (later steps return them empty)."""

    def __init__(self, folder: Path, suffix: str = ""):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.enc = ort.InferenceSession(str(folder / f"encoder_model{suffix}.onnx"), so,
                                        providers=["CPUExecutionProvider"])
        self.dec = ort.InferenceSession(str(folder / f"decoder_model_merged{suffix}.onnx"), so,
                                        providers=["CPUExecutionProvider"])
        self.dec_inputs = {i.name: i for i in self.dec.get_inputs()}
        self.dec_outputs = [o.name for o in self.dec.get_outputs()]

    def encode(self, ids, mask):
        self.enc_out = self.enc.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        self.mask = mask
        self.past = None
        return self.enc_out

    def step(self, ids):
        b = ids.shape[0]
        feed = {"input_ids": ids, "encoder_hidden_states": self.enc_out, "encoder_attention_mask": self.mask,
                "use_cache_branch": np.array([self.past is not None])}
        for n, i in self.dec_inputs.items():
            if n.startswith("past_key_values."):
                feed[n] = (self.past[n.replace("past_key_values.", "present.")] if self.past is not None
                           else np.zeros((b, i.shape[1], 0, i.shape[3]), dtype=np.float32))
        res = dict(zip(self.dec_outputs, self.dec.run(None, feed)))
        if self.past is not None:
            for n in self.dec_outputs:
                if ".encoder." in n:
                    assert res[n].shape[2] == 0, f"{n} has {res[n].shape[2]} rows at a step with a cache, expected 0"
                    res[n] = self.past[n]
        self.past = res
        return res["logits"]

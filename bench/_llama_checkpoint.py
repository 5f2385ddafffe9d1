"""Random Llama checkpoints for the decoder benchmark and the onnxruntime-genai checks.

Two makers:
  make_tiny_llama(dir)      a tiny LlamaForCausalLM built by transformers (fp32, seeded); used for smoke
                            runs and for checking onnxruntime-genai's builder against transformers.
  make_sharded_llama(dir)   a large (default TinyLlama-1.1B-shaped) bf16 checkpoint written with the
                            safetensors package directly, one tensor at a time, in N shards plus
                            model.safetensors.index.json: peak memory stays at one tensor (~260 MB for
                            the 32000 x 2048 embedding), no transformers model is ever instantiated.
Both write a small byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json + special_tokens_map.json)
because onnxruntime-genai's builder refuses folders without tokenizer files.

Works in either venv (.venv: transformers 4.57, .venv-genai: transformers 5.x); only needs numpy,
safetensors and tokenizers for the sharded maker.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

# TinyLlama-1.1B's shape.
TINYLLAMA_1B = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                    intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=320, max_position_embeddings=256)

BOS, EOS, UNK = 1, 2, 0


LLAMA2_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096)


def bench_checkpoint(root: Path, shape: str) -> tuple[Path, dict]:
    """The decoder benchmarks' checkpoint under `root`, made once and cached: "tiny" (--smoke), "tinyllama"
    (TinyLlama-1.1B-shaped bf16, 3 shards) or "llama2-7b" (13.5 GB bf16, 6 shards, written tensor by tensor)."""
    import sys
    import time

    if shape == "tiny":
        return make_tiny_llama(root / "tiny-llama-v1"), {**TINY}
    dims, name, shards = {"tinyllama": (TINYLLAMA_1B, "tinyllama-1.1b-shape-bf16-random-v1", 3),
                          "llama2-7b": (LLAMA2_7B, "llama2-7b-shape-bf16-random-v1", 6)}[shape]
    ckpt = root / name
    if not (ckpt / ".complete").exists():
        print(f"writing checkpoint {ckpt} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    make_sharded_llama(ckpt, dims, shards=shards)
    if time.perf_counter() - t0 > 1:
        print(f"written in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return ckpt, {**dims}


def write_tokenizer(d: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer of exactly vocab_size ids (needs vocab_size >= 259).

    ids 0-2 are <unk>, <s>, </s>; then the 256 byte symbols; then two-letter merges ('ab', ...) while room is
    left; then unreachable '<extra_N>' fillers. Byte-level BPE because onnxruntime-genai's tokenizer loads it
    (it rejects a WordLevel tokenizer.json: "Cannot know how to parse line").
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel

    if vocab_size < 259:
        raise ValueError("byte-level tokenizer needs vocab_size >= 259")
    vocab = {"<unk>": UNK, "<s>": BOS, "</s>": EOS}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    merges = []
    letters = "abcdefghijklmnopqrstuvwxyz"
    for a in letters:
        for b in letters:
            if len(vocab) < vocab_size:
                vocab[a + b] = len(vocab)
                merges.append((a, b))
    while len(vocab) < vocab_size:
        vocab[f"<extra_{len(vocab)}>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                        special_tokens=[("<s>", BOS)])
    d.mkdir(parents=True, exist_ok=True)
    try:  # transformers writes tokenizer_config.json / special_tokens_map.json the way loaders expect
        from transformers import PreTrainedTokenizerFast
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        fast.save_pretrained(str(d))
    except ImportError:
        tok.save(str(d / "tokenizer.json"))
        (d / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "model_max_length": 2048}, indent=2) + "\n")
        (d / "special_tokens_map.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2) + "\n")


def llama_config_dict(shape: dict, torch_dtype: str) -> dict:
    """config.json as transformers (4.57) writes it for LlamaForCausalLM."""
    return {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": BOS, "eos_token_id": EOS, "head_dim": shape["hidden_size"] // shape["num_attention_heads"],
        "hidden_act": "silu", "hidden_size": shape["hidden_size"], "initializer_range": 0.02,
        "intermediate_size": shape["intermediate_size"], "max_position_embeddings": shape["max_position_embeddings"],
        "mlp_bias": False, "model_type": "llama", "num_attention_heads": shape["num_attention_heads"],
        "num_hidden_layers": shape["num_hidden_layers"], "num_key_value_heads": shape["num_key_value_heads"],
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "torch_dtype": torch_dtype, "transformers_version": "4.57.6",
        "use_cache": True, "vocab_size": shape["vocab_size"],
    }


def generation_config_dict() -> dict:
    return {"_from_model_config": True, "bos_token_id": BOS, "eos_token_id": EOS, "transformers_version": "4.57.6"}


def make_tiny_llama(d: Path, seed: int = 0, **overrides) -> Path:
    """Tiny random LlamaForCausalLM via transformers (fp32 safetensors) + tokenizer. Cached by .complete."""
    d = Path(d)
    if (d / ".complete").exists():
        return d
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d.mkdir(parents=True, exist_ok=True)
    shape = {**TINY, **overrides}
    torch.manual_seed(seed)
    cfg = LlamaConfig(**shape, tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=EOS,
                      rms_norm_eps=1e-5, rope_theta=10000.0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger random weights than the 0.02 init so greedy tokens vary
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    model.save_pretrained(str(d))
    write_tokenizer(d, shape["vocab_size"])
    (d / ".complete").write_text("ok\n")
    return d


def _llama_tensors(shape: dict):
    """(name, shape) of every LlamaForCausalLM parameter, in the order transformers saves them."""
    h, inter, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    hd = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * hd
    yield "model.embed_tokens.weight", (v, h)
    for i in range(shape["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "self_attn.q_proj.weight", (h, h)
        yield p + "self_attn.k_proj.weight", (kv, h)
        yield p + "self_attn.v_proj.weight", (kv, h)
        yield p + "self_attn.o_proj.weight", (h, h)
        yield p + "mlp.gate_proj.weight", (inter, h)
        yield p + "mlp.up_proj.weight", (inter, h)
        yield p + "mlp.down_proj.weight", (h, inter)
        yield p + "input_layernorm.weight", (h,)
        yield p + "post_attention_layernorm.weight", (h,)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (v, h)


def _random_bf16(rng, shp, is_norm: bool):
    """Random bf16 bits as uint16 (numpy has no bfloat16): float32 -> upper 16 bits, rounded to nearest."""
    import numpy as np

    if is_norm:
        x = (1.0 + 0.1 * rng.standard_normal(shp, dtype=np.float32))
    else:
        x = rng.standard_normal(shp, dtype=np.float32)
        x *= 0.02
    u = x.view(np.uint32)
    u += 0x7FFF + ((u >> 16) & 1)
    return (u >> 16).astype(np.uint16)


def make_sharded_llama(d: Path, shape: dict | None = None, shards: int = 3, seed: int = 0) -> Path:
    """Random bf16 Llama in `shards` safetensors files, written tensor by tensor. Cached by .complete."""
    import numpy as np

    d = Path(d)
    if (d / ".complete").exists():
        return d
    shape = shape or TINYLLAMA_1B
    d.mkdir(parents=True, exist_ok=True)
    tensors = list(_llama_tensors(shape))
    sizes = [2 * int(np.prod(s)) for _, s in tensors]
    total = sum(sizes)
    # Greedy split into `shards` files of about equal bytes, keeping tensor order.
    groups, cur, acc = [], [], 0
    for (name, shp), nbytes in zip(tensors, sizes):
        if cur and acc + nbytes / 2 > total * (len(groups) + 1) / shards and len(groups) < shards - 1:
            groups.append(cur)
            cur = []
        cur.append((name, shp))
        acc += nbytes
    groups.append(cur)

    rng = np.random.default_rng(seed)
    weight_map = {}
    for k, group in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        _write_safetensors_streaming(d / fname, group, rng)
        weight_map.update({name: fname for name, _ in group})
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    (d / "config.json").write_text(json.dumps(llama_config_dict(shape, "bfloat16"), indent=2, sort_keys=True) + "\n")
    (d / "generation_config.json").write_text(json.dumps(generation_config_dict(), indent=2) + "\n")
    write_tokenizer(d, shape["vocab_size"])
    (d / ".complete").write_text("ok\n")
    return d


def _write_safetensors_streaming(path: Path, group, rng) -> None:
    """Writes a safetensors file (8-byte header length, JSON header, data) one tensor at a time.

    The safetensors package's save_file wants every tensor in memory at once; this writes the same
    format incrementally so the peak stays at one tensor. The header is computed first from shapes.
    """
    import numpy as np

    header, off = {}, 0
    for name, shp in group:
        n = 2 * int(np.prod(shp))
        header[name] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # pad to 8 bytes as safetensors writers do
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for name, shp in group:
            arr = _random_bf16(rng, shp, name.endswith("norm.weight"))
            f.write(arr.tobytes())
            del arr
    os.replace(tmp, path)

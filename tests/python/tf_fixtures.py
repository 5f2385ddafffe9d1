"""TensorFlow checkpoints (tf_model.h5) for tests/python/test_tf_checkpoints.py, made in .venv-tf.

Run with .venv-tf/bin/python (tensorflow-cpu + tf-keras + transformers 4.57 + torch, requirements-tf.txt):

    .venv-tf/bin/python tests/python/tf_fixtures.py OUT

For each case, a random tiny model is made with transformers' TF class from the same config as the PyTorch
fixtures (tests/python/fixtures.py make_config), its weights perturbed with seeded noise, and saved with
save_pretrained: OUT/<case>/model/ holds only config.json and tf_model.h5. The reference is the PyTorch model
into which transformers loads that tf_model.h5 (load_tf2_checkpoint_in_pytorch_model; eager attention, fp32), run on fixtures.padded_batch; its
outputs go to OUT/<case>/ref.npz. OUT/hostile/ holds damaged copies of one checkpoint (a dataset deleted, one
replaced by a mis-shaped one), made with h5py. OUT/cases.json lists the cases.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # transformers' TF classes need Keras 2 (tf-keras)
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decoder_fixtures as dfx  # noqa: E402
import fixtures as fx  # noqa: E402  (make_config, padded_batch, HEADS)
import seq2seq_fixtures as sfx  # noqa: E402

# (model_type, head): the BERT family's TF classes trex reads.
CASES = [
    ("bert", "feature-extraction"),
    ("bert", "text-classification"),
    ("bert", "token-classification"),
    ("bert", "question-answering"),
    ("bert", "fill-mask"),
    ("roberta", "feature-extraction"),
    ("roberta", "fill-mask"),
    ("distilbert", "text-classification"),
    ("distilbert", "fill-mask"),
    ("albert", "feature-extraction"),
    ("albert", "fill-mask"),
    ("electra", "token-classification"),
    ("electra", "fill-mask"),
]
# Generation models: name -> (TF class, PyTorch class, config class, config kwargs), configs from the PyTorch
# fixtures (decoder_fixtures.py, seq2seq_fixtures.py).
GEN_CASES = {
    "gpt2": ("TFGPT2LMHeadModel", "GPT2LMHeadModel", *dfx.DECODER_CASES["gpt2"]),
    "t5": ("TFT5ForConditionalGeneration", "T5ForConditionalGeneration", *sfx.SEQ2SEQ_CASES["t5"][::2]),
    "t5-v1_1": ("TFT5ForConditionalGeneration", "T5ForConditionalGeneration", *sfx.SEQ2SEQ_CASES["t5-v1_1"][::2]),
}
T5_FIRST = [[0, 5, 7], [0, 9, 4]]  # decoder_input_ids of the first step (start token first)
HOSTILE_SOURCE = ("bert", "text-classification")
QUERY_KERNEL = "tf_bert_for_sequence_classification/bert/encoder/layer_._0/attention/self/query/kernel:0"


def case_name(model_type: str, head: str) -> str:
    return f"{model_type}-{head}"


def build_tf(model_type: str, head: str, out: Path, cfg=None, tf_cls: str = "", seed: int = 0):
    import numpy as np
    import tensorflow as tf
    import transformers as tr

    tf.random.set_seed(0)
    if cfg is None:
        cfg = fx.make_config(model_type, head)
        seed = 4321 + fx.MODEL_TYPES.index(model_type)
    cls = getattr(tr, tf_cls or "TF" + fx.HEADS[head][0])
    model = cls.from_config(cfg)
    model(model.dummy_inputs, training=False)  # creates the variables
    rng = np.random.default_rng(seed)
    seen = set()
    for w in model.weights:  # tied variables are listed once per object: perturb each once
        if id(w) in seen:
            continue
        seen.add(id(w))
        w.assign(w.numpy() + 0.02 * rng.standard_normal(w.shape).astype(np.float32))
    model.save_pretrained(str(out))
    names = sorted(p.name for p in out.iterdir())
    assert names in (["config.json", "tf_model.h5"], ["config.json", "generation_config.json", "tf_model.h5"]), names


def load_pytorch(model_dir: Path, cls):
    """The PyTorch model `cls` with the TF checkpoint's weights, by transformers' own TF -> PyTorch loading; eager
    attention, fp32, eval. (from_pretrained(dir, from_tf=True) would do the same, but in 4.57 it builds the model
    on the meta device and the TF weights are then never copied in.)"""
    import torch
    import transformers as tr
    from transformers.modeling_tf_pytorch_utils import load_tf2_checkpoint_in_pytorch_model

    config = tr.AutoConfig.from_pretrained(str(model_dir))
    torch.manual_seed(0)
    make = getattr(cls, "from_config", None) or cls._from_config  # Auto classes / model classes
    model = make(config, attn_implementation="eager")
    model, info = load_tf2_checkpoint_in_pytorch_model(model, str(model_dir / "tf_model.h5"), output_loading_info=True)
    # Tied parameters (an MLM decoder's weight and bias) are reported missing but share the loaded tensors' storage.
    sd = model.state_dict()
    loaded = {v.data_ptr() for k, v in sd.items() if k not in info["missing_keys"]}
    missing = [k for k in info["missing_keys"] if not k.endswith("position_ids") and sd[k].data_ptr() not in loaded]
    assert not missing, f"{model_dir}: PyTorch weights not in tf_model.h5: {missing}"
    return model.float().eval()


def reference(model_type: str, head: str, model_dir: Path, ref: Path):
    import numpy as np
    import torch
    import transformers as tr

    model = load_pytorch(model_dir, getattr(tr, fx.HEADS[head][0]))
    feeds = fx.padded_batch(model_type)
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    arrays = {k: v.detach().float().numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}
    np.savez(ref, **arrays)


def build_gen(name: str, d: Path):
    """A TF decoder / encoder-decoder and its PyTorch reference: first-step logits (and the encoder output)."""
    import numpy as np
    import torch
    import transformers as tr

    tf_cls, pt_cls, cfg_cls, kw = GEN_CASES[name]
    build_tf(name, "", d / "model", cfg=getattr(tr, cfg_cls)(**kw), tf_cls=tf_cls,
             seed=99 + sorted(GEN_CASES).index(name))
    model = load_pytorch(d / "model", getattr(tr, pt_cls))
    with torch.no_grad():
        if name == "gpt2":
            ids, mask = dfx.left_padded_batch()
            pos = dfx.position_ids(mask, ids.shape[1])
            out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                        position_ids=torch.from_numpy(pos))
            np.savez(d / "ref.npz", input_ids=ids, attention_mask=mask, logits=out.logits.numpy())
        else:
            ids, mask = sfx.padded_batch()
            first = np.array(T5_FIRST, dtype=np.int64)
            enc = model.get_encoder()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
            out = model(encoder_outputs=enc, attention_mask=torch.from_numpy(mask),
                        decoder_input_ids=torch.from_numpy(first))
            np.savez(d / "ref.npz", input_ids=ids, attention_mask=mask, decoder_input_ids=first,
                     last_hidden_state=enc.last_hidden_state.numpy(), logits=out.logits.numpy())


def hostile(src: Path, out: Path):
    """Damaged copies of `src` (a model folder): missing_dataset/, misshaped_dataset/, hdf5_hang/, hdf5_crash/."""
    import h5py
    import numpy as np

    for name in ("missing_dataset", "misshaped_dataset"):
        d = out / name
        shutil.copytree(src, d)
        with h5py.File(d / "tf_model.h5", "r+") as f:
            group = f["bert"]
            if name == "missing_dataset":
                del group[QUERY_KERNEL]
            else:
                shape = group[QUERY_KERNEL].shape
                del group[QUERY_KERNEL]
                group.create_dataset(QUERY_KERNEL, data=np.zeros((shape[0], shape[1] - 1), np.float32))
    # Files on which the HDF5 library itself (Debian's 1.10.8, which trex uses) loops forever or crashes: the global
    # heap collection ("GCOL") holding the variable-length weight_names strings, with its size field (8 bytes at
    # +8) set to 8192, or its first object's size field (8 bytes at +24) set to 2^32 - 1.
    data = (src / "tf_model.h5").read_bytes()
    at = data.find(b"GCOL")
    assert at > 0, "no global heap collection in tf_model.h5"
    for name, offset, value in (("hdf5_hang", at + 8, 8192), ("hdf5_crash", at + 24, 2**32 - 1)):
        d = out / name
        shutil.copytree(src, d)
        patched = bytearray(data)
        patched[offset:offset + 8] = value.to_bytes(8, "little")
        (d / "tf_model.h5").write_bytes(bytes(patched))


def main(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for model_type, head in CASES:
        d = out / case_name(model_type, head)
        build_tf(model_type, head, d / "model")
        reference(model_type, head, d / "model", d / "ref.npz")
        done.append({"name": d.name, "model_type": model_type, "head": head})
        print(f"made {d.name}", flush=True)
    for name in GEN_CASES:
        build_gen(name, out / name)
        print(f"made {name}", flush=True)
    hostile(out / case_name(*HOSTILE_SOURCE) / "model", out / "hostile")
    (out / "cases.json").write_text(json.dumps({"cases": done, "query_kernel": QUERY_KERNEL}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

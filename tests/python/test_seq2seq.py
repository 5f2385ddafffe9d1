"""Encoder-decoder models (t5, mt5, bart, mbart, marian): trex's folder (encoder_model.onnx +
decoder_model_merged.onnx, optimum's layout) vs transformers eager.

For every case: the encoder output on a right-padded batch of 2 (tolerance 1e-5); the merged decoder run step by
step — a 3-token first step, then 10 single-token steps feeding present.* back as past (logits at every step,
tolerance 1e-4); and 32 tokens from optimum's ORTModelForSeq2SeqLM.generate() on trex's folder, greedy and beam-4,
equal to transformers' generate(). Also the folder's companion files, and bad inputs.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import fixtures as fx
import seq2seq_fixtures as sfx

ENC_TOL = 1e-5
TOL = 1e-4
STEPS = 10
NEW_TOKENS = 32


def export(ckpt, out_dir, *extra):
    r = fx.run_trex("export", "--model", ckpt, *extra, out_dir)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return out_dir


def reference_steps(model, ids, mask, first, steps):
    """transformers eager: encoder, a first decoder step over `first`, then `steps` greedy single-token steps."""
    import torch

    with torch.no_grad():
        enc = model.get_encoder()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        out = model(encoder_outputs=enc, attention_mask=torch.from_numpy(mask),
                    decoder_input_ids=torch.from_numpy(first), use_cache=True)
        logits, tokens = [out.logits.numpy()], []
        for _ in range(steps):
            nxt = out.logits[:, -1, :].argmax(-1, keepdim=True)
            tokens.append(nxt.numpy())
            out = model(encoder_outputs=enc, attention_mask=torch.from_numpy(mask), decoder_input_ids=nxt,
                        past_key_values=out.past_key_values, use_cache=True)
            logits.append(out.logits.numpy())
    return enc.last_hidden_state.numpy(), logits, tokens


@pytest.mark.parametrize("graph", ["plain", "optimized"])
@pytest.mark.parametrize("name", sorted(sfx.SEQ2SEQ_CASES))
def test_seq2seq_matches_transformers_step_by_step(tmp_path, record_diff, name, graph):
    ckpt = sfx.seq2seq_checkpoint(name)
    out = export(ckpt, tmp_path / "out", *(["--optimize"] if graph == "optimized" else []))
    ref = sfx.reference_model(ckpt)
    ids, mask = sfx.padded_batch()
    first = np.array([[sfx.START, 5, 7], [sfx.START, 9, 4]], dtype=np.int64)
    want_enc, want_logits, tokens = reference_steps(ref, ids, mask, first, STEPS)

    onnx = sfx.OnnxSeq2Seq(out, "" if graph == "plain" else "-optimized")
    got_enc = onnx.encode(ids, mask)
    enc_diff = float(np.abs(got_enc - want_enc).max())
    record_diff(f"seq2seq-{name} {graph} encoder", "last_hidden_state", enc_diff, ENC_TOL)
    assert enc_diff <= ENC_TOL
    worst = float(np.abs(onnx.step(first) - want_logits[0]).max())
    for step in range(STEPS):
        diff = float(np.abs(onnx.step(tokens[step].astype(np.int64)) - want_logits[step + 1]).max())
        assert diff <= TOL, f"decode step {step + 1}: max abs diff {diff:.3e}"
        worst = max(worst, diff)
    record_diff(f"seq2seq-{name} {graph} decoder (3 + {STEPS} steps)", "logits", worst, TOL)
    assert worst <= TOL


@pytest.mark.parametrize("beams", [1, 4])
@pytest.mark.parametrize("name", sfx.OPTIMUM_CASES)
def test_optimum_generate_equals_transformers(tmp_path, name, beams):
    """optimum's ORTModelForSeq2SeqLM loads trex's folder as it is; generate() gives transformers' tokens."""
    import torch
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    ckpt = sfx.seq2seq_checkpoint(name)
    out = export(ckpt, tmp_path / "out")
    ref = sfx.reference_model(ckpt)
    ort_model = ORTModelForSeq2SeqLM.from_pretrained(out, use_cache=True)
    assert ort_model.decoder.is_merged and ort_model.decoder_with_past is None
    ids, mask = sfx.padded_batch(seed=13)
    args = dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS, num_beams=beams, do_sample=False)
    with torch.no_grad():
        want = ref.generate(**args).numpy()
        got = ort_model.generate(**args).numpy()
    assert got.shape[1] > NEW_TOKENS
    assert np.array_equal(got, want), f"trex {got.tolist()}\ntransformers {want.tolist()}"


def test_output_folder_is_complete(tmp_path):
    ckpt = sfx.seq2seq_checkpoint("marian")
    out = export(ckpt, tmp_path / "nested" / "folder", "--pipeline", "translation_en_to_de")
    names = {p.name for p in out.iterdir()}
    for f in ["encoder_model.onnx", "decoder_model_merged.onnx", "config.json", "generation_config.json",
              "tokenizer.json", "tokenizer_config.json"]:
        assert f in names, f"{f} missing from {sorted(names)}"
    assert json.loads((out / "config.json").read_text()) == json.loads((ckpt / "config.json").read_text())
    import onnx

    for f, graph in [("encoder_model.onnx", "encoder_model"), ("decoder_model_merged.onnx", "decoder_model_merged")]:
        meta = {p.key: p.value for p in onnx.load(str(out / f), load_external_data=False).metadata_props}
        assert meta["pipeline"] == "translation_en_to_de" and meta["graph_name"] == graph
    dec = onnx.load(str(out / "decoder_model_merged.onnx"), load_external_data=False).graph
    ins = [i.name for i in dec.input]
    assert ins[:3] == ["input_ids", "encoder_attention_mask", "encoder_hidden_states"]
    assert ins[3:7] == [f"past_key_values.0.{w}.{kv}" for w in ("decoder", "encoder") for kv in ("key", "value")]
    assert ins[-1] == "use_cache_branch"
    outs = [o.name for o in dec.output]
    assert outs[:5] == ["logits"] + [f"present.0.{w}.{kv}" for w in ("decoder", "encoder") for kv in ("key", "value")]


@pytest.mark.parametrize("graph", ["plain", "optimized"])
def test_cross_attention_cache_is_read_in_place(tmp_path, graph):
    """A decode step does not copy the cross-attention cache: past_key_values.*.encoder.* feed only the attention
    MatMuls (through a Transpose for the keys), never a Concat, and their present.* outputs are the projection of the
    encoder rows alone, empty at a step with a cache (checked at every step of the step-by-step tests too)."""
    import onnx

    suffix = "" if graph == "plain" else "-optimized"
    out = export(sfx.seq2seq_checkpoint("bart"), tmp_path / "out", *([] if graph == "plain" else ["--optimize"]))
    dec = onnx.load(str(out / f"decoder_model_merged{suffix}.onnx"), load_external_data=False).graph
    consumers: dict[str, list[str]] = {}
    for n in dec.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    cross = [i.name for i in dec.input if ".encoder." in i.name]
    assert cross
    for name in cross:
        assert consumers.get(name) and set(consumers[name]) <= {"MatMul", "Transpose", "Shape"}, (name, consumers.get(name))

    onnx_model = sfx.OnnxSeq2Seq(out, suffix)
    ids, mask = sfx.padded_batch()
    onnx_model.encode(ids, mask)
    first = np.array([[sfx.START], [sfx.START]], dtype=np.int64)
    onnx_model.step(first)
    res = onnx_model.dec.run(None, {**{"input_ids": first, "encoder_hidden_states": onnx_model.enc_out,
                                       "encoder_attention_mask": mask, "use_cache_branch": np.array([True])},
                                    **{n: onnx_model.past[n.replace("past_key_values.", "present.")]
                                       for n in onnx_model.dec_inputs if n.startswith("past_key_values.")}})
    for n, v in zip(onnx_model.dec_outputs, res):
        if ".encoder." in n:
            assert onnx_model.past[n].shape[2] == ids.shape[1] and v.shape[2] == 0, (n, v.shape)


@pytest.mark.parametrize("graph", ["plain", "optimized"])
@pytest.mark.parametrize("name", ["t5", "marian"])
def test_repeated_encoder_rows(tmp_path, record_diff, name, graph):
    """Beam search feeds the decoder each input's encoder states once per beam. The first step projects the
    cross-attention K/V once per run of equal rows and gathers them back to every row: runs of different lengths,
    and a row equal to a row that is not its neighbour (projected again), give transformers' logits at every step
    and its cross cache rows, bit-equal within each run. The graph detects the runs (NonZero over the row starts)."""
    import onnx
    import torch

    suffix = "" if graph == "plain" else "-optimized"
    ckpt = sfx.seq2seq_checkpoint(name)
    out = export(ckpt, tmp_path / "out", *([] if graph == "plain" else ["--optimize"]))
    dec = onnx.load(str(out / f"decoder_model_merged{suffix}.onnx"), load_external_data=False).graph
    assert any(n.op_type == "NonZero" for n in dec.node)
    ref = sfx.reference_model(ckpt)
    ids2, mask2 = sfx.padded_batch()
    order = [0, 0, 1, 1, 1, 0]
    mask = mask2[order]
    onnx_model = sfx.OnnxSeq2Seq(out, suffix)
    enc2 = onnx_model.encode(ids2, mask2)
    onnx_model.enc_out, onnx_model.mask = enc2[order], mask  # exact copies, as generate() expands them
    with torch.no_grad():
        enc = ref.get_encoder()(input_ids=torch.from_numpy(ids2), attention_mask=torch.from_numpy(mask2))
        enc.last_hidden_state = enc.last_hidden_state[order]
        ids = torch.full((len(order), 1), sfx.START, dtype=torch.int64)
        worst = 0.0
        past = None
        for step in range(4):
            want = ref(encoder_outputs=enc, attention_mask=torch.from_numpy(mask), decoder_input_ids=ids,
                       past_key_values=past, use_cache=True)
            got = onnx_model.step(ids.numpy())
            diff = float(np.abs(got - want.logits.numpy()).max())
            assert diff <= TOL, f"step {step}: max abs diff {diff:.3e}"
            worst = max(worst, diff)
            if step == 0:
                cross_key = want.past_key_values.cross_attention_cache.layers[0].keys
                for n, v in onnx_model.past.items():
                    if ".encoder." in n:
                        assert all(np.array_equal(v[i], v[j]) for i, j in [(0, 1), (2, 3), (3, 4)]), n
                key_diff = float(np.abs(onnx_model.past["present.0.encoder.key"] - cross_key.numpy()).max())
                assert key_diff <= TOL, f"present.0.encoder.key: max abs diff {key_diff:.3e}"
            past = want.past_key_values
            ids = want.logits[:, -1, :].argmax(-1, keepdim=True)
    record_diff(f"seq2seq-{name} {graph} repeated encoder rows (4 steps)", "logits", worst, TOL)


@pytest.mark.parametrize("bias", ["zero", "random"])
def test_tied_head_and_final_logits_bias(tmp_path, record_diff, bias):
    """The tied head reads the shared table through MatMul(h, Transpose(table)) (no second copy in the file); a
    final_logits_bias of zeros (what Marian and BART checkpoints hold) is left out of the graph, a non-zero one is
    added. Logits vs transformers either way."""
    import onnx
    import torch

    ckpt = tmp_path / "ckpt"
    shutil.copytree(sfx.seq2seq_checkpoint("marian"), ckpt)
    model = sfx.reference_model(ckpt)
    if bias == "zero":
        with torch.no_grad():
            model.final_logits_bias.zero_()
        model.save_pretrained(ckpt, safe_serialization=True)
        model = sfx.reference_model(ckpt)
    assert bool((model.final_logits_bias == 0).all()) == (bias == "zero")
    out = export(ckpt, tmp_path / "out")
    dec = onnx.load(str(out / "decoder_model_merged.onnx"), load_external_data=False).graph
    head = [n for n in dec.node if n.name.startswith("/decoder/lm_head/")]
    assert [n.op_type for n in head] == ["Transpose", "MatMul"] + (["Add"] if bias == "random" else [])
    assert head[0].input[0] == "model.shared.weight"
    assert any("final_logits_bias" in i for n in dec.node for i in n.input) == (bias == "random")

    ids, mask = sfx.padded_batch()
    first = np.array([[sfx.START, 5, 7], [sfx.START, 9, 4]], dtype=np.int64)
    _, want_logits, tokens = reference_steps(model, ids, mask, first, 3)
    onnx_model = sfx.OnnxSeq2Seq(out)
    onnx_model.encode(ids, mask)
    worst = float(np.abs(onnx_model.step(first) - want_logits[0]).max())
    for step in range(3):
        worst = max(worst, float(np.abs(onnx_model.step(tokens[step].astype(np.int64)) - want_logits[step + 1]).max()))
    record_diff(f"seq2seq-marian final_logits_bias {bias} (3 + 3 steps)", "logits", worst, TOL)
    assert worst <= TOL


@pytest.mark.parametrize("name", sfx.OPTIMUM_CASES)
def test_graphs_share_one_external_data_file(tmp_path, name):
    """The encoder and the decoder point into one weights.data that holds each tensor once (shared embeddings and
    tied heads are not copied per graph): it is no larger than the checkpoint (+ Marian's sinusoid table)."""
    import onnx

    ckpt = sfx.seq2seq_checkpoint(name)
    out = export(ckpt, tmp_path / "out", "--no-check")
    data = [p.name for p in out.iterdir() if p.name.endswith(".data")]
    assert data == ["weights.data"], data
    locations = set()
    for f in ["encoder_model.onnx", "decoder_model_merged.onnx"]:
        for t in onnx.load(str(out / f), load_external_data=False).graph.initializer:
            locations.update(e.value for e in t.external_data if e.key == "location")
    assert locations == {"weights.data"}
    ckpt_bytes = (ckpt / "model.safetensors").stat().st_size
    assert (out / "weights.data").stat().st_size <= 1.1 * ckpt_bytes


@pytest.mark.parametrize("pipeline", ["translation", "summarization", "text2text-generation", "translation_en_to_fr",
                                      "translation_en_to_ro"])
def test_pipeline_names(tmp_path, pipeline):
    ckpt = sfx.seq2seq_checkpoint("t5")
    out = export(ckpt, tmp_path / "out", "--pipeline", pipeline, "--no-check")
    assert (out / "decoder_model_merged.onnx").exists()


# ----------------------------------------------------------------------------------------------
# Bad input: clear one-line errors, nothing written
# ----------------------------------------------------------------------------------------------

def _copy(tmp_path, name="t5"):
    dst = tmp_path / "ckpt"
    shutil.copytree(sfx.seq2seq_checkpoint(name), dst)
    return dst


def _edit_config(ckpt, **changes):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(changes)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def _expect_error(tmp_path, ckpt, code, words, *extra, out=None):
    out = out or tmp_path / "out"
    r = fx.run_trex("export", "--model", ckpt, *extra, out)
    assert r.returncode == code, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trex: error: "), r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    assert not out.exists(), f"output left behind: {out}"
    return lines[0]


def test_onnx_file_output_refused(tmp_path):
    _expect_error(tmp_path, sfx.seq2seq_checkpoint("bart"), 1, ["must be a folder"],
                  out=tmp_path / "sub" / "model.onnx")
    assert not (tmp_path / "sub").exists()


@pytest.mark.parametrize("flag", ["--static-shape=1,8"])
def test_unsupported_options_refused_up_front(tmp_path, flag):
    _expect_error(tmp_path, sfx.seq2seq_checkpoint("t5"), 1, ["t5"], flag)


def test_torchscript_refused(tmp_path):
    out = tmp_path / "m.pt"
    r = fx.run_trex("export", "--model", sfx.seq2seq_checkpoint("marian"), "--format", "torchscript", out)
    assert r.returncode == 1 and "torchscript" in r.stderr.lower() and "marian" in r.stderr, r.stderr
    assert not out.exists()


def test_bad_feed_forward_proj(tmp_path):
    ckpt = _copy(tmp_path)
    _edit_config(ckpt, feed_forward_proj="gated-gelu-x")
    _expect_error(tmp_path, ckpt, 2, ["config.json", "feed_forward_proj"])


def test_missing_decoder_layers(tmp_path):
    ckpt = _copy(tmp_path, "bart")
    _edit_config(ckpt, decoder_layers=3)  # the checkpoint holds 2
    _expect_error(tmp_path, ckpt, 2, ["missing", "decoder.layers.2."])


def test_extra_encoder_layers(tmp_path):
    ckpt = _copy(tmp_path)
    _edit_config(ckpt, num_layers=2)  # the checkpoint's encoder holds 3
    _expect_error(tmp_path, ckpt, 2, ["config.json", "more layers", "encoder.block.2."])


def test_untied_head_missing_is_an_error(tmp_path):
    from safetensors.numpy import load_file, save_file

    ckpt = _copy(tmp_path, "t5-v1_1")
    sd = load_file(str(ckpt / "model.safetensors"))
    sd.pop("lm_head.weight")
    save_file(sd, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    _expect_error(tmp_path, ckpt, 2, ["lm_head.weight", "missing"])


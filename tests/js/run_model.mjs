// Loads a local transformers.js folder offline and runs it; used by tests/python/test_layouts.py.
// stdin: {"root": folder holding NAME/, "name": NAME, "dtype": "fp32"|"q8", "mode": "forward"|"generate",
//         "inputs": {input: {"dims": [...], "data": [...]}}, "max_new_tokens": N}
// stdout: {"outputs": {name: {"dims": [...], "data": [...]}}} or {"tokens": [[...], ...]}
import { env, AutoModel, AutoModelForCausalLM, Tensor } from '@huggingface/transformers';

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const req = JSON.parse(Buffer.concat(chunks).toString('utf8'));
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = req.root;
const cls = req.mode === 'generate' ? AutoModelForCausalLM : AutoModel;
const model = await cls.from_pretrained(req.name, { dtype: req.dtype ?? 'fp32', device: 'cpu' });
const feeds = {};
for (const [k, v] of Object.entries(req.inputs))
  feeds[k] = new Tensor('int64', BigInt64Array.from(v.data.map(BigInt)), v.dims);
const plain = (t) => ({ dims: t.dims, data: Array.from(t.data, Number) });
if (req.mode === 'generate') {
  const out = await model.generate({ ...feeds, max_new_tokens: req.max_new_tokens, min_new_tokens: req.max_new_tokens,
                                     do_sample: false, pad_token_id: req.pad_token_id ?? 0 });
  const t = plain(out);
  const rows = [];
  for (let r = 0; r < t.dims[0]; ++r) rows.push(t.data.slice(r * t.dims[1], (r + 1) * t.dims[1]));
  process.stdout.write(JSON.stringify({ tokens: rows }));
} else {
  const out = await model(feeds);
  const res = {};
  for (const [k, v] of Object.entries(out)) if (v instanceof Tensor) res[k] = plain(v);
  process.stdout.write(JSON.stringify({ outputs: res }));
}

"""Generate text from a trained run (batched, KV-cached, any family).

  python tools/sample.py --workdir=runs/default --prompt="ROMEO:" --prompt="To be" \
      --max_new_bytes=200 --temperature=0.8 --top_k=40 --top_p=0.95

Encoder-decoder runs (MrT5 / ByT5) read each --prompt as the encoder's source
(hnet/generate.py generate_from_source) in the format of the run's data.objective
(or --objective): prefix_lm continues the source; span_corruption fills the spans the
source marks with "<X>" (e.g. --prompt="To be, or <X> to be"). --hard_deletion encodes
with MrT5's hard deletion (the later encoder layers run on the kept bytes only); the
deletion ratio of each source is printed when the model has a delete gate.

  python tools/sample.py --workdir=runs/compare/mrt5_prefix_lm_tiny --prompt="ROMEO:" \
      --hard_deletion --max_new_bytes=64 --temperature=0

A prompt may hold any bytes (invalid UTF-8 is passed through as is). Generating past the
length the run was trained on prints a note; a cache that would not fit in memory, or
--max_new_bytes < 1, is an error.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("workdir", "runs/default", "run directory with checkpoints")
flags.DEFINE_multi_string("prompt", ["ROMEO:\n"], "prompt(s); repeat the flag for a batch")
flags.DEFINE_integer("max_new_bytes", 200, "bytes to generate per prompt")
flags.DEFINE_float("temperature", 0.8, "0 = greedy")
flags.DEFINE_integer("top_k", 0, "keep the k most likely bytes (0 = off)")
flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (1 = off)")
flags.DEFINE_integer("seed", 0, "sampling seed")
flags.DEFINE_bool("hard_deletion", False, "MrT5: encode with hard deletion (encode_hard)")
flags.DEFINE_enum("objective", None, ["prefix_lm", "span_corruption"],
                  "encoder-decoder source format (default: the run's data.objective)")
FLAGS = flags.FLAGS

ENCODER_DECODER = ("mrt5", "byt5")  # hnet/models/__init__.py names of encoder-decoders
WORD_MODELS = ("hat", "lyt", "byte2word")  # decode with the host-side word splitter


def sample_words(model, prompts):
  """HAT / word-pooled models: hat.generate, the splitter closing words on the host
  (max_word_size = the model's word slot, as the run's data was split)."""
  from hnet.models import hat
  outs = hat.generate(model, prompts, max_new_bytes=FLAGS.max_new_bytes, seed=FLAGS.seed,
                      temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
                      max_word_size=model.max_word_len)
  return [prompt + out for prompt, out in zip(prompts, outs)], None


def sample_decoder(model, config, prompts):
  if config.model.name in WORD_MODELS:
    return sample_words(model, prompts)
  from hnet.generate import generate
  outs = generate(model, prompts, max_new_bytes=FLAGS.max_new_bytes, seed=FLAGS.seed,
                  temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p)
  return [prompt + out for prompt, out in zip(prompts, outs)], None


def sample_bpe(model, config, prompts):
  """BPE runs (data.layout "bpe"): --max_new_bytes counts tokens here."""
  from hnet.eval.scoring import bpe_tokenizer
  from hnet.generate import generate_bpe
  outs = generate_bpe(model, prompts, bpe_tokenizer(config), max_new_tokens=FLAGS.max_new_bytes,
                      seed=FLAGS.seed, temperature=FLAGS.temperature, top_k=FLAGS.top_k,
                      top_p=FLAGS.top_p)
  notes = [f"{FLAGS.max_new_bytes} BPE tokens at most"] * len(prompts)
  return [prompt + out for prompt, out in zip(prompts, outs)], notes


def sample_encoder_decoder(model, config, prompts):
  from hnet import generate as hgenerate
  objective = FLAGS.objective or config.data.get("objective", "span_corruption")
  if objective == "span_corruption" and not all(hgenerate.SPAN_MARKER in p for p in prompts):
    raise app.UsageError(f"{FLAGS.workdir} was trained on span corruption: mark the missing "
                         "span(s) of each --prompt with <X>, or pass --objective=prefix_lm")
  too_long = [p for p in prompts if len(p) > config.data.seq_len]
  if too_long:
    print(f"note: {len(too_long)} source(s) longer than the {config.data.seq_len} encoder bytes "
          "the run was trained on")
  out = hgenerate.generate_from_source(
      model, prompts, max_new_bytes=FLAGS.max_new_bytes, objective=objective,
      hard_deletion=FLAGS.hard_deletion, seed=FLAGS.seed, temperature=FLAGS.temperature,
      top_k=FLAGS.top_k, top_p=FLAGS.top_p)
  if objective == "prefix_lm":
    texts = [prompt + text for prompt, text in zip(prompts, out.texts)]
  else:
    texts = [f"{text!r}\n".encode() + hgenerate.fill_spans(prompt, text)
             for prompt, text in zip(prompts, out.texts)]
  notes = [f"{objective}, {'hard' if FLAGS.hard_deletion else 'soft'} deletion, "
           f"{out.memory_slots} encoder slots"] * len(prompts)
  if out.deletion_ratios is not None:
    notes = [f"{note}, deletion ratio {ratio:.3f}"
             for note, ratio in zip(notes, out.deletion_ratios)]
  return texts, notes


def _warn_past_context(config, prompts) -> None:
  """A note when the generated sequence runs past the length the run was trained on."""
  if config.model.name in ENCODER_DECODER:
    longest, context = FLAGS.max_new_bytes + 2, config.data.get("decoder_seq_len", 0)
    what = "decoder bytes"
  else:
    longest, context = max(map(len, prompts)) + FLAGS.max_new_bytes + 1, config.data.seq_len
    what = "bytes (prompt + max_new_bytes)"
  if context and longest > context:
    print(f"note: generating {longest} {what}, past the {context} the run was trained on; "
          "the text after that point may degrade")


def main(argv):
  del argv
  from hnet.runs import load_model
  model, config, step = load_model(FLAGS.workdir)
  # argv holds undecodable bytes as surrogate escapes: encode them back to those bytes
  prompts = [p.encode("utf-8", "surrogateescape") for p in FLAGS.prompt]
  _warn_past_context(config, prompts)
  start = time.perf_counter()
  if config.model.name in ENCODER_DECODER:
    texts, notes = sample_encoder_decoder(model, config, prompts)
  elif config.data.get("layout", "bytes") == "bpe":
    texts, notes = sample_bpe(model, config, prompts)
  else:
    texts, notes = sample_decoder(model, config, prompts)
  seconds = time.perf_counter() - start
  for row, (prompt, text) in enumerate(zip(FLAGS.prompt, texts)):
    note = f" | {notes[row]}" if notes else ""
    print(f"--- step {step} | prompt {prompt!r}{note}\n{text.decode('utf-8', errors='replace')}")
  print(f"--- {len(texts)} x {FLAGS.max_new_bytes} bytes in {seconds:.1f}s (including compilation)")


if __name__ == "__main__":
  from hnet import cli
  cli.run(main)

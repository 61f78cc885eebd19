"""Generate text from a trained run (batched, KV-cached, any family).

  python tools/sample.py --workdir=runs/default --prompt="ROMEO:" --prompt="To be" \
      --max_new_bytes=200 --temperature=0.8 --top_k=40 --top_p=0.95
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
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from hnet.generate import generate
  from hnet.runs import load_model
  model, _, step = load_model(FLAGS.workdir)
  start = time.perf_counter()
  outs = generate(model, [p.encode("utf-8") for p in FLAGS.prompt], max_new_bytes=FLAGS.max_new_bytes,
                  seed=FLAGS.seed, temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p)
  seconds = time.perf_counter() - start
  for prompt, out in zip(FLAGS.prompt, outs):
    print(f"--- step {step} | prompt {prompt!r}\n{prompt}{out.decode('utf-8', errors='replace')}")
  print(f"--- {len(outs)} x {FLAGS.max_new_bytes} bytes in {seconds:.1f}s (including compilation)")


if __name__ == "__main__":
  app.run(main)

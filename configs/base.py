"""Shared base of every experiment config. Each experiment file calls get_config()
and changes what it needs; every field can be overridden from the command line:

  python -m hnet.main --config=configs/transformer_tiny.py --config.train.steps=100
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # model init and dropout-free training RNG

  # --- model: `name` picks the family in hnet/models/__init__.py; the rest is its own.
  c.model = ml_collections.ConfigDict()
  c.model.name = "transformer"
  c.model.vocab_size = 264       # 256 bytes + PAD/BOS/EOS, padded to a multiple of 8
  c.model.dim = 256              # residual width
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 4       # < num_heads gives grouped-query attention
  c.model.mlp_dim = 768          # SwiGLU hidden width
  c.model.window = 0             # sliding-window size in positions; 0 = full causal
  c.model.tie_embeddings = False
  c.model.dtype = "float32"      # compute dtype: float32 | bfloat16 (params stay float32)
  c.model.remat = "none"         # recompute blocks in the backward pass: none | full | dots (hnet/layers/remat.py)

  # --- data: see hnet/data/pipeline.py
  c.data = ml_collections.ConfigDict()
  c.data.source = "embedded"     # embedded | files | tfds
  c.data.path = ""               # files: a path, directory or glob of .txt / .jsonl
  c.data.text_key = "text"       # jsonl / tfds feature holding the text
  c.data.tfds_name = ""          # tfds: dataset name, e.g. "tiny_shakespeare"
  c.data.tfds_data_dir = ""      # tfds: data_dir ("" = TFDS default)
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.eval_fraction = 0.02    # embedded/files: held-out fraction of documents
  c.data.layout = "bytes"        # bytes | words | span_corruption | bpe
  c.data.seq_len = 256           # bytes (or tokens) per packed row
  c.data.shuffle_seed = 0
  c.data.num_workers = 0         # grain worker processes (0 = in the main process)

  # --- training
  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 32        # global batch (rows); split over data*fsdp and processes
  c.train.grad_accum = 1         # micro-batches per step (batch_size must divide by it)
  c.train.lr = 3e-3              # peak learning rate
  c.train.schedule = "wsd"       # wsd (warmup-stable-decay) | cosine | constant
  c.train.warmup_steps = 50
  c.train.decay_fraction = 0.2   # wsd: fraction of steps spent in the final decay
  c.train.min_lr_ratio = 0.0     # final lr as a fraction of the peak
  c.train.weight_decay = 0.1
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.grad_clip = 1.0        # global-norm clipping (0 = off)
  # Per-parameter-group lr multipliers: a path regex -> multiplier (the longest matching pattern wins).
  c.train.lr_multipliers = ml_collections.ConfigDict()
  c.train.log_every = 25
  c.train.eval_every = 250
  c.train.eval_batches = 16      # batches of the held-out split per evaluation
  c.train.max_seconds = 0.0      # stop (and checkpoint) after this wall time; 0 = off
  c.train.profile_steps = ""     # "N,M": jax.profiler trace of steps N..M into <workdir>/tb (TensorBoard)
  # Warm start: a run directory (or checkpoint folder) whose parameters, where this model
  # has the same ones, initialise a new run; optimizer, step and data start afresh.
  # Ignored when --workdir already has checkpoints (the run resumes instead).
  c.train.init_from = ""

  # --- checkpoints (orbax)
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 250
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  # --- device mesh: data * fsdp * tensor must equal the device count (-1 = the rest)
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  # --- the pod slice a paper-scale config is sized for (tools/aot_check.py compiles its
  # train step for it on a CPU machine); "" = none. train_bytes / train_days: the run the
  # README's MFU column is worked out for.
  c.pod = ml_collections.ConfigDict()
  c.pod.topology = ""            # e.g. "v5p:4x4x4" (TPU) or "h100:8" (GPUs)
  c.pod.num_slices = 1
  c.pod.train_bytes = 0.0
  c.pod.train_days = 0.0
  return c


def cpu_training(c: ml_collections.ConfigDict, *, steps: int, batch_size: int, lr: float,
                 eval_every: int) -> ml_collections.ConfigDict:
  """The short CPU budget the *_tiny configs share: 30 warmup steps, a log line every
  20 steps, 8 held-out batches per evaluation and a checkpoint at every evaluation."""
  c.train.update(dict(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=30,
                      log_every=20, eval_every=eval_every, eval_batches=8))
  c.checkpoint.every = eval_every
  return c

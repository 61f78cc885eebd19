"""Tiny 1-stage H-Net, sized to train on a 2-core CPU.

  python -m hnet.main --config=configs/hnet_1stage_tiny.py --workdir=runs/hnet_1stage_tiny

Layout [m2, T2, m2], widths (128, 192): a 2-layer Mamba-2 byte encoder/decoder at 128
and a 2-layer Transformer main network at 192 on the chunks; target compression N = 6
(the paper's 1-stage target), chunk capacity 3x the target (seq_len 512 -> 256 slots:
at init about 46% of the bytes are boundaries, so a 2x capacity would drop ~25% of
them in the first steps). Mamba-2 uses d_state 32 / headdim 32 / SSD chunks of 32 here
(the paper's 128 / 64 are in the L/XL configs) to keep the CPU step cheap: about 2 s
per step of 8 x 512 bytes on 2 shared CPU cores (measured at init, machine loaded).
The routing projections train at lr multiplier 0.3 instead of the byte stage's 2.63: over
3 seeds at this budget that raised the word-aligned share of boundaries from 41.7% to
49.0% on average and lowered held-out bpb on every seed (docs/hnet_chunking.md).
`hnet_config` is shared by every H-Net config.
"""
import ml_collections

from configs import base


def hnet_config(c: ml_collections.ConfigDict, *, layout: str, d_model, num_heads, mlp_dim,
                window, target_ratio, capacity_factor=2.0, d_state: int = 128, headdim: int = 64,
                ssd_chunk_size: int = 64,
                router_lr_multiplier: float | None = None) -> ml_collections.ConfigDict:
  """Sets c.model for an H-Net.

  Per-stage lists (outermost first, one entry per level of the layout): d_model,
  num_heads, mlp_dim, window (0 = full attention); per routing stage: target_ratio,
  capacity_factor. The per-stage lr multipliers are computed from these when the
  optimizer is built (hnet.models.layout.stage_lr_multipliers), so command-line
  overrides of widths, targets or router_lr_multiplier apply; entries in
  c.train.lr_multipliers override them rule by rule.
  """
  m = c.model
  # The base config's Transformer fields are scalars; H-Net's are per-stage lists.
  for field in ("dim", "num_layers", "num_kv_heads", "tie_embeddings", "num_heads", "mlp_dim",
                "window"):
    if field in m:
      del m[field]
  m.name = "hnet"
  m.layout = layout                   # string form of the nested layout list
  m.d_model = list(d_model)           # width per stage, may grow inward
  m.num_heads = list(num_heads)
  m.mlp_dim = list(mlp_dim)           # SwiGLU hidden width of the Transformer blocks
  m.window = list(window)             # sliding window per stage (0 = full causal)
  m.target_ratio = list(target_ratio)  # N per routing stage (ratio loss targets 1/N)
  m.capacity_factor = list(capacity_factor) if isinstance(capacity_factor, (list, tuple)) \
      else [float(capacity_factor)] * len(m.target_ratio)  # C = L * factor / N (<= 0: C = L)
  m.ratio_loss_weight = 0.03          # alpha
  m.d_state = d_state                 # Mamba-2
  m.headdim = headdim
  m.expand = 2
  m.d_conv = 4
  m.ssd_chunk_size = ssd_chunk_size
  m.mamba_implementation = "chunked"  # chunked | sequential
  m.implementation = "jnp"            # routing/chunk/dechunk kernels: jnp | pallas
  m.interpret = False                 # Pallas interpret mode (CPU)
  # lr multiplier of the routing projections W_q, W_k (None: their stage's, as in the
  # paper; 0: frozen at their identity init)
  m.router_lr_multiplier = ml_collections.FieldReference(router_lr_multiplier, field_type=float)
  return c


def get_config() -> ml_collections.ConfigDict:
  c = base.get_config()
  hnet_config(c, layout="[m2, T2, m2]", d_model=(128, 192), num_heads=(4, 4), mlp_dim=(0, 512),
              window=(0, 0), target_ratio=(6,), capacity_factor=3.0, d_state=32, headdim=32,
              ssd_chunk_size=32, router_lr_multiplier=0.3)
  c.data.seq_len = 512
  base.cpu_training(c, steps=420, batch_size=8, lr=2e-3, eval_every=140)  # ~6.5 min on 2 CPU cores (0.9 s/step): the quickstart budget
  return c

"""MrT5 tiny: byte encoder-decoder with a delete gate, trainable on CPU.

4 encoder + 1 decoder layers (T5 v1.1 blocks, relative position bias), delete gate
after encoder layer 2, PI controller towards deleting 50% of the encoder bytes.
Data: ByT5 span corruption (15% noise, mean span 20 bytes) over packed rows of
`seq_len` encoder bytes and `decoder_seq_len` decoder positions.
"""
import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  c = base.get_config()
  m = c.model
  m.name = "mrt5"
  m.dim = 128
  m.num_encoder_layers = 4
  m.num_decoder_layers = 1
  m.num_layers = 5                 # informational: encoder + decoder
  m.num_heads = 4
  m.num_kv_heads = 4
  m.head_dim = 32                  # T5 d_kv
  m.mlp_dim = 256                  # gated-GELU hidden width (T5 d_ff)
  m.rel_buckets = 32               # T5 relative position buckets per stack
  m.rel_max_distance = 128
  m.gate_layer = 2                 # delete gate after this many encoder layers (paper: 3)
  m.gate_k = -30.0                 # G = k * sigmoid(.) in (k, 0); hard delete if G < k/2
  # The gate standardises RMSNorm(h) over each document's bytes and starts with logits
  # spread wide across bytes, so the deletion ratio moves smoothly with the gate's bias
  # (docs/mrt5_controller.md: without it the ratio jumps between 0 and 1 at this budget).
  # The paper's init deletes almost nothing at first (bias -10, narrow logits); this one
  # deletes about half from the start.
  m.gate_standardise = True        # standardise RMSNorm(h) over each document's bytes (DeleteGate)
  m.gate_logit_spread = 12.0       # init std of the gate logits across bytes (w std x sqrt(dim))
  m.gate_bias_init = -8.0
  m.gate_into_encoder = True       # False: the gate reads stop_gradient(h) (trains only itself)
  m.gate_binarize_weight = 0.0     # weight of 4 s (1 - s), pushing gates off the threshold
  m.softmax1 = True                # softmax1 (paper eq. 7) in the attention after the gate
  m.gate_alpha = 0.0               # alpha when the batch has no "mrt5_alpha" (controller off)
  m.target_deletion_ratio = 0.5    # PI controller target
  m.controller_kp = 0.05           # PI controller proportional gain (p <- 0.9 p + k_p e)
  m.controller_ki = 1e-5           # PI controller integral gain
  m.controller_two_sided = True    # alpha may go negative (paper: max(0, .)); see mrt5.py
  m.controller_measure = "hard"    # hard: share of G < k/2 | soft: mean(G) / k
  m.hard_delete_fractions = (0.25, 0.5, 0.75, 1.0)  # inference capacity buckets (x L)

  c.data.layout = "span_corruption"
  c.data.seq_len = 256             # encoder positions per packed row
  c.data.decoder_seq_len = 64      # decoder positions per packed row
  c.data.objective = "span_corruption"  # span_corruption | prefix_lm
  c.data.noise_density = 0.15
  c.data.mean_span_length = 20.0

  c.train.batch_size = 16
  c.train.lr = 1e-3
  # The gate's bias (the deletion threshold) moves 10x faster than the rest, its weights
  # and norm 10x slower: the controller then steers the threshold, not the byte ranking.
  c.train.lr_multipliers = {"^gate/bias": 10.0, "^gate/": 0.1}
  return c

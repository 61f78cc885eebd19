"""HAT: Hierarchical Autoregressive Transformer (MODELS.md section 3).

  bytes [B, Lb] -> embed -> encoder (causal, sliding window)        -> enc [B, Lb, De]
  enc -> pooling per word (learned query, RoPE: word position on the query, byte position
         on the keys; only the word's own bytes)                    -> words [B, W, D]
  words -> backbone (Llama blocks over words, no final norm)        -> h [B, W, D]
  shift: pred[w] = h[w-1] (same document) else a learned first-word vector; pred[w] is
         built from words < w only and "predicts word w".
  decoder: x = enc (projected if De != Dd); per layer x += CrossAttn(x, pred[ctx[t]]) then a
         Llama block (causal, sliding window); final RMSNorm; byte head -> logits [B, Lb, V].

The cross-attention has a single key (the one word vector of the byte), so its softmax
is 1 and it reduces exactly to out(value(RMSNorm(pred))): computed once per word
[B, W, Dd] and gathered per byte by the context index, never as an attention.

Which word vector a byte reads (the causality choice). Logits at stream position t
(input x_t) predict targets[t] = x_{t+1}. Position t reads pred[ctx[t]] where ctx[t] is
the word that is *open* after reading x_0..x_t, i.e. the decoder sees the backbone
output of exactly the words that the splitter has finished on the prefix. So:
  - inside word i, bytes predict the next byte of word i from pred[i] (words < i);
  - the last byte of word i predicts the first byte of word i+1 still from pred[i]:
    that word i has ended is only known once x_{t+1} arrives (the leading space of the
    next word, a capital, punctuation ...), so the boundary itself is predicted by the
    byte distribution, and no position conditions on its own target;
  - ctx[t] = batch["open_word_index"][t] when the layout supplies it, else
    batch["word_index"][t]. They differ only where the splitter places a boundary
    before the last character of the open word one to three bytes late (while that
    character is incomplete: " ab" + b"\xc3\x97" -> " ab", "×"; splitter.py, P3):
    there the full-document word_index would let x_t read a word whose end depends on
    x_{t+1}. Layouts built from hnet/text/splitter.py should supply open_word_index.
Every byte of the document is predicted exactly once, from strictly earlier bytes, so
bpb is directly comparable with the byte Transformer.

Generation: `decode_step(cache, ids, finished_lengths)`. The host knows the bytes of
every row and runs the splitter (hnet.text.splitter.WordStream, wrapped by
`WordBoundaryTracker` below): finished_lengths [B, M] holds, in order, the byte lengths
of the words that feeding ids finished (0 = none; the BOS word finishes with the first
byte after it; M = config max_words_per_step, 4 covers every splitter case). The step
appends the byte to the encoder/decoder KV caches (shared index), keeps the encoder
outputs of the open bytes in a per-row buffer, and for each finished word pools it and
runs the backbone once (skipped when no row finished a word), writing each row's
backbone KV at its own word slot (rows finish words at different steps: jnp.where
commits per row). `generate(...)` is the batched sampling loop.
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hnet import bytes as hbytes
from hnet.layers.attention import attend_cache, write_rows
from hnet.layers import linear
from hnet.layers.linear import DEFAULT_STD, Dense, Embed, normal_param
from hnet.layers.norm import RMSNorm
from hnet.layers.pooling import gather_words, make_pooling, pool_stream
from hnet.layers.transformer_block import TransformerBlock
from hnet.models.output import ModelOutput
from hnet.sharding import shard

class WordConditionedBlock(nnx.Module):
  """Decoder layer: x += CrossAttn(x, word vector) (one key: a projection), then a Llama block."""

  def __init__(self, dim: int, word_dim: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs,
               num_kv_heads: int | None = None, window: int | None = None,
               num_layers_for_init: int = 1, dtype=jnp.float32):
    head_dim = dim // num_heads
    out_std = DEFAULT_STD / (2 * num_layers_for_init) ** 0.5
    self.word_norm = RMSNorm(word_dim)
    self.cross_value = Dense(word_dim, num_heads * head_dim, rngs=rngs, axes=("embed", "heads"),
                             dtype=dtype)
    self.cross_out = Dense(num_heads * head_dim, dim, rngs=rngs, axes=("heads", "embed"),
                           std=out_std, dtype=dtype)
    self.block = TransformerBlock(dim, num_heads, mlp_dim, rngs=rngs, num_kv_heads=num_kv_heads,
                                  window=window, num_layers_for_init=num_layers_for_init,
                                  dtype=dtype)

  def word_update(self, words: jax.Array) -> jax.Array:
    """[..., Dw] -> [..., D]: the single-key cross-attention output for each word vector."""
    return self.cross_out(self.cross_value(self.word_norm(words)))


def shift_words(h: jax.Array, first: jax.Array, word_segment_ids: jax.Array) -> jax.Array:
  """h [B, W, D] -> pred [B, W, D]: pred[w] = h[w-1] within a document, else `first` [D]."""
  prev = jnp.concatenate([jnp.zeros_like(h[:, :1]), h[:, :-1]], axis=1)
  same_doc = jnp.concatenate([jnp.zeros_like(word_segment_ids[:, :1], bool),
                              (word_segment_ids[:, 1:] == word_segment_ids[:, :-1])
                              & (word_segment_ids[:, 1:] > 0)], axis=1)
  return jnp.where(same_doc[..., None], prev, first.astype(h.dtype))


def word_metrics(logits: jax.Array, batch: dict[str, jax.Array],
                 num_words: int) -> dict[str, jax.Array]:
  """Teacher-forced next-word exact match from stream-aligned logits [B, L, V].

  A word is right when the argmax at every position whose target is one of its bytes
  equals the target. Target t belongs to the word of input t+1 (word_index). Counted
  are words whose every byte is a masked-in target inside the row: words containing
  the row's first input (their first byte is not a target here) or its last input
  (they may continue in the next row), BOS/EOS words and padding are left out.
  Also bytes_per_word = real bytes / words over the batch.

  Rare words, when the batch has rare_word_mask [B, W] (the words layout adds it: words
  seen at most data.rare_max_count times in the training split, hnet/data/words.py):
  next_word_accuracy_rare = exact match over the counted rare words, and
  rare_word_fraction = counted rare words / counted words.
  """
  wi = batch["word_index"]                                           # [B, L]
  B, L = wi.shape
  target_word = jnp.concatenate([wi[:, 1:], jnp.full((B, 1), -1, wi.dtype)], axis=1)
  valid = (batch["loss_mask"] > 0) & (batch["targets"] < hbytes.NUM_BYTES) & (target_word >= 0)
  wrong = valid & (jnp.argmax(logits, axis=-1) != batch["targets"])
  rows = jnp.broadcast_to(jnp.arange(B)[:, None], (B, L))
  tw = jnp.where(valid, target_word, num_words)                      # out of range -> dropped
  zeros = jnp.zeros((B, num_words), jnp.float32)
  n_bytes = zeros.at[rows, tw].add(1.0, mode="drop")
  n_wrong = zeros.at[rows, tw].add(wrong.astype(jnp.float32), mode="drop")
  edge = (jnp.arange(num_words)[None] == wi[:, :1]) | (jnp.arange(num_words)[None] == wi[:, -1:])
  counted = (n_bytes > 0) & ~edge
  right = counted & (n_wrong == 0)
  real_bytes = jnp.sum((batch["segment_ids"] > 0) & (batch["inputs"] < hbytes.NUM_BYTES))
  words = jnp.sum(batch["word_mask"] > 0)
  metrics = {"next_word_accuracy": jnp.sum(right) / jnp.maximum(jnp.sum(counted), 1),
             "bytes_per_word": real_bytes / jnp.maximum(words, 1)}
  if "rare_word_mask" in batch:
    rare = counted & (batch["rare_word_mask"] > 0)                 # [B, W]
    metrics["next_word_accuracy_rare"] = jnp.sum(right & rare) / jnp.maximum(jnp.sum(rare), 1)
    metrics["rare_word_fraction"] = jnp.sum(rare) / jnp.maximum(jnp.sum(counted), 1)
  return metrics


def block_decode_rows(block: TransformerBlock, x: jax.Array, cache: dict[str, jax.Array],
                      slot: jax.Array, commit: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One new token per row at its own cache slot (rows advance at different rates).

  x [B, 1, D], slot [B] (= the token's position), commit [B] bool (unused: the KV goes
  to `slot` in every row, which stays the row's scratch slot until it commits there;
  a row attends to slots <= slot only). Returns ([B, 1, D], cache [B, K, S, Dh]).
  """
  del commit
  attn = block.attn
  B = x.shape[0]
  S = cache["k"].shape[2]
  q, k, v = attn._project(block.attn_norm(x), slot[:, None])
  new_cache = {"k": write_rows(cache["k"], k, slot), "v": write_rows(cache["v"], v, slot)}
  mask = (jnp.arange(S)[None] <= slot[:, None])[:, None, None, :]                     # [B,1,1,S]
  out = attend_cache(q, new_cache["k"].astype(q.dtype), new_cache["v"].astype(q.dtype), mask)
  x = x + attn.out(out.reshape(B, 1, -1))
  return x + block.mlp(block.mlp_norm(x)), new_cache


# The entries of a decode cache that finishing a word reads or writes (the byte-level
# encoder and decoder caches are not among them and stay out of the conditional below).
WORD_STATE = ("backbone", "num_words", "pred", "buffer", "buffer_pos", "open_ids")


def finish_words(finish_word, state: dict[str, Any], finished_lengths: jax.Array | None,
                 model_name: str) -> tuple[dict[str, Any], jax.Array]:
  """Runs finish_word(word_state, offset [B], length [B]) -> word_state for each of the M
  words this byte finished (finished_lengths [B, M], 0 = none) -> (state, offset [B]: the
  bytes finished in each row, to drop from its buffer). word_state is state's WORD_STATE
  entries. Most bytes finish no word: one conditional skips them all, and inside it word
  m runs only where some row finished an m-th word. Only word_state passes through the
  conditionals (the whole cache did before: XLA copied every layer's KV cache in and out
  of them at every step, 0.5 ms a byte for the tiny HAT)."""
  if finished_lengths is None:
    raise ValueError(f"{model_name}.decode_step needs finished_lengths [B, M]: the byte "
                     "lengths of the words that this byte finished (hat.WordBoundaryTracker "
                     "computes them)")
  lengths = finished_lengths.astype(jnp.int32)

  def finish_all(word_state):
    offset = jnp.zeros(lengths.shape[:1], jnp.int32)
    for m in range(lengths.shape[1]):
      word_state = finish_word(word_state, offset, lengths[:, m]) if m == 0 else jax.lax.cond(
          jnp.any(lengths[:, m] > 0), finish_word, lambda s, o, n: s,
          word_state, offset, lengths[:, m])
      offset = offset + lengths[:, m]
    return word_state

  word_state = {k: state[k] for k in WORD_STATE if k in state}
  with linear.unfused_projections():  # traced into conditionals (see there)
    word_state = jax.lax.cond(jnp.any(lengths > 0), finish_all, lambda s: s, word_state)
  return {**state, **word_state}, jnp.sum(lengths, axis=1)


def backbone_advance(backbone, word_vector: jax.Array, cache: dict[str, Any],
                     active: jax.Array) -> dict[str, Any]:
  """Runs the word backbone on one new word per row (word_vector [B, 1, D]) and commits
  the KV caches, the predicting vector `pred` and `num_words` only where `active` [B]."""
  h = word_vector
  new_backbone = []
  for layer, layer_cache in zip(backbone, cache["backbone"]):
    h, layer_cache = block_decode_rows(layer, h, layer_cache, cache["num_words"], active)
    new_backbone.append(layer_cache)
  pred = jnp.where(active[:, None], h[:, 0].astype(jnp.float32), cache["pred"])
  return {**cache, "backbone": new_backbone, "pred": pred,
          "num_words": cache["num_words"] + active.astype(jnp.int32)}


class HAT(nnx.Module):
  def __init__(self, *, vocab_size: int, encoder_dim: int, encoder_layers: int, encoder_heads: int,
               encoder_mlp_dim: int, dim: int, num_layers: int, num_heads: int, mlp_dim: int,
               decoder_dim: int, decoder_layers: int, decoder_heads: int, decoder_mlp_dim: int,
               max_word_len: int, rngs: nnx.Rngs, encoder_kv_heads: int | None = None,
               num_kv_heads: int | None = None, decoder_kv_heads: int | None = None,
               window: int | None = None, pooling: str = "query", pooling_heads: int | None = None,
               max_words_per_step: int = 4, dtype=jnp.float32):
    self.max_word_len, self.max_words_per_step = max_word_len, max_words_per_step
    self.embed = Embed(vocab_size, encoder_dim, rngs=rngs, dtype=dtype)
    self.encoder = nnx.List([
        TransformerBlock(encoder_dim, encoder_heads, encoder_mlp_dim, rngs=rngs,
                         num_kv_heads=encoder_kv_heads, window=window,
                         num_layers_for_init=encoder_layers, dtype=dtype)
        for _ in range(encoder_layers)])
    self.pooling = make_pooling(pooling, encoder_dim, dim, num_heads=pooling_heads or num_heads,
                                rngs=rngs, dtype=dtype)
    self.backbone = nnx.List([
        TransformerBlock(dim, num_heads, mlp_dim, rngs=rngs, num_kv_heads=num_kv_heads,
                         num_layers_for_init=num_layers, dtype=dtype)
        for _ in range(num_layers)])
    self.first_word = normal_param(rngs, (dim,), ("embed",))
    self.decoder_in = (None if decoder_dim == encoder_dim else
                       Dense(encoder_dim, decoder_dim, rngs=rngs, axes=("embed", "mlp"), dtype=dtype))
    self.decoder = nnx.List([
        WordConditionedBlock(decoder_dim, dim, decoder_heads, decoder_mlp_dim, rngs=rngs,
                             num_kv_heads=decoder_kv_heads, window=window,
                             num_layers_for_init=decoder_layers, dtype=dtype)
        for _ in range(decoder_layers)])
    self.final_norm = RMSNorm(decoder_dim)
    self.head = Dense(decoder_dim, vocab_size, rngs=rngs, axes=("embed", "vocab"), dtype=dtype)

  # --- full forward -------------------------------------------------------------------
  def _decoder_input(self, enc: jax.Array) -> jax.Array:
    return enc if self.decoder_in is None else self.decoder_in(enc)

  def _logits(self, x: jax.Array) -> jax.Array:
    logits = self.head(self.final_norm(x)).astype(jnp.float32)
    return shard(logits, ("batch", "length", "act_vocab"))

  def __call__(self, batch: dict[str, jax.Array]) -> ModelOutput:
    positions, segment_ids = batch["positions"], batch["segment_ids"]
    num_words = batch["word_mask"].shape[1]
    x = shard(self.embed(batch["inputs"]), ("batch", "length", "act_embed"))      # [B, Lb, De]
    for layer in self.encoder:
      x = layer(x, positions, segment_ids)
    word_len = batch["word_bytes"].shape[-1] if "word_bytes" in batch else self.max_word_len
    words = pool_stream(self.pooling, x, batch, num_words, word_len)              # [B, W, D]
    word_segment_ids = batch["word_segment_ids"]
    h = words
    for layer in self.backbone:
      h = layer(h, batch["word_positions"], word_segment_ids)                      # [B, W, D]
    pred = shift_words(h, self.first_word[...], word_segment_ids)                 # [B, W, D]
    context = batch.get("open_word_index", batch["word_index"])                   # [B, Lb]
    y = self._decoder_input(x)                                                     # [B, Lb, Dd]
    for layer in self.decoder:
      y = y + gather_words(layer.word_update(pred), context)
      y = layer.block(y, positions, segment_ids)
    logits = self._logits(y)
    return ModelOutput(logits=logits, metrics=word_metrics(logits, batch, num_words))

  # --- generation ---------------------------------------------------------------------
  def init_cache(self, batch_size: int, max_len: int) -> dict[str, Any]:
    B, Lbuf = batch_size, self.max_word_len + 4
    first = self.first_word[...]
    bb = self.backbone[0].attn if len(self.backbone) else None
    backbone = [bb.init_cache(B, max_len) for _ in self.backbone]  # [B, K, S, Dh]
    enc_dim = self.embed.embedding.shape[1]
    return {"index": jnp.zeros((), jnp.int32),
            "encoder": [layer.init_cache(B, max_len, keys_transposed=True)
                        for layer in self.encoder],
            "decoder": [layer.block.init_cache(B, max_len, keys_transposed=True)
                        for layer in self.decoder],
            "backbone": backbone,
            "num_words": jnp.zeros((B,), jnp.int32),        # words finished (backbone slots used)
            "pred": jnp.broadcast_to(first, (B, first.shape[0])).astype(jnp.float32),
            "buffer": jnp.zeros((B, Lbuf, enc_dim), jnp.float32),   # encoder outputs of open bytes
            "buffer_pos": jnp.zeros((B, Lbuf), jnp.int32),
            "fill": jnp.zeros((B,), jnp.int32)}

  def _finish_word(self, cache: dict[str, Any], offset: jax.Array, length: jax.Array):
    """Pools buffer[offset:offset+length] per row and runs the backbone on it where length > 0."""
    Lw = self.max_word_len
    active = length > 0
    idx = jnp.clip(offset[:, None] + jnp.arange(Lw)[None], 0, cache["buffer"].shape[1] - 1)
    grid = jnp.take_along_axis(cache["buffer"], idx[..., None], axis=1)[:, None]  # [B, 1, Lw, De]
    byte_pos = jnp.take_along_axis(cache["buffer_pos"], idx, axis=1)[:, None]     # [B, 1, Lw]
    mask = (jnp.arange(Lw)[None] < length[:, None])[:, None]                      # [B, 1, Lw]
    h = self.pooling(grid.astype(self.embed.dtype), mask, byte_pos, cache["num_words"][:, None])
    return backbone_advance(self.backbone, h, cache, active)

  def decode_step(self, cache: dict[str, Any], ids: jax.Array, finished_lengths: jax.Array | None = None
                  ) -> tuple[jax.Array, dict[str, Any]]:
    """ids [B], finished_lengths [B, M] (see the module docstring) -> logits [B, V], cache."""
    index = cache["index"]
    x = self.embed(ids[:, None])                                                   # [B, 1, De]
    enc_caches = []
    for layer, layer_cache in zip(self.encoder, cache["encoder"]):
      x, layer_cache = layer.decode(x, layer_cache, index)
      enc_caches.append(layer_cache)
    Lbuf = cache["buffer"].shape[1]
    here = jnp.arange(Lbuf)[None] == cache["fill"][:, None]                       # [B, Lbuf]
    buffer = jnp.where(here[..., None], x.astype(jnp.float32), cache["buffer"])
    buffer_pos = jnp.where(here, index, cache["buffer_pos"])
    state = {**cache, "encoder": enc_caches, "buffer": buffer, "buffer_pos": buffer_pos,
             "fill": cache["fill"] + 1}
    state, offset = finish_words(self._finish_word, state, finished_lengths, "HAT")
    # Drop the finished bytes from the front of each row's buffer.
    idx = jnp.clip(offset[:, None] + jnp.arange(Lbuf)[None], 0, Lbuf - 1)
    state["buffer"] = jnp.take_along_axis(state["buffer"], idx[..., None], axis=1)
    state["buffer_pos"] = jnp.take_along_axis(state["buffer_pos"], idx, axis=1)
    state["fill"] = state["fill"] - offset
    y = self._decoder_input(x)
    dec_caches = []
    for layer, layer_cache in zip(self.decoder, cache["decoder"]):
      y = y + layer.word_update(state["pred"][:, None].astype(y.dtype))
      y, layer_cache = layer.block.decode(y, layer_cache, index)
      dec_caches.append(layer_cache)
    state["decoder"] = dec_caches
    state["index"] = index + 1
    return self._logits(y)[:, 0], state


class WordBoundaryTracker:
  """Host side of generation: per row, the splitter over the bytes fed so far.

  push(ids [B]) -> finished_lengths [B, M] int32 for HAT.decode_step. Row streams start
  with BOS (its own word, finished by the next id); EOS is its own word as well.
  """

  def __init__(self, batch_size: int, max_words_per_step: int = 4, max_word_size: int = 100):
    from hnet.text.splitter import WordStream  # host-only dependency
    self._make = lambda: WordStream(max_word_size)
    self.streams = [self._make() for _ in range(batch_size)]
    self.open_special = [False] * batch_size
    self.M = max_words_per_step

  def push(self, ids) -> np.ndarray:
    out = np.zeros((len(self.streams), self.M), np.int32)
    for row, i in enumerate(np.asarray(ids).tolist()):
      lengths = []
      if self.open_special[row]:          # a BOS/EOS word finishes with the next id
        lengths.append(1)
        self.open_special[row] = False
      if i >= hbytes.NUM_BYTES:           # special id: the open word finishes; its own word
        open_word = self.streams[row].open_word
        if open_word:
          lengths.append(len(open_word))
        self.streams[row] = self._make()
        self.open_special[row] = True
      else:
        lengths.extend(len(w) for w in self.streams[row].push(i))
      if len(lengths) > self.M:
        raise ValueError(f"{len(lengths)} words finished in one step; raise max_words_per_step")
      out[row, :len(lengths)] = lengths
    return out


_TRACKERS: dict[int, WordBoundaryTracker] = {}  # handle -> the tracker of a running call
_NEXT_HANDLE = itertools.count()


@contextlib.contextmanager
def word_tracker(batch_size: int, max_words_per_step: int, max_word_size: int):
  """Registers a WordBoundaryTracker for one sampling call; yields its handle (what the
  compiled loop passes to _push_words) and unregisters it on exit."""
  handle = next(_NEXT_HANDLE) % 2**31
  _TRACKERS[handle] = WordBoundaryTracker(batch_size, max_words_per_step, max_word_size)
  try:
    yield handle
  finally:
    del _TRACKERS[handle]


def _push_words(handle, ids) -> np.ndarray:
  """io_callback of the compiled sampling loop: the words byte ids [B] finished, from
  the tracker of the call that `handle` names -> finished_lengths [B, M] int32."""
  return _TRACKERS[int(handle)].push(ids)


def generate(model: HAT, prompts: Sequence[bytes], *, max_new_bytes: int, seed: int = 0,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             max_word_size: int = 100, stop_at_eos: bool = True) -> list[bytes]:
  """Batched byte sampling (greedy at temperature 0) in hnet.generate's compiled loop:
  one device call per generate, compiled once per model graph, batch bucket, length
  bucket and sampling options. The splitter runs on the host: each step hands the fed
  ids to this call's WordBoundaryTracker through an io_callback and gets the lengths of
  the words they finished (the next step's boundaries depend on the sampled byte). The
  prompt is stepped byte by byte, not prefilled: a one-pass prefill would need the
  forward pass's word layout rebuilt as the decoder's and the backbone's caches.
  stop_at_eos=False samples max_new_bytes per row (benchmarks)."""
  from hnet import generate as hgenerate  # pylint: disable=g-import-not-at-top
  ids = [hbytes.encode(p, add_bos=True) for p in prompts]
  with word_tracker(hgenerate.batch_bucket(len(ids)), model.max_words_per_step,
                    max_word_size) as handle:
    sampled = hgenerate._sample_ids(  # pylint: disable=protected-access
        model, ids, max_new_bytes=max_new_bytes, seed=seed,
        sampling=hgenerate.Sampling(temperature, top_k, top_p),
        eos_id=hbytes.EOS_ID if stop_at_eos else -1,
        host=hgenerate.HostInput(_push_words, model.max_words_per_step), host_handle=handle)
  return [hbytes.decode_bytes(x) for x in sampled]


def build(cfg, rngs: nnx.Rngs) -> HAT:
  g = lambda name, default=None: cfg.get(name, default) or default
  return HAT(vocab_size=cfg.vocab_size, encoder_dim=cfg.encoder_dim,
             encoder_layers=cfg.encoder_layers, encoder_heads=cfg.encoder_heads,
             encoder_mlp_dim=cfg.encoder_mlp_dim, dim=cfg.dim, num_layers=cfg.num_layers,
             num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim, decoder_dim=cfg.decoder_dim,
             decoder_layers=cfg.decoder_layers, decoder_heads=cfg.decoder_heads,
             decoder_mlp_dim=cfg.decoder_mlp_dim, max_word_len=cfg.max_word_len, rngs=rngs,
             encoder_kv_heads=g("encoder_kv_heads"), num_kv_heads=g("num_kv_heads"),
             decoder_kv_heads=g("decoder_kv_heads"), window=g("window"),
             pooling=g("pooling", "query"), pooling_heads=g("pooling_heads"),
             max_words_per_step=g("max_words_per_step", 4),
             dtype=jnp.dtype(cfg.get("dtype", "float32")))

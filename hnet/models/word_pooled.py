"""Word-pooled byte models (MODELS.md section 4): Learn Your Tokens and Byte2Word.

  word_bytes [B, W, Lw] -> byte embeddings -> pooling per word      -> words [B, W, D]
      "cls"   (Learn Your Tokens): 4 learned CLS vectors prepended to the word's bytes,
              a 2-layer bidirectional in-word Transformer, CLS outputs -> word vector;
      "query" (Byte2Word): one learned query per head cross-attends to the word's byte
              embeddings; "mean" also available (hnet/layers/pooling.py).
  words -> causal backbone over words                                -> h [B, W, D]
  shift: pred[w] = h[w-1] (same document) else a learned first-word vector (words < w).
  in-word decoder, all words in parallel: per word w the sequence
      [proj(pred[w]), e(b_0), ..., e(b_{Lw-1})] (Lw+1 slots) through causal Transformer
      blocks restricted to the word; the output at the slot of byte b_k predicts the
      byte that follows b_k in the document.
  Output hidden states are gathered back to the byte stream by (word_index,
  byte_in_word), then RMSNorm + head: logits [B, Lb, V] aligned with batch["targets"].

Alignment and honesty (the choice made here). The previous word's backbone output
predicts the bytes of the next word, teacher forced on its bytes: slot k of word w sees
pred[w] (words < w) and b_0..b_k of word w, and predicts b_{k+1}; the last byte of word
w predicts the first byte of word w+1 (the same rule as HAT). Slot 0 (the pred token)
makes no prediction of its own: predicting b_0 of word w+1 from h[w] would condition
on "word w has ended", which is only known from the next byte itself (a space, a
capital, punctuation ...), a leak worth several bits per word. With this alignment
every byte of the document is predicted exactly once, from earlier bytes only, and the
train loop's cross-entropy over batch["targets"] / batch["loss_mask"] is directly the
bpb of a byte model. next-word exact match (ModelOutput.metrics, see hat.word_metrics)
judges every byte of a word, its first byte included.
Late boundaries (splitter property P3: a multi-byte character that starts a new word is
known to do so only once complete, " ab" + b"\xc3\x97" -> " ab", "×"): byte t reads the
word that is *open* after bytes 0..t, batch["open_word_index"] (as in HAT). Where it
differs from word_index, the byte is a "late" byte: after b"\xc3" the open word is
" ab\xc3", so the b"\xc3" is decoded in the sequence [proj(pred[o]), " ab", b"\xc3"] of
the open word o (pred[o] from words < o), at
in-word slot t - start(o). The open word is at most max_word_size bytes, so these slots
are padding slots of word o's decoder row: the late bytes are written there (the causal
in-word decoder keeps word o's own outputs unchanged). No byte depends on a later one.

Generation: `decode_step(cache, ids, finished_lengths)` with the host-side splitter
(hat.WordBoundaryTracker; finished_lengths [B, M] as in HAT). Per row the cache keeps
the ids of the open bytes (the open word's prefix, [B, Lw + 4]), the predicting vector
pred [B, D] and the backbone KV at the row's own word slot; each finished word is pooled
and runs the backbone once (jnp.where commits per row, skipped when no row finished a
word). The in-word decoder then re-runs on [proj(pred), open bytes] (Lw + 1 slots, the
forward's shapes) and the logits are read at the last open byte: after a late boundary
the new word's 1-4 bytes are re-read with the new vector, as the forward does.
`generate(...)` is HAT's batched sampling loop.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from hnet.bytes import PAD_ID
from hnet.layers import linear
from hnet.layers.linear import Dense, Embed, normal_param
from hnet.layers.norm import RMSNorm
from hnet.layers.pooling import make_pooling, words_to_stream
from hnet.layers.transformer_block import TransformerBlock
from hnet.models import hat
from hnet.models.hat import backbone_advance, finish_words, shift_words, word_metrics
from hnet.models.output import ModelOutput
from hnet.sharding import shard


# Generation runs the in-word decoder over the first SHORT_WORD + 1 positions while every
# row's open word has at most SHORT_WORD bytes (most words), else over all Lw + 1.
SHORT_WORD = 8


class WordPooledLM(nnx.Module):
  def __init__(self, *, vocab_size: int, byte_dim: int, dim: int, num_layers: int, num_heads: int,
               mlp_dim: int, decoder_layers: int, decoder_heads: int, decoder_mlp_dim: int,
               rngs: nnx.Rngs, pooling: str = "cls", pooling_heads: int | None = None,
               pooling_layers: int = 2, num_cls: int = 4, num_kv_heads: int | None = None,
               max_word_len: int = 24, max_words_per_step: int = 4, dtype=jnp.float32):
    # max_word_len: Lw of the generation cache (= the data's bytes_per_word / splitter
    # max_word_size); the forward takes Lw from batch["word_bytes"].
    self.max_word_len, self.max_words_per_step = max_word_len, max_words_per_step
    self.embed = Embed(vocab_size, byte_dim, rngs=rngs, dtype=dtype)
    self.pooling = make_pooling(pooling, byte_dim, dim, num_heads=pooling_heads or decoder_heads,
                                rngs=rngs, num_cls=num_cls, num_layers=pooling_layers,
                                mlp_dim=decoder_mlp_dim, dtype=dtype)
    self.backbone = nnx.List([
        TransformerBlock(dim, num_heads, mlp_dim, rngs=rngs, num_kv_heads=num_kv_heads,
                         num_layers_for_init=num_layers, dtype=dtype)
        for _ in range(num_layers)])
    self.first_word = normal_param(rngs, (dim,), ("embed",))
    self.decoder_in = Dense(dim, byte_dim, rngs=rngs, axes=("embed", "mlp"), dtype=dtype)
    self.decoder = nnx.List([
        TransformerBlock(byte_dim, decoder_heads, decoder_mlp_dim, rngs=rngs,
                         num_layers_for_init=decoder_layers, dtype=dtype)
        for _ in range(decoder_layers)])
    self.final_norm = RMSNorm(byte_dim)
    self.head = Dense(byte_dim, vocab_size, rngs=rngs, axes=("embed", "vocab"), dtype=dtype)

  def _decode_words(self, pred: jax.Array, word_ids: jax.Array, byte_mask: jax.Array) -> jax.Array:
    """In-word decoder: pred [B, W, D], word_ids / byte_mask [B, W, Lw] -> [B, W, Lw, Db],
    the output at each byte's slot of [proj(pred), e(b_0), ..., e(b_{Lw-1})]."""
    B, W, Lw = word_ids.shape
    e = self.embed(word_ids)                                                      # [B, W, Lw, Db]
    Db = e.shape[-1]
    seq = jnp.concatenate([self.decoder_in(pred)[:, :, None], e], axis=2)         # [B, W, Lw+1, Db]
    seq = seq.reshape(B * W, Lw + 1, Db)
    seg = jnp.concatenate([jnp.ones((B, W, 1), jnp.int32), byte_mask.astype(jnp.int32)], axis=2)
    seg = seg.reshape(B * W, Lw + 1)
    pos = jnp.broadcast_to(jnp.arange(Lw + 1), seg.shape)
    for layer in self.decoder:
      seq = layer(seq, pos, seg)
    return seq.reshape(B, W, Lw + 1, Db)[:, :, 1:]

  def __call__(self, batch: dict[str, jax.Array]) -> ModelOutput:
    word_bytes = batch["word_bytes"]                                              # [B, W, Lw]
    B, W, Lw = word_bytes.shape
    byte_mask = jnp.arange(Lw)[None, None] < batch["word_lengths"][..., None]    # [B, W, Lw]
    e = self.embed(word_bytes)                                                    # [B, W, Lw, Db]
    in_word = jnp.broadcast_to(jnp.arange(Lw), (B, W, Lw))
    words = self.pooling(e, byte_mask, in_word, batch["word_positions"])          # [B, W, D]
    words = shard(words, ("batch", "length", "act_embed"))
    h = words
    for layer in self.backbone:
      h = layer(h, batch["word_positions"], batch["word_segment_ids"])
    pred = shift_words(h, self.first_word[...], batch["word_segment_ids"])       # [B, W, D]
    word_index, slot = self._late_bytes_into_words(batch, W, Lw)                  # [B, Lb] each
    rows = jnp.broadcast_to(jnp.arange(B)[:, None], word_index.shape)
    late = word_index != batch["word_index"]
    # late bytes go to padding slots of their open word (dropped where not late)
    drop_w = jnp.where(late, word_index, W)
    dec_ids = jnp.asarray(word_bytes).at[rows, drop_w, slot].set(batch["inputs"], mode="drop")
    dec_mask = byte_mask.at[rows, drop_w, slot].set(True, mode="drop")
    out = self._decode_words(pred, dec_ids, dec_mask)                             # [B, W, Lw, Db]
    y = words_to_stream(out, word_index, slot)                                    # [B, Lb, Db]
    logits = self.head(self.final_norm(y)).astype(jnp.float32)
    logits = shard(logits, ("batch", "length", "act_vocab"))
    return ModelOutput(logits=logits, metrics=word_metrics(logits, batch, W))

  @staticmethod
  def _late_bytes_into_words(batch, W: int, Lw: int) -> tuple[jax.Array, jax.Array]:
    """-> (word, slot) [B, Lb] each: where each byte is decoded. (word_index, byte_in_word)
    except for late bytes (open_word_index < word_index): (open word o, t - start(o)).
    A late byte whose open word does not start in the row within Lw bytes keeps its own
    word (words.py clamps an open word of an earlier row to slot 0: such bytes are read
    in slot 0's decoder row, still from earlier bytes only)."""
    word_index, byte_in_word = jnp.asarray(batch["word_index"]), jnp.asarray(batch["byte_in_word"])
    open_word = jnp.asarray(batch.get("open_word_index", word_index))
    B, L = word_index.shape
    t = jnp.broadcast_to(jnp.arange(L)[None], (B, L))
    rows = jnp.broadcast_to(jnp.arange(B)[:, None], (B, L))
    first = jnp.where(byte_in_word == 0, t, L)
    start = jnp.full((B, W), L, jnp.int32).at[rows, word_index].min(first, mode="drop")  # [B, W]
    open_start = jnp.take_along_axis(start, jnp.clip(open_word, 0, W - 1), axis=1)        # [B, Lb]
    open_slot = t - open_start
    late = (open_word < word_index) & (word_index < W) & (open_slot >= 0) & (open_slot < Lw)
    return jnp.where(late, open_word, word_index), jnp.where(late, open_slot, byte_in_word)

  # --- generation ---------------------------------------------------------------------
  def init_cache(self, batch_size: int, max_len: int) -> dict[str, Any]:
    """max_len: bytes per row (words <= bytes, so also the backbone's word slots)."""
    B = batch_size
    first = self.first_word[...]
    backbone = [layer.attn.init_cache(B, max_len) for layer in self.backbone]  # [B, K, S, Dh]
    return {"index": jnp.zeros((), jnp.int32),
            "backbone": backbone,
            "num_words": jnp.zeros((B,), jnp.int32),        # words finished (backbone slots used)
            "pred": jnp.broadcast_to(first, (B, first.shape[0])).astype(jnp.float32),
            "open_ids": jnp.full((B, self.max_word_len + 4), PAD_ID, jnp.int32),  # open bytes
            "fill": jnp.zeros((B,), jnp.int32)}

  def _finish_word(self, cache: dict[str, Any], offset: jax.Array, length: jax.Array):
    """Pools open_ids[offset:offset+length] per row, runs the backbone where length > 0."""
    Lw = self.max_word_len
    active = length > 0
    idx = jnp.clip(offset[:, None] + jnp.arange(Lw)[None], 0, cache["open_ids"].shape[1] - 1)
    mask = (jnp.arange(Lw)[None] < length[:, None])[:, None]                      # [B, 1, Lw]
    ids = jnp.where(mask[:, 0], jnp.take_along_axis(cache["open_ids"], idx, axis=1), PAD_ID)
    e = self.embed(ids[:, None])                                                   # [B, 1, Lw, Db]
    in_word = jnp.broadcast_to(jnp.arange(Lw), mask.shape)
    h = self.pooling(e, mask, in_word, cache["num_words"][:, None])               # [B, 1, D]
    return backbone_advance(self.backbone, h, cache, active)

  def decode_step(self, cache: dict[str, Any], ids: jax.Array, finished_lengths: jax.Array | None = None
                  ) -> tuple[jax.Array, dict[str, Any]]:
    """ids [B], finished_lengths [B, M] (hat.WordBoundaryTracker) -> logits [B, V], cache."""
    Lbuf, Lw = cache["open_ids"].shape[1], self.max_word_len
    here = jnp.arange(Lbuf)[None] == cache["fill"][:, None]                       # [B, Lbuf]
    state = {**cache, "open_ids": jnp.where(here, ids[:, None], cache["open_ids"]),
             "fill": cache["fill"] + 1}
    state, offset = finish_words(self._finish_word, state, finished_lengths,
                                 type(self).__name__)
    # Drop the finished bytes from the front of each row's open bytes.
    idx = offset[:, None] + jnp.arange(Lbuf)[None]
    open_ids = jnp.take_along_axis(state["open_ids"], jnp.clip(idx, 0, Lbuf - 1), axis=1)
    state["open_ids"] = jnp.where(idx < Lbuf, open_ids, PAD_ID)
    state["fill"] = state["fill"] - offset
    # In-word decoder over [proj(pred), open bytes] (the open word has <= Lw bytes). It is
    # causal, so the output at the open word's last byte reads only the first fill + 1
    # positions: while every row's open word is short, the first SHORT_WORD + 1 give it.
    open_mask = jnp.arange(Lw)[None] < state["fill"][:, None]                     # [B, Lw]
    word_ids = jnp.where(open_mask, state["open_ids"][:, :Lw], PAD_ID)
    last = jnp.clip(state["fill"] - 1, 0, Lw - 1)
    pred = state["pred"][:, None].astype(self.embed.dtype)                        # [B, 1, D]

    def last_byte_output(width):
      def run(pred, word_ids, open_mask, last):
        out = self._decode_words(pred, word_ids[:, None, :width], open_mask[:, None, :width])
        return jnp.take_along_axis(out[:, 0], last[:, None, None], axis=1)        # [B, 1, Db]
      return run

    if Lw > SHORT_WORD:
      with linear.unfused_projections():  # traced into the conditional (see there)
        y = jax.lax.cond(jnp.all(state["fill"] <= SHORT_WORD), last_byte_output(SHORT_WORD),
                         last_byte_output(Lw), pred, word_ids, open_mask, last)
    else:
      y = last_byte_output(Lw)(pred, word_ids, open_mask, last)
    logits = self.head(self.final_norm(y)).astype(jnp.float32)[:, 0]
    state["index"] = cache["index"] + 1
    return logits, state


def generate(model: WordPooledLM, prompts: Sequence[bytes], *, max_new_bytes: int, seed: int = 0,
             temperature: float = 1.0, max_word_size: int | None = None,
             stop_at_eos: bool = True) -> list[bytes]:
  """Batched byte sampling (greedy at temperature 0): HAT's loop (hat.generate) with the
  host-side splitter capped at the model's max_word_len."""
  return hat.generate(model, prompts, max_new_bytes=max_new_bytes, seed=seed,
                      temperature=temperature,
                      max_word_size=max_word_size or model.max_word_len, stop_at_eos=stop_at_eos)


def build(cfg, rngs: nnx.Rngs) -> WordPooledLM:
  default_pooling = "query" if cfg.name == "byte2word" else "cls"
  g = lambda name, default=None: cfg.get(name, default) or default
  return WordPooledLM(vocab_size=cfg.vocab_size, byte_dim=cfg.byte_dim, dim=cfg.dim,
                      num_layers=cfg.num_layers, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
                      decoder_layers=cfg.decoder_layers, decoder_heads=cfg.decoder_heads,
                      decoder_mlp_dim=cfg.decoder_mlp_dim, rngs=rngs,
                      pooling=g("pooling", default_pooling), pooling_heads=g("pooling_heads"),
                      pooling_layers=g("pooling_layers", 2), num_cls=g("num_cls", 4),
                      num_kv_heads=g("num_kv_heads"), max_word_len=g("max_word_len", 24),
                      max_words_per_step=g("max_words_per_step", 4),
                      dtype=jnp.dtype(cfg.get("dtype", "float32")))

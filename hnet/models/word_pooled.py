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
Known limitation: where the splitter places a boundary late (splitter property P3,
"HTTPS"+"e" -> "HTTP","Se"), the 1-3 bytes before the late boundary read a word vector
whose end depends on the next byte; HAT avoids this with batch["open_word_index"], the
in-word decoder here has no slot for bytes beyond its word (rare; counted nowhere yet).

No cached generation here yet (see the report in the commit); HAT has it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hnet.layers.linear import Dense, Embed, normal_param
from hnet.layers.norm import RMSNorm
from hnet.layers.pooling import make_pooling, words_to_stream
from hnet.layers.transformer_block import TransformerBlock
from hnet.models.hat import shift_words, word_metrics
from hnet.models.output import ModelOutput
from hnet.sharding import shard


class WordPooledLM(nnx.Module):
  def __init__(self, *, vocab_size: int, byte_dim: int, dim: int, num_layers: int, num_heads: int,
               mlp_dim: int, decoder_layers: int, decoder_heads: int, decoder_mlp_dim: int,
               rngs: nnx.Rngs, pooling: str = "cls", pooling_heads: int | None = None,
               pooling_layers: int = 2, num_cls: int = 4, num_kv_heads: int | None = None,
               dtype=jnp.float32):
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
    Db = e.shape[-1]
    seq = jnp.concatenate([self.decoder_in(pred)[:, :, None], e], axis=2)         # [B, W, Lw+1, Db]
    seq = seq.reshape(B * W, Lw + 1, Db)
    seg = jnp.concatenate([jnp.ones((B, W, 1), jnp.int32), byte_mask.astype(jnp.int32)], axis=2)
    seg = seg.reshape(B * W, Lw + 1)
    pos = jnp.broadcast_to(jnp.arange(Lw + 1), seg.shape)
    for layer in self.decoder:
      seq = layer(seq, pos, seg)
    out = seq.reshape(B, W, Lw + 1, Db)[:, :, 1:]                                  # [B, W, Lw, Db]
    y = words_to_stream(out, batch["word_index"], batch["byte_in_word"])          # [B, Lb, Db]
    logits = self.head(self.final_norm(y)).astype(jnp.float32)
    logits = shard(logits, ("batch", "length", "act_vocab"))
    return ModelOutput(logits=logits, metrics=word_metrics(logits, batch, W))


def build(cfg, rngs: nnx.Rngs) -> WordPooledLM:
  default_pooling = "query" if cfg.name == "byte2word" else "cls"
  g = lambda name, default=None: cfg.get(name, default) or default
  return WordPooledLM(vocab_size=cfg.vocab_size, byte_dim=cfg.byte_dim, dim=cfg.dim,
                      num_layers=cfg.num_layers, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
                      decoder_layers=cfg.decoder_layers, decoder_heads=cfg.decoder_heads,
                      decoder_mlp_dim=cfg.decoder_mlp_dim, rngs=rngs,
                      pooling=g("pooling", default_pooling), pooling_heads=g("pooling_heads"),
                      pooling_layers=g("pooling_layers", 2), num_cls=g("num_cls", 4),
                      num_kv_heads=g("num_kv_heads"),
                      dtype=jnp.dtype(cfg.get("dtype", "float32")))

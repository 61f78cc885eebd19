"""hnet: byte-level hierarchical language models in JAX/Flax NNX."""

"""Text utilities: the HAT word splitter (hnet.text.splitter)."""
from hnet.text.splitter import (MAX_WORD_SIZE, WordStream, open_word_start, split, split_text,
                                split_with_open_last, splitter_throughput, starts_new_word)

__all__ = ["MAX_WORD_SIZE", "WordStream", "open_word_start", "split", "split_text",
           "split_with_open_last", "splitter_throughput", "starts_new_word"]

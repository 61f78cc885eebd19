"""Learn Your Tokens / Byte2Word <-> HnetWordPooledForCausalLM (remote code): the
conversion lives in hnet/export/word_models.py with HAT's; this module is their entry in
hnet.export.FAMILIES (with their model card notes)."""
from hnet.export.word_models import MODEL_CARD_NOTES_WORD_POOLED as MODEL_CARD_NOTES  # noqa: F401
from hnet.export.word_models import from_hf, to_hf  # noqa: F401

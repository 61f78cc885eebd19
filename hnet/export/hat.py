"""HAT <-> HnetHATForCausalLM (remote code): the conversion lives in
hnet/export/word_models.py with the word-pooled models'; this module is HAT's entry in
hnet.export.FAMILIES (with its model card notes)."""
from hnet.export.word_models import MODEL_CARD_NOTES_HAT as MODEL_CARD_NOTES  # noqa: F401
from hnet.export.word_models import from_hf, to_hf  # noqa: F401

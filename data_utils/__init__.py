"""Tokenizers, templates and datasets: text/image ids in one vocabulary, training rows.

Submodules: sp_tokenizer (sentencepiece), unified_tokenizer (the id layout and query
parser), templates, datasets / configure_data / samplers (training data), lmdb_writer
and row_format (pickle-free LMDB rows), safe_pickle (reading the original's rows).
"""

from .sp_tokenizer import SentencePieceTokenizer, default_txt_tokenizer_path, train_text_tokenizer
from .templates import TASK_TEMPLATES, Code2CodeTemplate, PureTextTemplate, TextCodeTemplate, concat_codes
from .unified_tokenizer import COMMAND_TOKENS, UnifiedTokenizer, get_tokenizer, set_tokenizer

__all__ = [
    "COMMAND_TOKENS",
    "Code2CodeTemplate",
    "PureTextTemplate",
    "SentencePieceTokenizer",
    "TASK_TEMPLATES",
    "TextCodeTemplate",
    "UnifiedTokenizer",
    "concat_codes",
    "default_txt_tokenizer_path",
    "get_tokenizer",
    "set_tokenizer",
    "train_text_tokenizer",
]

"""GPT2Config: every constructor argument of GPT2Model in one typed object.

Field names are GPT2Model's keyword arguments, so ``GPT2Model.from_config(cfg)``
and ``GPT2Model(**dataclasses.asdict(cfg))`` build the same model.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class GPT2Config:
    """The shape and training-time switches of a CogView GPT; the defaults are the original's
    (dropout 0.1, 1089 positions, no memories)."""

    num_layers: int
    """Transformer layers (--num-layers)."""
    vocab_size: int
    """Rows of the tied input/output embedding: the tokenizer's size padded to a multiple
    of --make-vocab-size-divisible-by (times the model-parallel size)."""
    hidden_size: int
    """Width of every hidden state (--hidden-size); the MLP is 4x wider."""
    num_attention_heads: int
    """Attention heads per layer (--num-attention-heads); must divide hidden_size."""
    embedding_dropout_prob: float = 0.1
    """Dropout on word + position embeddings (--hidden-dropout)."""
    attention_dropout_prob: float = 0.1
    """Dropout on attention probabilities (--attention-dropout)."""
    output_dropout_prob: float = 0.1
    """Dropout after the attention and MLP output projections (--hidden-dropout)."""
    max_sequence_length: int = 1089
    """Rows of the position table (--max-position-embeddings); also the training sample length."""
    max_memory_length: int = 0
    """Hidden states kept as memories for the original's incremental path (0 = none)."""
    checkpoint_activations: bool = False
    """Recompute layer activations in the backward pass (saves memory; needed by sparse training)."""
    checkpoint_num_layers: int = 1
    """Layers per activation-checkpoint chunk."""
    parallel_output: bool = True
    """Leave logits split over the model-parallel ranks (the loss gathers them)."""
    query_window: int = 128
    """Sparse attention: queries per window."""
    key_window_times: int = 6
    """Sparse attention: key window length in query windows."""
    num_pivot: int = 768
    """Sparse attention: text pivots every image position attends to."""
    pb_relax_attention: bool = False
    """Scale Q by 1/alpha before QK^T and subtract the row max (the paper's PB-relax), so
    fp16 scores do not overflow."""
    pb_relax_alpha: float = 32.0
    """alpha of pb_relax_attention."""

    @classmethod
    def from_args(cls, args: argparse.Namespace, vocab_size: int) -> "GPT2Config":
        """The model the command line asks for (arguments.get_parser's flags), as the
        original's pretrain_gpt2.get_model builds it; ``vocab_size`` is the padded tokenizer size."""
        return cls(
            num_layers=args.num_layers,
            vocab_size=vocab_size,
            hidden_size=args.hidden_size,
            num_attention_heads=args.num_attention_heads,
            embedding_dropout_prob=args.hidden_dropout,
            attention_dropout_prob=args.attention_dropout,
            output_dropout_prob=args.hidden_dropout,
            max_sequence_length=args.max_position_embeddings,
            max_memory_length=args.max_memory_length,
            checkpoint_activations=args.checkpoint_activations,
            checkpoint_num_layers=args.checkpoint_num_layers,
            parallel_output=True,
            query_window=args.query_window,
            key_window_times=args.key_window_times,
            num_pivot=args.num_pivot,
            pb_relax_attention=args.pb_relax_attention,
            pb_relax_alpha=args.pb_relax_alpha,
        )

"""The sampler (the original's ``filling_sequence``) on top of the KV cache.

A query is a list of ids where -1 marks a token to generate.  Leading known ids
are the prompt; later known ids are "provided" and are fed to the model as they
are.  Which ids may be sampled depends on the mode set by the last [BOI*] /
[EOI*] token: image codes only inside an image, text and command tokens
elsewhere, text only after an [EOI*].

Fixed quirks of the original: command tokens and the vocabulary's padding rows
are never sampled where they cannot belong; top-p works for any batch size;
provided tokens after sampled ones keep the batch (the original collapsed it to one sample);
the [ROI2] position offset is tracked per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .distributed import same_on_every_slice
from .threads import StepThreads

NO_ROI2 = 100000


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0


@dataclass
class Guidance:
    """Classifier-free guidance against the model's own unconditional prior (not in the
    original): each sampled token's logits become ``cond + scale * (cond - prior)``.

    The prior is the same model on ``prefix + seq[start:]``: the query with its condition
    (``seq[:start]``) cut off. A GPT trained on both directions has such a prior for
    free: a text->image row's image follows ``[ROI1] text [size] [BOI1]``, an image->text
    row starts ``[size] [BOI1]``, so ``[size] [BOI1]`` is the image prior; likewise a
    caption follows ``... [EOI1] [ROI1]`` in one and starts at ``[ROI1]`` in the other.
    Scaling up what the condition adds over the prior favours what the condition says
    over what is merely usual (a held-out colour/shape pair over a seen one).

    ``top_k`` > 0 draws the guided token only among the ``top_k`` tokens the conditioned
    model finds most likely (guidance reorders them): the plausibility constraint of
    contrastive decoding, so that guidance cannot pick a token the model itself finds
    unlikely at that point (on the demo model, a code that breaks the shape being drawn).
    """

    scale: float
    start: int
    prefix: Sequence[int] = ()
    top_k: int = 0


@dataclass
class TokenLayout:
    """Where image, text and command ids live in the unified vocabulary."""

    num_image_tokens: int
    num_text_tokens: int
    command_tokens: dict  # name -> id

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "TokenLayout":
        return cls(tokenizer.num_image_tokens, tokenizer.num_text_tokens, dict(tokenizer.command_tokens))

    @property
    def num_tokens(self) -> int:
        return self.num_image_tokens + self.num_text_tokens + len(self.command_tokens)

    def id(self, name: str) -> int:
        return self.command_tokens[name]


def top_k_logits(
    logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0, filter_value: float = -float("inf")
) -> torch.Tensor:
    """Keep logits >= the k-th largest (ties kept) and/or the nucleus of mass top_p.

    Works row by row on [batch, vocab] (the original's top-p only handled one row).
    """
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, filter_value)
    if top_p > 0.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        remove = remove.scatter(-1, sorted_indices, remove)
        logits = logits.masked_fill(remove, filter_value)
    return logits


class _Modes:
    """Allowed id ranges [lo, hi) per mode: each mode is one contiguous block of the
    vocabulary, so sampling only touches that slice of the logits."""

    def __init__(self, layout: TokenLayout):
        i, t = layout.num_image_tokens, layout.num_text_tokens
        self.text = (i, layout.num_tokens)  # text + command tokens, never padding rows
        self.image = (0, i)  # image codes only
        self.text_only = (i, i + t)  # after an image: plain text
        self.boi = {layout.id(n) for n in ("[BOI1]", "[BOI2]", "[BOI3]") if n in layout.command_tokens}
        self.eoi = {layout.id(n) for n in ("[EOI1]", "[EOI2]", "[EOI3]") if n in layout.command_tokens}

    def update(self, mode: Tuple[int, int], token: int) -> Tuple[int, int]:
        return self.image if token in self.boi else (self.text_only if token in self.eoi else mode)


def _positions(start: int, end: int, roi2_offset: torch.Tensor) -> torch.Tensor:
    """Position ids of [start, end) per row with the generation [ROI2] rule."""
    pos = torch.arange(start, end, device=roi2_offset.device).expand(roi2_offset.size(0), -1)
    return torch.where(pos > roi2_offset[:, None], pos - roi2_offset[:, None], pos)


def _mask_other_modes(logits: torch.Tensor, lo: int, ranges: List[Tuple[int, int]]) -> torch.Tensor:
    """-inf outside each row's allowed id range when rows are in different modes."""
    if all(r == ranges[0] for r in ranges):
        return logits
    ids = torch.arange(lo, lo + logits.size(-1), device=logits.device)
    bounds = torch.tensor(ranges, device=logits.device)
    allowed = (ids[None] >= bounds[:, :1]) & (ids[None] < bounds[:, 1:])
    return logits.masked_fill(~allowed, -float("inf"))


def _guided_logits(
    cond: torch.Tensor, prior: torch.Tensor, guidance: Guidance, lo: int, ranges: List[Tuple[int, int]]
) -> torch.Tensor:
    """cond + scale * (cond - prior); with ``guidance.top_k``, -inf outside each row's
    ``top_k`` most likely ids under cond (among the ids its mode allows)."""
    cond = cond.float()
    guided = cond + guidance.scale * (cond - prior.float())
    if guidance.top_k <= 0:
        return guided
    cond = _mask_other_modes(cond, lo, ranges)
    kth = cond.topk(min(guidance.top_k, cond.size(-1)), dim=-1).values[:, -1:]
    return guided.masked_fill(cond < kth, -float("inf"))


def _sample(
    logits: torch.Tensor,
    lo: int,
    ranges: List[Tuple[int, int]],
    config: SamplingConfig,
    generator: Optional[torch.Generator],
):
    """One token per row from its allowed range; ``logits`` hold ids lo, lo+1, ...

    Returns (ids, log-probabilities of the picks).  Sampling is the exponential race
    argmax(p / E), E ~ Exp(1): an exact draw from p that costs one pass over the
    slice (torch.multinomial is much slower on CPU).
    """
    logits = _mask_other_modes(logits.to(torch.promote_types(logits.dtype, torch.float32)), lo, ranges)
    logits = top_k_logits(logits / config.temperature, config.top_k, config.top_p)
    log_probs = F.log_softmax(logits, dim=-1)
    race = torch.empty_like(log_probs).exponential_(generator=generator)
    picked = same_on_every_slice((log_probs.exp() / race).argmax(dim=-1))
    return picked + lo, log_probs.gather(1, picked[:, None]).squeeze(1)


class _Runner:
    """Feeds tokens to the model by one of three algorithms with the same results.

    kv-cache: keys/values kept (ours, default); mems: the original's hidden-state
    memories (every key/value recomputed each step); full: the whole sequence
    recomputed each step (the plain reference).
    """

    def __init__(self, model, mode: str, length: int = 0, threads: Optional[StepThreads] = None):
        if mode not in ("kv-cache", "mems", "full"):
            raise ValueError(f"unknown sampler {mode!r}: use kv-cache, mems or full")
        self.model, self.mode = model, mode
        self.threads = threads  # picks the thread count of one-token steps (generation/threads.py)
        self.cache = model.new_kv_cache(length) if mode == "kv-cache" else None
        self.mems: List[torch.Tensor] = []
        self.fed = 0

    def feed(
        self, tokens: torch.Tensor, end: int, roi2_offset: torch.Tensor, vocab_range: Tuple[int, int]
    ) -> torch.Tensor:
        """Run the model so that it has seen tokens[:, :end]; return the last position's
        logits for ids in ``vocab_range`` (the mems path computes every logit of every
        new position, as the original did, and slices afterwards)."""
        device = tokens.device
        start = 0 if self.mode == "full" else self.fed
        ids = tokens[:, start:end]
        pos = _positions(start, end, roi2_offset)
        mask = torch.ones(1, 1, end, end, device=device).tril_() if start == 0 else 0

        def step() -> torch.Tensor:
            if self.mode == "kv-cache":
                logits, *_ = self.model(ids, pos, mask, kv_cache=self.cache, last_only=True, vocab_range=vocab_range)
            elif self.mode == "mems":
                logits, *self.mems = self.model(ids, pos, mask, None, None, 0, *self.mems)
                logits = logits[..., vocab_range[0] : vocab_range[1]]
            else:
                logits, *_ = self.model(ids, pos, mask, last_only=True, vocab_range=vocab_range)
            return logits

        logits = self.threads.run(step) if self.threads is not None and end - start == 1 else step()
        self.fed = end
        return logits[:, -1]

    def expand(self, rows: int) -> None:
        """One prompt row -> ``rows`` samples."""
        index = torch.zeros(rows, dtype=torch.long)
        if self.cache is not None:
            self.cache.select(index.to(self.cache.device))
        self.mems = [m.expand(rows, *m.shape[1:]).contiguous() for m in self.mems]


@torch.no_grad()
def filling_sequence(
    model,
    seq: Sequence[int],
    batch_size: int,
    layout: TokenLayout,
    config: SamplingConfig = SamplingConfig(),
    device: torch.device = torch.device("cpu"),
    sampler: str = "kv-cache",
    generator: Optional[torch.Generator] = None,
    on_token: Optional[Callable[[int], None]] = None,
    return_scores: bool = False,
    guidance: Optional[Guidance] = None,
    roi2_restart: bool = True,
    threads: Optional[StepThreads] = None,
):
    """Fill every -1 of ``seq`` for ``batch_size`` samples; returns [batch_size, len(seq)] ids.

    ``on_token(rows)`` is called after each sampled position (progress bars).
    ``roi2_restart``: positions restart after [ROI2] (the original's generation rule, for
    models trained so); False keeps counting, for a model whose position table covers
    the whole sequence and that was trained that way (model_config.json says which).
    With ``return_scores`` also returns the summed log-probability of each sample (of
    the distribution sampled from: the guided one under ``guidance``).  ``threads``
    chooses the CPU thread count of one-token steps by timing them.
    """
    known = [int(t) for t in seq]
    length = len(known)
    context = next((p for p, t in enumerate(known) if t < 0), length)
    if context == 0:
        raise ValueError("the query must start with at least one known token")
    prior = None
    if guidance is not None and guidance.scale != 0:
        if not 0 <= guidance.start <= context or len(guidance.prefix) + context - guidance.start < 1:
            raise ValueError(
                "guidance: the prior must start with at least one known token and cut off no token to generate"
            )
        shift = guidance.start - len(guidance.prefix)  # position in seq - position in the prior's sequence
        prior_prefix = torch.tensor([list(guidance.prefix)], dtype=torch.long, device=device).view(1, -1)
        prior = _Runner(model, sampler, length - shift, threads)
        no_offset = torch.full((1,), NO_ROI2, dtype=torch.long, device=device)
    modes = _Modes(layout)
    roi2 = layout.command_tokens.get("[ROI2]") if roi2_restart else None  # None: no offsets
    first_command = layout.num_image_tokens + layout.num_text_tokens
    runner = _Runner(model, sampler, length, threads)
    tokens = torch.tensor([max(t, 0) for t in known], dtype=torch.long, device=device).unsqueeze(0)
    mode = modes.text
    offset = torch.full((1,), NO_ROI2, dtype=torch.long, device=device)
    for p in range(context):
        mode = modes.update(mode, known[p])
        if known[p] == roi2:
            offset.fill_(p)
    scores = torch.zeros(1, device=device)
    modes_per_row = None  # one mode per row once a sampled command token made rows differ
    for p in range(context, length):
        if known[p] >= 0:  # provided token: already in ``tokens``, fed with the next model call
            if modes_per_row is None:
                mode = modes.update(mode, known[p])
            else:
                modes_per_row = [modes.update(m, known[p]) for m in modes_per_row]
            if known[p] == roi2:
                offset.fill_(p)
            continue
        ranges = [mode] * tokens.size(0) if modes_per_row is None else modes_per_row
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
        logits = runner.feed(tokens, p, offset, (lo, hi))
        if prior is not None:
            prior_tokens = torch.cat([prior_prefix.expand(tokens.size(0), -1), tokens[:, guidance.start :]], 1)
            unconditional = prior.feed(prior_tokens, p - shift, no_offset.expand(tokens.size(0)), (lo, hi))
            logits = _guided_logits(logits, unconditional, guidance, lo, ranges)
        if tokens.size(0) == 1 and batch_size > 1:
            runner.expand(batch_size)
            if prior is not None:
                prior.expand(batch_size)
            tokens = tokens.expand(batch_size, -1).clone()
            logits = logits.expand(batch_size, -1)
            offset = offset.expand(batch_size).clone()
            scores = scores.expand(batch_size).clone()
        if len(ranges) != tokens.size(0):
            ranges = ranges * tokens.size(0)
        picked, logp = _sample(logits, lo, ranges, config, generator)
        tokens[:, p] = picked
        scores = scores + logp
        if any(hi > first_command for _, hi in ranges):
            # a sampled [BOI]/[EOI]/[ROI2] changes that row's mode / position offset
            special = picked.tolist()
            if any(t in modes.boi or t in modes.eoi or t == roi2 for t in special):
                modes_per_row = [modes.update(m, t) for m, t in zip(ranges, special)]
                for row, t in enumerate(special):
                    if t == roi2:
                        offset[row] = p
        if on_token is not None:
            on_token(tokens.size(0))
    if tokens.size(0) != batch_size:
        tokens = tokens.expand(batch_size, -1)
        scores = scores.expand(batch_size)
    return (tokens, scores) if return_scores else tokens


def generate_in_chunks(
    model, seq: Sequence[int], batch_size: int, max_inference_batch_size: int, layout: TokenLayout, **kwargs
) -> torch.Tensor:
    """``batch_size`` samples in calls of at most ``max_inference_batch_size`` (last one smaller)."""
    chunks, left = [], batch_size
    while left > 0:
        n = min(left, max_inference_batch_size)
        chunks.append(filling_sequence(model, seq, n, layout, **kwargs))
        left -= n
    return torch.cat(chunks, dim=0)


def count_to_generate(seq: Sequence[int]) -> int:
    """How many tokens a query leaves to sample (the length of a progress bar)."""
    return sum(1 for t in seq if t < 0)

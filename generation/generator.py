"""The generation tasks over one loaded model: text2image, image2text, (low-level)
super-resolution, post-selection and inpainting, one method each.

``generate_samples.py`` feeds it query lines; the demo evaluation drives the same methods,
so every caller samples through one code path.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from arch import CheckpointError
from arch.lean_load import is_safetensors, resolve_weights_file
from common.dtypes import DTYPES

from .config import GenerationConfig
from .distributed import check_checkpoint_parts, check_model_split
from .magnify import magnify, pad_query_text, sr_middle_tokens, sr_window
from .model_setup import load_generation_model
from .outputs import OutputError, append_text, first_sentence, save_debug_grid, save_samples, to_side, unique_folder
from .post_selection import caption_given_image_score, image_given_text_score, inverse_prompt_score
from .queries import (
    SIZE_TOKENS,
    Query,
    QueryError,
    check_command_tokens,
    check_positions,
    parse_region,
    region_mask,
    task_template,
)
from .sampling import Guidance, SamplingConfig, TokenLayout, count_to_generate, generate_in_chunks
from .threads import decoding_threads


class Generator:
    """Holds the model, tokenizer and settings; one method per task."""

    def __init__(self, cfg: GenerationConfig, tokenizer, model):
        self.cfg, self.tokenizer, self.model = cfg, tokenizer, model
        self.device = torch.device(cfg.device)
        self.layout = TokenLayout.from_tokenizer(tokenizer)
        self.config = SamplingConfig(cfg.temperature, cfg.top_k, cfg.top_p)
        self.grid = tokenizer.code_grid_side(cfg.img_size, self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.max_positions = cfg.max_position_embeddings
        # positions restart after [ROI2] unless the checkpoint was trained with them counting on
        self.roi2_restart = cfg.roi2_position_restart
        self.roi2_id = tokenizer["[ROI2]"] if self.roi2_restart else None  # for check_positions
        # called with the rows sampled at each position, beside the terminal bar (the web page's bar)
        self.on_token: Optional[Callable[[int], None]] = None
        # CPU threads of decoding steps: --threads, OMP_NUM_THREADS, else chosen by timing
        self.step_threads = decoding_threads(cfg.device, cfg.threads)

    # ---- helpers ------------------------------------------------------------------------
    def parse(self, text: str, img_size: Optional[int] = None, check: bool = True) -> List[int]:
        check_command_tokens(text, self.tokenizer.command_tokens)
        ids = self.tokenizer.parse_query(text, img_size=img_size or self.cfg.img_size)
        if check:
            check_positions(ids, self.roi2_id, self.max_positions)
        return ids

    def guidance(self, ids: List[int], task: str) -> Optional[Guidance]:
        """--guidance-scale (else the checkpoint's value for ``task``) for a text2image /
        image2text query, None when off. The prior is the query with its condition cut
        off, as the model saw such rows in training: an image-first row starts at
        ``[size] [BOI1]``, a text-first row at ``[ROI1]``."""
        scale, top_k = self.cfg.guidance(task)
        if not scale or task not in ("text2image", "image2text"):
            return None
        if task == "text2image":
            return Guidance(scale, start=ids.index(self.tokenizer["[BOI1]"]) - 1, top_k=top_k)  # the size token
        return Guidance(scale, start=ids.index(self.tokenizer["[ROI1]"]), top_k=top_k)

    def sample(
        self,
        ids: List[int],
        batch_size: Optional[int] = None,
        desc: str = "",
        config: Optional[SamplingConfig] = None,
        guidance: Optional[Guidance] = None,
    ) -> torch.Tensor:
        """``batch_size`` samples of ``ids`` (-1 = to generate); ``config`` overrides the flags'
        temperature / top-k / top-p; ``guidance`` (from ``self.guidance``) steers them."""
        n = batch_size or self.cfg.batch_size
        bar = tqdm(
            total=count_to_generate(ids) * n,
            desc=desc or "tokens",
            unit="tok",
            leave=False,
            mininterval=1.0,
            file=sys.stderr,
            disable=not self.cfg.reports,
        )

        def tick(rows: int) -> None:
            bar.update(rows)
            if self.on_token is not None:
                self.on_token(rows)

        try:
            return generate_in_chunks(
                self.model,
                ids,
                n,
                self.cfg.max_inference_batch_size,
                self.layout,
                config=config or self.config,
                device=self.device,
                sampler=self.cfg.sampler,
                generator=self.generator,
                on_token=tick,
                guidance=guidance,
                roi2_restart=self.roi2_restart,
                threads=self.step_threads,
            )
        finally:
            bar.close()

    def last_image(self, seq: torch.Tensor) -> torch.Tensor:
        _, images = self.tokenizer.DecodeIds(seq.tolist())
        if not images:
            raise QueryError("the sample holds no image to decode")
        return images[-1].float().cpu()

    def out_folder(self, query: Query) -> str:
        """The folder a query's outputs are named after (``save`` makes the name unique)."""
        return os.path.join(self.cfg.output_path, query.id if query.id else query.label)

    def report(self, query: Query, count: int, seconds: float, where: str) -> None:
        print(
            f"line {query.line_number}: {count} image(s) in {seconds:.1f}s "
            f"({seconds / max(1, count):.2f}s per image) -> {where}",
            flush=True,
        )

    def save(self, query: Query, images: List[torch.Tensor], extra_first: List[torch.Tensor] = ()) -> str:
        side = max(im.size(-1) for im in images)
        if self.cfg.debug:
            texts = [query.raw]
            print("\n".join(texts))
            return save_debug_grid(list(extra_first) + images, self.cfg.output_path, query.label, side)
        folder = unique_folder(self.cfg.output_path, query.id if query.id else query.label)
        try:
            save_samples(images, folder, side)
        except OutputError:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only when nothing was written into it
            raise
        return folder

    # ---- tasks --------------------------------------------------------------------------
    def text2image(self, query: Query) -> None:
        ids = self.parse(task_template("text2image", self.grid).format(query.fields[0]))
        start = time.time()
        seqs, scores = self.text2image_sequences(ids, desc=f"line {query.line_number}")
        if not self.cfg.reports:
            return  # another slice of the model: the first one writes
        if scores is not None:
            print(
                f"line {query.line_number}: best {len(seqs)} of {max(len(seqs), self.cfg.post_select)} by post-selection "
                "(log p(text | image)): " + ", ".join(f"{s:.2f}" for s in scores),
                flush=True,
            )
        images = [self.last_image(s) for s in seqs]
        where = self.save(query, images)
        self.report(query, len(images), time.time() - start, where)

    def text2image_sequences(
        self, ids: List[int], batch_size: Optional[int] = None, desc: str = ""
    ) -> Tuple[torch.Tensor, Optional[List[float]]]:
        """``batch_size`` text2image samples of the query ``ids``, best first with their scores
        when --post-select N draws more (max(N, batch_size)) and ranks them by
        ``caption_scores`` (CogView's post-selection); otherwise the samples as drawn and None."""
        n = batch_size or self.cfg.batch_size
        draws = max(n, self.cfg.post_select)
        seqs = self.sample(ids, batch_size=draws, desc=desc, guidance=self.guidance(ids, "text2image"))
        if self.cfg.post_select <= 1:
            return seqs, None
        t = self.tokenizer
        roi1, boi = ids.index(t["[ROI1]"]), ids.index(t["[BOI1]"])
        codes = seqs[:, boi + 1 : boi + 1 + self.grid**2].tolist()
        scores = self.caption_scores(ids[roi1 + 1 : boi - 1], codes)
        order = sorted(range(draws), key=lambda i: -scores[i])[:n]
        return seqs[order], [scores[i] for i in order]

    def caption_scores(self, text_ids: Sequence[int], codes: Sequence[Sequence[int]]) -> List[float]:
        """Post-selection score of each image (its codes) for a text: log p(text | image) by this
        model's image->text direction (``inverse_prompt_score`` of ``[size] [BOI1] codes [EOI1]
        [ROI1] text``); higher is better. QueryError when the row does not fit the positions."""
        t = self.tokenizer
        head = [t[SIZE_TOKENS[self.grid]], t["[BOI1]"]]
        tail = [t["[EOI1]"], t["[ROI1]"], *text_ids]
        check_positions(head + [0] * self.grid**2 + tail, self.roi2_id, self.max_positions)
        if not codes:
            return []
        rows = torch.tensor([head + list(c) + tail for c in codes], device=self.device)
        scores: List[float] = []
        for chunk in rows.split(self.cfg.max_inference_batch_size):
            scores.extend(inverse_prompt_score(self.model, chunk, t["[ROI1]"], t.num_image_tokens).tolist())
        return scores

    def image2text(self, query: Query) -> None:
        ids = self.parse(task_template("image2text", self.grid).format(query.fields[0]))
        start = time.time()
        seqs = self.sample(ids, desc=f"line {query.line_number}", guidance=self.guidance(ids, "image2text"))
        captions = self.captions(ids, seqs)
        if self.cfg.caption_rerank:
            ranked = self.rank_captions(ids, captions)
            captions = [c for _, c in ranked]
        if not self.cfg.reports:
            return
        if self.cfg.caption_rerank:
            weight = self.caption_rerank_weight()
            how = "log p(image | caption)" + (f" + {weight:g} log p(caption | image)" if weight else "")
            print(
                f"line {query.line_number}: ranked by {how}: " + ", ".join(f"{score:.2f}" for score, _ in ranked),
                flush=True,
            )
        for k, caption in enumerate(captions):
            print(f"line {query.line_number} sample {k}: {caption}", flush=True)
        print(f"line {query.line_number}: {len(seqs)} caption(s) in {time.time() - start:.1f}s", flush=True)

    def captions(self, query_ids: List[int], seqs: torch.Tensor) -> List[str]:
        """The caption of each sampled image2text sequence: the text after [ROI1] up to its
        first sentence end."""
        roi1 = query_ids.index(self.tokenizer["[ROI1]"])
        captions = []
        for seq in seqs:
            texts, _ = self.tokenizer.DecodeIds(seq[roi1 + 1 :].tolist())
            captions.append(first_sentence(" ".join(t for t in texts if not t.startswith("["))))
        return captions

    def rank_captions(self, query_ids: List[int], captions: List[str]) -> List[Tuple[float, str]]:
        """(score, caption) pairs, best first: score = log p(image | caption) + w log p(caption |
        image), w = --caption-rerank-weight (0: the first term alone). The image is the codes
        of an image2text query; the first term scores the text->image row ``[ROI1] caption
        [size] [BOI1] codes``, the second the query's own image->text row with the caption.

        Why both (noisy-channel reranking): log p(image | caption) favours captions that name
        what the image shows, but also odd ones the model finds unlikely a priori; the caption
        likelihood keeps them fluent. Measured on the demo model in bench/RESULTS.md."""
        t = self.tokenizer
        boi, eoi = query_ids.index(t["[BOI1]"]), query_ids.index(t["[EOI1]"])
        size, codes = query_ids[boi - 1], query_ids[boi + 1 : eoi]
        texts = [t.EncodeAsIds(c) for c in captions]
        image_rows = [[t["[ROI1]"], *ids, size, t["[BOI1]"], *codes] for ids in texts]
        weight = self.caption_rerank_weight()
        caption_rows = [query_ids[: eoi + 2] + ids for ids in texts] if weight else []  # ... [EOI1] [ROI1] caption
        longest = max(len(r) for r in image_rows + caption_rows)
        if longest > self.max_positions:
            raise QueryError(
                f"a caption is too long to rank: {longest} positions, the model has "
                f"{self.max_positions}; pass --no-caption-rerank"
            )
        scores = image_given_text_score(self.model, image_rows, t["[BOI1]"], t.num_image_tokens)
        if weight:
            scores = scores + weight * caption_given_image_score(
                self.model, caption_rows, t["[ROI1]"], t.num_image_tokens
            )
        return sorted(zip(scores.tolist(), captions), key=lambda pair: -pair[0])

    def caption_rerank_weight(self) -> float:
        """--caption-rerank-weight, else the checkpoint's model_config.json value, else 0."""
        return self.cfg.caption_rerank_weight

    def low_level_sequences(
        self, text: str, path: str, batch_size: Optional[int] = None, desc: str = ""
    ) -> torch.Tensor:
        """Samples of low-level super-resolution: the image read at half img_size, then
        regenerated at img_size (the decoded images are each row's first and last)."""
        template = task_template("low-level super-resolution", self.grid)
        ids = self.sr_text(self.parse(template.format(text, path), img_size=self.cfg.img_size // 2, check=False))
        check_positions(ids, self.roi2_id, self.max_positions)
        return self.sample(ids, batch_size=batch_size, desc=desc)

    def sr_text(self, ids: List[int]) -> List[int]:
        """A super-resolution query with its caption padded as the model was trained
        (model_config.json's sr_text_length; unchanged for the original's models)."""
        return pad_query_text(ids, self.tokenizer.command_tokens, self.cfg.sr_text_length)

    def low_level_super_resolution(self, query: Query) -> None:
        text, path = query.fields
        start = time.time()
        seqs = self.low_level_sequences(text, path, desc=f"line {query.line_number}")
        if not self.cfg.reports:
            return
        images = [self.last_image(s) for s in seqs]
        _, decoded = self.tokenizer.DecodeIds(seqs[0].tolist())
        where = self.save(query, images, extra_first=[decoded[0].float().cpu()] if self.cfg.debug else [])
        self.report(query, len(images), time.time() - start, where)

    def sr_query(self, text: str, path: str) -> Tuple[List[int], torch.Tensor]:
        """(prefix up to [BOI1], low-res codes) of a super-resolution query. The model never
        sees the whole low-res image, only magnify's window sequences, so one window is what
        has to fit its positions."""
        ids = self.sr_text(self.parse(task_template("super-resolution", self.grid).format(text, path), check=False))
        boi = ids.index(self.tokenizer["[BOI1]"])
        prefix, low = ids[: boi + 1], torch.tensor(ids[boi + 1 :])
        window, _ = sr_window(self.grid)
        one_window = (
            prefix + [0] * window**2 + [self.tokenizer[t] for t in sr_middle_tokens(window)] + [-1] * (2 * window) ** 2
        )
        check_positions(one_window, self.roi2_id, self.max_positions)
        return prefix, low

    def magnify_codes(self, prefix: List[int], low: torch.Tensor, desc: str = "window") -> torch.Tensor:
        """One sample of the 2x code grid, window by window (generation/magnify.py)."""
        window, stride = sr_window(self.grid)
        sample = lambda seq: self.sample(seq, batch_size=1, desc=desc)  # noqa: E731
        return magnify(low, prefix, sample, self.tokenizer.command_tokens, window=window, stride=stride)

    def super_resolution(self, query: Query) -> None:
        text, path = query.fields
        prefix, low = self.sr_query(text, path)
        start = time.time()
        codes = [self.magnify_codes(prefix, low)[0] for _ in range(self.cfg.batch_size)]
        if not self.cfg.reports:
            return
        images = [self.tokenizer.img_tokenizer.DecodeIds(hi).float().cpu() for hi in codes]
        side = images[0].size(-1)
        extra = [to_side(self.tokenizer.img_tokenizer.DecodeIds(low).float().cpu(), side)] if self.cfg.debug else []
        path_out = save_debug_grid(
            extra + images, self.cfg.output_path if not query.id else self.out_folder(query), query.label, side
        )
        self.report(query, len(images), time.time() - start, path_out)

    def post_selection(self, query: Query) -> None:
        text, paths = query.fields[0], query.fields[1:]
        template = task_template("post-selection", self.grid)
        rows = [self.parse(template.format(p, text)) for p in paths]
        if len({len(r) for r in rows}) != 1:
            raise QueryError("the images gave code sequences of different lengths")
        seq = torch.tensor(rows, device=self.device)
        scores = []
        for chunk in seq.split(self.cfg.max_inference_batch_size):
            scores.extend(
                inverse_prompt_score(
                    self.model, chunk, self.tokenizer["[ROI1]"], self.tokenizer.num_image_tokens
                ).tolist()
            )
        if not self.cfg.reports:
            return
        os.makedirs(self.cfg.output_path, exist_ok=True)
        out = os.path.join(self.cfg.output_path, f"scores_rank_{self.cfg.data_parallel_rank}.txt")
        append_text(out, query.raw + "\n" + "\t".join(f"{s:.6f}" for s in scores) + "\n")
        print(f"line {query.line_number}: scores {' '.join(f'{s:.3f}' for s in scores)} -> {out}", flush=True)

    def inpainting(self, query: Query) -> None:
        text, path, region_text = query.fields
        region = parse_region(region_text)
        ids = self.parse(task_template("inpainting", self.grid).format(text, path))
        boi = ids.index(self.tokenizer["[BOI1]"])
        original_codes = ids[boi + 1 :]
        codes = [-1 if hole else c for c, hole in zip(original_codes, region_mask(region, self.grid))]
        ids = ids[: boi + 1] + codes
        start = time.time()
        seqs = self.sample(ids, desc=f"line {query.line_number}")
        if not self.cfg.reports:
            return
        images = [self.last_image(s) for s in seqs]
        extra = (
            [self.tokenizer.img_tokenizer.DecodeIds(torch.tensor(original_codes)).float().cpu()]
            if self.cfg.debug
            else []
        )
        where = self.save(query, images, extra_first=extra)
        self.report(query, len(images), time.time() - start, where)

    def run(self, query: Query) -> None:
        handler = {
            "text2image": self.text2image,
            "image2text": self.image2text,
            "low-level super-resolution": self.low_level_super_resolution,
            "super-resolution": self.super_resolution,
            "post-selection": self.post_selection,
            "inpainting": self.inpainting,
        }[self.cfg.task]
        handler(query)


def setup(cfg: GenerationConfig):
    """Seeds, tokenizer and model; raises CheckpointError/ValueError with one-line messages.

    The cheap checks (checkpoint present, input file, task, image size) run before the
    tokenizer and the model are loaded, so a wrong flag costs no loading time."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if not cfg.load:
        raise CheckpointError("no checkpoint: pass --load (e.g. pretrained/cogview/cogview-demo)")
    resolve_weights_file(cfg.load)  # a missing or empty folder is named before its tokenizers
    if not is_safetensors(cfg.load):  # a safetensors file holds the whole model: every slice cuts its own
        check_checkpoint_parts(cfg.load, cfg.model_parallel_size)
    check_input_source(cfg.input_source)
    cfg.check_tokenizer_paths()
    if cfg.task == "raw":
        raise ValueError("--generation-task raw is the inpainting task here: use --generation-task inpainting")
    if not cfg.img_tokenizer_path:
        where = (
            f"{cfg.model_config_path} names none" if cfg.model_config_path else f"{cfg.load} has no model_config.json"
        )
        raise ValueError(
            f"generation needs --img-tokenizer-path (a VQ-VAE checkpoint) to read and write images; {where}"
        )
    from data_utils.unified_tokenizer import UnifiedTokenizer

    try:
        tokenizer = UnifiedTokenizer(cfg.img_tokenizer_path, cfg.txt_tokenizer_path, device=cfg.device)
    except (ValueError, OSError) as exc:
        if cfg.source("img_tokenizer_path") == "file" or cfg.source("txt_tokenizer_path") == "file":
            raise ValueError(f"{exc} (tokenizer paths from {cfg.model_config_path})") from None
        raise
    grid = check_image_size(cfg, tokenizer)
    vocab = tokenizer.padded_vocab_size(cfg.make_vocab_size_divisible_by, 1)
    check_model_split(cfg.num_attention_heads, vocab, cfg.model_parallel_size)
    model = load_generation_model(cfg, vocab, free_memory_bytes(cfg.device))
    check_image_fits(cfg, grid)  # after the weights, so a broken checkpoint is named first
    check_memory(cfg)
    return tokenizer, model


SAMPLING_TASKS = ("text2image", "image2text", "low-level super-resolution", "inpainting")


def free_memory_bytes(device: str) -> Optional[int]:
    """Memory a new allocation can take on ``device`` (GPU: the driver's count; CPU: the
    kernel's MemAvailable, capped by a cgroup limit); None when it cannot be told."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit.isdigit() and free is not None:
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


def check_memory(cfg: GenerationConfig) -> None:
    """The key/value cache of one sampler call (min(--batch-size, --max-inference-batch-size)
    samples, twice with guidance) must fit the free memory: past it the kernel kills the run
    without a word, or the GPU fails every line alike."""
    if cfg.task not in SAMPLING_TASKS:
        return
    free = free_memory_bytes(cfg.device)
    if not free or free <= 0:
        return
    drawn = max(cfg.batch_size, cfg.post_select) if cfg.task == "text2image" else cfg.batch_size
    rows = min(drawn, cfg.max_inference_batch_size)
    per_sample = cfg.num_layers * 2 * cfg.max_position_embeddings * cfg.hidden_size * DTYPES[cfg.dtype].itemsize
    per_sample *= 2 if cfg.guidance(cfg.task)[0] else 1
    per_sample //= cfg.model_parallel_size  # each slice keeps its own heads' keys and values
    if rows * per_sample > 0.8 * free:
        fits = max(1, int(0.5 * free // per_sample))
        raise ValueError(
            f"--max-inference-batch-size {cfg.max_inference_batch_size} with --batch-size {cfg.batch_size}: "
            f"{rows} samples at once need about {rows * per_sample / 2**30:.1f} GiB for the key/value cache, "
            f"and {free / 2**30:.1f} GiB is free on {cfg.device}; lower --max-inference-batch-size "
            f"(e.g. to {fits})"
        )


def check_input_source(source: str) -> None:
    """``interactive`` or a path that can be read as a file (a pipe such as <(...) too)."""
    if source == "interactive":
        return
    if os.path.isdir(source):
        raise ValueError(f"--input-source {source}: is a folder; pass a text file with one query per line")
    if not os.path.exists(source):
        raise ValueError(f"--input-source {source}: no such file (or use 'interactive')")


def check_image_size(cfg: GenerationConfig, tokenizer) -> int:
    """The code grid side the VQ-VAE makes of --img-size; ValueError when no size token
    exists for it (every line would fail the same way)."""
    try:
        grid = tokenizer.code_grid_side(cfg.img_size, cfg.device) if cfg.img_size >= 8 else 0
    except RuntimeError:  # too small for the VQ-VAE's convolutions
        grid = 0
    if grid not in SIZE_TOKENS:
        factor = max(1, round(cfg.img_size / grid)) if grid else 8
        sizes = ", ".join(str(g * factor) for g in sorted(SIZE_TOKENS))
        made = f"the VQ-VAE makes a {grid}x{grid} code grid of it" if grid else "too small for the VQ-VAE"
        raise ValueError(
            f"{cfg.describe('img_size')}: {made}, and only 8, 16, 32 or 64 codes per side have a size "
            f"token; use one of {sizes}"
        )
    return grid


def check_image_fits(cfg: GenerationConfig, grid: int) -> None:
    """An image of ``grid`` x ``grid`` codes must fit the model's positions (super-resolution
    samples smaller windows), else every line would fail the same way."""
    if cfg.task != "super-resolution" and grid * grid + 3 > cfg.max_position_embeddings:
        raise ValueError(
            f"{cfg.describe('img_size')}: {grid * grid} image codes do not fit the model's "
            f"{cfg.max_position_embeddings} positions (max_position_embeddings); use the img_size "
            "the checkpoint was trained at"
        )

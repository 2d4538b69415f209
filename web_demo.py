"""A web page for every generation task, served locally with Gradio.

    ./scripts/web_demo.sh                      # http://127.0.0.1:7860
    python web_demo.py --port 8000 --queue-size 16 --concurrency 2

One process loads the checkpoints once and serves text to image (ranked by post-selection),
image to text, super-resolution, low-level super-resolution and inpainting. Checkpoints
follow the scripts' chain (scripts/generation_common.sh): the released model under
pretrained/cogview/ when present, else the shipped demo model; CHECKPOINT_PATH,
CAPTION_CHECKPOINT_PATH and SR_CHECKPOINT_PATH (or the flags) override. Every tab runs
generation.service, i.e. the Generator that generate_samples.py runs, so a page request
with seed S gives the images the script gives with --seed S for that one prompt.

Requests wait in one bounded queue (--queue-size; a full queue answers "busy"), and each
model runs --concurrency requests at a time (1 on CPU). The page binds to 127.0.0.1 unless
--host says otherwise. Uploads and outputs live in one temporary folder, removed at exit.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import dataclasses
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.abspath(__file__))
PRETRAINED = os.path.join(ROOT, "pretrained", "cogview")
RELEASED_VQVAE = os.path.join(ROOT, "pretrained", "vqvae", "vqvae_hard_biggerset_011.pt")
DEFAULT_SEED = 1234  # arguments.py's --seed default
# per task, the scripts' MAX_INFERENCE_BATCH_SIZE default: samples per sampler call (the
# random stream depends on it, so the page matches the scripts only with the same value)
SCRIPT_CHUNKS = {"text2image": 4, "inpainting": 4, "image2text": 8, "low-level super-resolution": 4}
OUTPUT_MAX_AGE_S = 3600  # a request's files are kept this long for its download links


# ---- checkpoints: the chain of scripts/generation_common.sh -----------------------------
def resolve_checkpoint(released: str, demo: str, override: Optional[str]) -> Optional[str]:
    """``override`` when given, else pretrained/cogview/<released> when present, else
    pretrained/cogview/<demo> when present, else None (resolve_checkpoint in
    scripts/generation_common.sh, which stops with an error instead)."""
    if override:
        return override
    path = os.path.join(PRETRAINED, released)
    if not os.path.exists(path) and os.path.isdir(os.path.join(PRETRAINED, demo)):
        return os.path.join(PRETRAINED, demo)
    return path if os.path.exists(path) else None


def model_args(path: str) -> List[str]:
    """The shape flags generation_common.sh passes for ``path``: none but NLAYERS / NHIDDEN /
    NATT / MAXSEQLEN when the folder has model_config.json, else the released model's shape."""
    env = os.environ
    if os.path.isfile(os.path.join(path, "model_config.json")):
        pairs = [("NLAYERS", "--num-layers"), ("NHIDDEN", "--hidden-size"), ("NATT", "--num-attention-heads")]
        pairs.append(("MAXSEQLEN", "--max-position-embeddings"))
        return [arg for name, flag in pairs if env.get(name) for arg in (flag, env[name])]
    return [
        *("--num-layers", env.get("NLAYERS", "48"), "--hidden-size", env.get("NHIDDEN", "2560")),
        *("--num-attention-heads", env.get("NATT", "40"), "--max-position-embeddings", env.get("MAXSEQLEN", "1089")),
        *("--img-tokenizer-path", RELEASED_VQVAE, "--query-window", "64", "--key-window-times", "4"),
        *("--num-pivot", "256", "--is-sparse", "0"),
    ]


def device_args(device: Optional[str]) -> List[str]:
    """--device (fp16 on a GPU) as the scripts choose it: the GPU DEVICE (default 0) when CUDA
    is available, else the CPU; ``device`` (--device) wins."""
    import torch

    if device:
        return ["--device", device] + (["--fp16"] if device != "cpu" else [])
    if torch.cuda.is_available():
        return ["--device", os.environ.get("DEVICE", "0"), "--fp16"]
    return ["--device", "cpu"]


def load_generator(path: str, device: List[str], temperature: float, top_k: int, top_p: float, extra: Sequence[str]):
    """A Generator for ``path`` with the settings a generation script would pass."""
    from arguments import explicit_dests, get_args
    from generation.config import GenerationConfig
    from generation.generator import Generator, setup

    argv = [
        *("--load", path, *model_args(path), *device),
        *("--temperature", str(temperature), "--top_k", str(top_k), "--top_p", str(top_p)),
        *("--input-source", "interactive", "--seed", str(DEFAULT_SEED)),
        *extra,
    ]
    cfg = GenerationConfig.from_args(get_args(argv), explicit_dests(argv))
    return Generator(cfg, *setup(cfg))


def with_chunk(gen, size: int):
    """``gen`` sampling ``size`` samples per call (a shallow copy: same model)."""
    out = copy.copy(gen)
    out.cfg = dataclasses.replace(gen.cfg, max_inference_batch_size=size)
    return out


@dataclass
class Models:
    """The loaded generators, one per task, and where they came from."""

    text: Any  # text2image and inpainting
    caption: Any  # image2text and post-selection scores
    sr: Any  # super-resolution and low-level super-resolution; None when there is no model
    names: Dict[str, str]

    def for_task(self, task: str, chunk: Optional[int]):
        gen = {"text2image": self.text, "inpainting": self.text, "image2text": self.caption}.get(task, self.sr)
        if gen is None:
            return None
        return with_chunk(gen, chunk or SCRIPT_CHUNKS.get(task, gen.cfg.max_inference_batch_size))


def load_models(args: argparse.Namespace) -> Models:
    """The text, caption and super-resolution models of the chain (one load per folder)."""
    text_path = resolve_checkpoint("cogview-base", "cogview-demo", args.checkpoint)
    if text_path is None:
        raise SystemExit(
            "web_demo.py: error: no checkpoint: put the released CogView model (cogview-base) under "
            "pretrained/cogview/, train the demo models with ./scripts/train_demo.sh, or set CHECKPOINT_PATH."
        )
    # image2text.sh's chain; a CHECKPOINT_PATH given for the text model serves captions too, as in the scripts
    caption_path = args.caption_checkpoint or (
        text_path if args.checkpoint else resolve_checkpoint("cogview-caption", "cogview-demo", None) or text_path
    )
    sr_path = resolve_checkpoint("cogview-sr", "cogview-demo-sr", args.sr_checkpoint)
    device = device_args(args.device)
    extra = ["--trust-checkpoint"] if args.trust_checkpoint else []
    top_p = float(os.environ.get("TOPP", "0"))
    loaded: Dict[Tuple[str, float], Any] = {}

    def load(path: str, temperature: float) -> Any:
        key = (os.path.realpath(path), temperature)
        if key not in loaded:
            print(f"web_demo.py: loading {path}", file=sys.stderr, flush=True)
            loaded[key] = load_generator(path, device, temperature, args.top_k, top_p, extra)
        return loaded[key]

    text = load(text_path, args.temperature)
    caption = load(caption_path, args.temperature)
    sr = None
    if sr_path is None:
        print(
            "web_demo.py: note: no super-resolution model (cogview-sr, cogview-demo-sr); its tabs say so",
            file=sys.stderr,
        )
    else:
        sr = load(sr_path, args.sr_temperature)
    names = {"text": text_path, "caption": caption_path, "sr": sr_path or "none"}
    return Models(text, caption, sr, {k: os.path.relpath(v, ROOT) if v != "none" else v for k, v in names.items()})


# ---- requests --------------------------------------------------------------------------
class Outputs:
    """Per-request folders under one temporary root; folders older than an hour are pruned."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def new(self) -> str:
        self.prune()
        folder = os.path.join(self.root, f"{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:8]}")
        os.makedirs(folder)
        return folder

    def prune(self, max_age: float = OUTPUT_MAX_AGE_S) -> None:
        now = time.time()
        for entry in os.scandir(self.root):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > max_age:
                    shutil.rmtree(entry.path, ignore_errors=True)


def save_png(image: np.ndarray, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    Image.fromarray(image).save(path, format="PNG")
    return path


def whole(value: Any, what: str) -> int:
    """A number field as an int; ValueError (a message on the page) for text, NaN, infinity or
    a fraction, which the API accepts where the page's own fields would not."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the {what} must be a number, not {value!r}") from None
    if not math.isfinite(number) or number != int(number) or abs(number) >= 2**63:
        raise ValueError(f"the {what} must be a whole number below 2^63, not {value!r}")
    return int(number)


def resolve_seed(seed: Any) -> int:
    """The seed field: an integer >= 0; empty or negative picks a random one."""
    if seed is None or seed == "":
        return random.randrange(2**31)
    value = whole(seed, "seed")
    return value if value >= 0 else random.randrange(2**31)


def progress_hook(progress: Any, what: str) -> Callable[[int, int], None]:
    """(done, total) tokens -> the page's bar, at most four updates a second."""
    last = [0.0]

    def hook(done: int, total: int) -> None:
        now = time.monotonic()
        if progress is not None and (done >= total or now - last[0] >= 0.25):
            last[0] = now
            progress((done, total), desc=f"sampling {what}", unit="tokens")

    return hook


def timing(count: int, seconds: float, what: str = "image") -> str:
    plural = "s" if count != 1 else ""
    return f"{count} {what}{plural} in {seconds:.1f} s ({seconds / max(1, count):.2f} s per {what})"


class Page:
    """The handlers behind the tabs: input checks, generation.service, files for the page."""

    def __init__(self, models: Models, outputs: Outputs, max_images: int, chunk: Optional[int]):
        self.models, self.outputs, self.max_images, self.chunk = models, outputs, max_images, chunk

    @contextlib.contextmanager
    def errors(self, task: str) -> Iterator[None]:
        """A bad input or a failed read becomes a message on the page (gr.Error); the server
        keeps serving. Anything else is a bug: gradio logs it and the page says 'Error'."""
        import gradio as gr

        from arch import CheckpointError

        try:
            yield
        except gr.Error:
            raise
        except (ValueError, KeyError, OSError, CheckpointError) as exc:  # QueryError is a ValueError
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            print(f"web_demo.py: {task}: {message}", file=sys.stderr, flush=True)
            raise gr.Error(message, title="Cannot run this request", print_exception=False) from None

    def generator(self, task: str):
        import gradio as gr

        gen = self.models.for_task(task, self.chunk)
        if gen is None:
            raise gr.Error("no super-resolution model is loaded (pretrained/cogview/cogview-sr or cogview-demo-sr)")
        return gen

    def text2image(self, prompt: str, count: float, seed: Any, temperature: float, top_k: float, progress=None):
        from generation import service

        with self.errors("text2image"):
            seed = resolve_seed(seed)
            gen, start = self.generator("text2image"), time.perf_counter()
            results = service.text2image(
                gen,
                prompt,
                whole(count, "number of samples"),
                seed,
                scorer=with_chunk(self.models.caption, gen.cfg.max_inference_batch_size),
                temperature=float(temperature),
                top_k=whole(top_k, "top-k"),
                on_progress=progress_hook(progress, "image tokens"),
                most=self.max_images,
            )
            seconds = time.perf_counter() - start
            folder = self.outputs.new()
            paths = [
                save_png(r.image, folder, f"{rank + 1}-sample{r.index}-score{r.score:.3f}.png")
                for rank, r in enumerate(results)
            ]
            gallery = [(path, f"#{k + 1}  score {r.score:.3f}") for k, (path, r) in enumerate(zip(paths, results))]
            status = (
                f"{timing(len(results), seconds)}, seed {seed}. Ranked best first by post-selection: "
                f"log p(text | image) under the caption direction of `{self.models.names['caption']}` "
                f"(scores {', '.join(f'{r.score:.3f}' for r in results)})."
            )
            return gallery, status, paths

    def image2text(self, image: Optional[str], count: float, seed: Any, progress=None):
        from generation import service

        with self.errors("image2text"):
            seed = resolve_seed(seed)
            gen, start = self.generator("image2text"), time.perf_counter()
            staged = service.stage_image(image, self.outputs.new())
            result = service.image2text(
                gen,
                staged,
                whole(count, "number of samples"),
                seed,
                on_progress=progress_hook(progress, "caption tokens"),
                most=self.max_images,
            )
            seconds = time.perf_counter() - start
            lines = []
            if result.scores is not None:
                lines.append(f"ranked by {result.ranked_by}: " + ", ".join(f"{s:.2f}" for s in result.scores))
            lines += [f"sample {k}: {c}" for k, c in enumerate(result.captions)]
            return "\n".join(lines), f"{timing(len(result.captions), seconds, 'caption')}, seed {seed}."

    def super_resolution(self, text: str, image: Optional[str], seed: Any, progress=None):
        from generation import service

        with self.errors("super-resolution"):
            seed = resolve_seed(seed)
            gen, start = self.generator("super-resolution"), time.perf_counter()
            folder = self.outputs.new()
            staged = service.stage_image(image, folder)
            result = service.super_resolution(
                gen, text, staged, seed, on_progress=progress_hook(progress, "high-resolution tokens")
            )
            seconds = time.perf_counter() - start
            side = result.shape[0]
            baseline = service.bicubic(staged, gen.cfg.img_size, side)
            path = save_png(result, folder, f"super-resolution-{side}px.png")
            status = f"{gen.cfg.img_size} px -> {side} px: {timing(1, seconds)}, seed {seed}."
            return path, baseline, status, [path]

    def low_level(self, text: str, image: Optional[str], count: float, seed: Any, progress=None):
        from generation import service

        with self.errors("low-level super-resolution"):
            seed = resolve_seed(seed)
            gen, start = self.generator("low-level super-resolution"), time.perf_counter()
            folder = self.outputs.new()
            staged = service.stage_image(image, folder)
            images = service.low_level_super_resolution(
                gen,
                text,
                staged,
                whole(count, "number of samples"),
                seed,
                on_progress=progress_hook(progress, "image tokens"),
                most=self.max_images,
            )
            seconds = time.perf_counter() - start
            side, low = images[0].shape[0], gen.cfg.img_size // 2
            baseline = service.bicubic(staged, low, side)
            paths = [save_png(im, folder, f"low-level-{k}.png") for k, im in enumerate(images)]
            status = f"{low} px -> {side} px: {timing(len(images), seconds)}, seed {seed}."
            return paths, baseline, status, paths

    def inpainting(self, text: str, image: Optional[str], box: str, count: float, seed: Any, progress=None):
        from generation import service
        from generation.queries import parse_region

        with self.errors("inpainting"):
            seed = resolve_seed(seed)
            region = parse_region(box or "")
            gen, start = self.generator("inpainting"), time.perf_counter()
            folder = self.outputs.new()
            staged = service.stage_image(image, folder)
            images = service.inpainting(
                gen,
                text,
                staged,
                box,
                whole(count, "number of samples"),
                seed,
                on_progress=progress_hook(progress, "image tokens"),
                most=self.max_images,
            )
            seconds = time.perf_counter() - start
            shown = service.outline(service.as_read(staged, gen.cfg.img_size), region)
            paths = [save_png(im, folder, f"inpainting-{k}.png") for k, im in enumerate(images)]
            return paths, shown, f"{timing(len(images), seconds)}, seed {seed}.", paths


# ---- the page --------------------------------------------------------------------------
def read_lines(path: str) -> List[List[str]]:
    """TAB-separated fields of each non-empty line of an example file of the repo."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return [line.split("\t") for line in f.read().splitlines() if line.strip()]


def build(page: Page, queue_size: int, concurrency: int):
    """The Blocks app: one tab per task, one queue for all, one concurrency group per model."""
    import gradio as gr

    def upload(label: str, elem_id: str):
        """An image upload passed through untouched (image_mode None: no lossy re-encoding) whose
        read errors (not an image, a decompression bomb) are messages on the page. The
        instance's preprocess is wrapped: a gr.Image subclass would make gradio write a
        .pyi stub next to this file."""
        image = gr.Image(
            label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"], elem_id=elem_id
        )
        read = image.preprocess

        def preprocess(payload):
            try:
                return read(payload)
            except Image.DecompressionBombError:
                raise gr.Error("the upload has too many pixels to be read safely", print_exception=False) from None
            except (OSError, ValueError, SyntaxError):
                raise gr.Error("the upload is not an image file Pillow can read", print_exception=False) from None

        image.preprocess = preprocess
        return image

    models, n_max = page.models, page.max_images
    text_cfg = models.text.cfg
    groups = {"text": "text-model", "caption": "caption-model", "sr": "sr-model"}
    if models.caption is models.text:
        groups["caption"] = "text-model"
    run = {"concurrency_limit": concurrency, "show_progress": "full"}

    with gr.Blocks(title="CogView", delete_cache=(600, OUTPUT_MAX_AGE_S), analytics_enabled=False) as app:
        gr.Markdown(
            "## CogView: text to image and back\n"
            f"Models: text to image and inpainting `{models.names['text']}`, captions and post-selection "
            f"`{models.names['caption']}`, super-resolution `{models.names['sr']}`; device `{text_cfg.device}`. "
            f"Requests wait in one queue of at most {queue_size}; each model runs {concurrency} at a time."
        )
        with gr.Tab("Text to image", id="text2image"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Prompt (English or Chinese)", lines=2, elem_id="t2i-prompt")
                    count = gr.Slider(1, n_max, value=min(4, n_max), step=1, label="Images", elem_id="t2i-count")
                    seed = gr.Number(DEFAULT_SEED, precision=0, label="Seed (-1: random)", elem_id="t2i-seed")
                    with gr.Accordion("Advanced", open=False):
                        temperature = gr.Slider(0.05, 2.0, value=text_cfg.temperature, step=0.05, label="Temperature")
                        top_k = gr.Slider(0, 1000, value=text_cfg.top_k, step=1, label="Top-k (0: all tokens)")
                    t2i_run = gr.Button("Generate", variant="primary", elem_id="t2i-run")
                    gr.Examples(read_lines("input.txt"), inputs=[prompt], label="Examples (input.txt)")
                with gr.Column():
                    t2i_gallery = gr.Gallery(
                        height="auto",
                        label="Best first (post-selection score)",
                        format="png",
                        elem_classes="pixelated",
                        columns=4,
                        elem_id="t2i-gallery",
                    )
                    t2i_status = gr.Markdown(elem_id="t2i-status")
                    t2i_files = gr.File(label="Download", file_count="multiple", elem_id="t2i-files")
                    send = gr.Button("Use the best image for super-resolution", size="sm", elem_id="t2i-send")

        with gr.Tab("Image to text", id="image2text"):
            with gr.Row():
                with gr.Column():
                    i2t_image = upload("Image", "i2t-image")
                    i2t_count = gr.Slider(1, n_max, value=min(8, n_max), step=1, label="Captions")
                    i2t_seed = gr.Number(DEFAULT_SEED, precision=0, label="Seed (-1: random)")
                    i2t_run = gr.Button("Caption", variant="primary", elem_id="i2t-run")
                    gr.Examples(read_lines("assets/examples/image2text.txt"), inputs=[i2t_image], label="Examples")
                with gr.Column():
                    i2t_text = gr.Textbox(label="Captions, best first", lines=10, elem_id="i2t-captions")
                    i2t_status = gr.Markdown(elem_id="i2t-status")

        sr_examples = read_lines("assets/examples/super_resolution.txt")
        with gr.Tab("Super-resolution", id="super-resolution"):
            with gr.Row():
                with gr.Column():
                    sr_text = gr.Textbox(label="Caption of the image", elem_id="sr-text")
                    sr_image = upload("Image", "sr-image")
                    sr_seed = gr.Number(DEFAULT_SEED, precision=0, label="Seed (-1: random)")
                    sr_run = gr.Button("Magnify", variant="primary", elem_id="sr-run")
                    gr.Examples(sr_examples, inputs=[sr_text, sr_image], label="Examples")
                with gr.Column():
                    with gr.Row():
                        sr_out = gr.Image(
                            label="Super-resolution", format="png", elem_classes="pixelated", elem_id="sr-out"
                        )
                        sr_bicubic = gr.Image(
                            label="Bicubic, same input", format="png", elem_classes="pixelated", elem_id="sr-bicubic"
                        )
                    sr_status = gr.Markdown(elem_id="sr-status")
                    sr_files = gr.File(label="Download", file_count="multiple")

        with gr.Tab("Low-level super-resolution", id="low-level"):
            with gr.Row():
                with gr.Column():
                    ll_text = gr.Textbox(label="Caption of the image", elem_id="ll-text")
                    ll_image = upload("Image (read at half size)", "ll-image")
                    ll_count = gr.Slider(1, n_max, value=min(2, n_max), step=1, label="Images")
                    ll_seed = gr.Number(DEFAULT_SEED, precision=0, label="Seed (-1: random)")
                    ll_run = gr.Button("Redraw", variant="primary", elem_id="ll-run")
                    gr.Examples(sr_examples, inputs=[ll_text, ll_image], label="Examples")
                with gr.Column():
                    with gr.Row():
                        ll_out = gr.Gallery(
                            height="auto",
                            label="Low-level super-resolution",
                            format="png",
                            elem_classes="pixelated",
                            columns=2,
                            elem_id="ll-out",
                        )
                        ll_bicubic = gr.Image(
                            label="Bicubic, same input",
                            format="png",
                            elem_classes="pixelated",
                            elem_id="ll-bicubic",
                            height=300,
                        )
                    ll_status = gr.Markdown(elem_id="ll-status")
                    ll_files = gr.File(label="Download", file_count="multiple")

        with gr.Tab("Inpainting", id="inpainting"):
            with gr.Row():
                with gr.Column():
                    ip_text = gr.Textbox(label="Prompt: the whole image", elem_id="ip-text")
                    ip_image = upload("Image", "ip-image")
                    ip_box = gr.Textbox(
                        "0,0.5,1,1", label="Box to redraw: x0,y0,x1,y1 in fractions of the side", elem_id="ip-box"
                    )
                    ip_count = gr.Slider(1, n_max, value=min(4, n_max), step=1, label="Images")
                    ip_seed = gr.Number(DEFAULT_SEED, precision=0, label="Seed (-1: random)")
                    ip_run = gr.Button("Redraw the box", variant="primary", elem_id="ip-run")
                    gr.Examples(
                        read_lines("input_inpainting.txt"), inputs=[ip_text, ip_image, ip_box], label="Examples"
                    )
                with gr.Column():
                    with gr.Row():
                        ip_out = gr.Gallery(
                            height="auto",
                            label="Inpainted",
                            format="png",
                            elem_classes="pixelated",
                            columns=2,
                            elem_id="ip-out",
                        )
                        ip_shown = gr.Image(
                            label="Input as read, box outlined", format="png", elem_classes="pixelated", height=300
                        )
                    ip_status = gr.Markdown(elem_id="ip-status")
                    ip_files = gr.File(label="Download", file_count="multiple")

        t2i_inputs = [prompt, count, seed, temperature, top_k]
        t2i_outputs = [t2i_gallery, t2i_status, t2i_files]
        t2i = with_progress(page.text2image)
        t2i_run.click(t2i, t2i_inputs, t2i_outputs, api_name="text2image", concurrency_id=groups["text"], **run)
        prompt.submit(t2i, t2i_inputs, t2i_outputs, api_name=False, concurrency_id=groups["text"], **run)
        send.click(
            best_image, [t2i_gallery, prompt], [sr_image, sr_text, ll_image, ll_text], queue=False, api_name=False
        )
        i2t_run.click(
            with_progress(page.image2text),
            [i2t_image, i2t_count, i2t_seed],
            [i2t_text, i2t_status],
            api_name="image2text",
            concurrency_id=groups["caption"],
            **run,
        )
        sr_run.click(
            with_progress(page.super_resolution),
            [sr_text, sr_image, sr_seed],
            [sr_out, sr_bicubic, sr_status, sr_files],
            api_name="super_resolution",
            concurrency_id=groups["sr"],
            **run,
        )
        ll_run.click(
            with_progress(page.low_level),
            [ll_text, ll_image, ll_count, ll_seed],
            [ll_out, ll_bicubic, ll_status, ll_files],
            api_name="low_level_super_resolution",
            concurrency_id=groups["sr"],
            **run,
        )
        ip_run.click(
            with_progress(page.inpainting),
            [ip_text, ip_image, ip_box, ip_count, ip_seed],
            [ip_out, ip_shown, ip_status, ip_files],
            api_name="inpainting",
            concurrency_id=groups["text"],
            **run,
        )
    app.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    return app


def with_progress(handler: Callable) -> Callable:
    """``handler`` with gradio's progress tracker as its last argument (gradio fills a
    parameter whose default is a gr.Progress)."""
    import gradio as gr

    def run(*inputs, progress=gr.Progress()):  # noqa: B008  (gradio's injection protocol)
        return handler(*inputs, progress=progress)

    run.__name__ = handler.__name__  # not functools.wraps: gradio would read the handler's signature
    return run


def best_image(gallery: Optional[list], prompt: str):
    """The first (best) text-to-image result and its prompt, for both super-resolution tabs."""
    import gradio as gr

    if not gallery:
        raise gr.Error("generate images first")
    first = gallery[0]
    path = first[0] if isinstance(first, (list, tuple)) else first
    path = path.get("path") if isinstance(path, dict) else getattr(path, "path", path)
    return path, prompt, path, prompt


# ---- serving -----------------------------------------------------------------------------
# Gradio's status line says "queue: 3/5 |" while a request waits; this says it in words.
QUEUE_WORDS = r"""<script>
(() => {
  const pattern = /^queue: (\d+)\/\d* \|$/;
  const fix = (node) => {
    const m = pattern.exec((node.nodeValue || "").trim());
    if (!m) return;
    const ahead = Number(m[1]) - 1;
    node.nodeValue = ahead > 0 ? `busy: ${ahead} ahead of you |` : "busy: you are next |";
  };
  const walk = (root) => {
    const it = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let n = it.nextNode(); n; n = it.nextNode()) fix(n);
  };
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "characterData") fix(r.target);
      else r.addedNodes.forEach((n) => (n.nodeType === Node.TEXT_NODE ? fix(n) : walk(n)));
    }
  }).observe(document.documentElement, { subtree: true, childList: true, characterData: true });
})();
</script>"""
# small images (64 px from the demo model) shown large keep sharp pixels; galleries fit their images
CSS = """.pixelated img { image-rendering: pixelated; }
.pixelated .grid-wrap { min-height: 160px !important; height: auto !important; max-height: none !important; }"""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="(default 7860)")
    p.add_argument(
        "--checkpoint",
        default=env.get("CHECKPOINT_PATH"),
        help="text2image/inpainting model: CHECKPOINT_PATH, else cogview-base, else cogview-demo",
    )
    p.add_argument(
        "--caption-checkpoint",
        default=env.get("CAPTION_CHECKPOINT_PATH"),
        help="image2text/post-selection model (default: --checkpoint when given, else image2text.sh's chain)",
    )
    p.add_argument(
        "--sr-checkpoint",
        default=env.get("SR_CHECKPOINT_PATH"),
        help="super-resolution model: SR_CHECKPOINT_PATH, else cogview-sr, else cogview-demo-sr",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or N (default: GPU DEVICE when there is one)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling (released DeepSpeed files)")
    p.add_argument("--temperature", type=float, default=float(env.get("TEMP", "1.0")), help="TEMP, else 1.0")
    p.add_argument(
        "--sr-temperature", type=float, default=float(env.get("TEMP", "1.02")), help="TEMP, else 1.02 (the SR scripts')"
    )
    p.add_argument("--top-k", type=int, default=int(env.get("TOPK", "200")), help="TOPK, else 200")
    p.add_argument("--queue-size", type=int, default=32, help="requests waiting at most; more are told 'busy'")
    p.add_argument("--concurrency", type=int, default=1, help="requests each model runs at once (raise on a GPU)")
    p.add_argument(
        "--max-inference-batch-size", type=int, default=None, help="samples per sampler call (default: the scripts')"
    )
    p.add_argument("--max-images", type=int, default=16, help="most samples one request may ask for")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of the models (default on a CPU: every core but one, which serves the page)",
    )
    p.add_argument("--max-upload", default="10mb", help="largest upload accepted")
    args = p.parse_args(argv)
    for name in ("queue_size", "concurrency", "max_images"):
        if getattr(args, name) < 1:  # the flags just declared, looked up by name
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def temporary_root() -> str:
    """The folder for uploads (gradio's cache) and outputs, removed at exit, SIGTERM included."""
    root = tempfile.mkdtemp(prefix="cogview-web-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one must not break the shutdown
        raise KeyboardInterrupt  # gradio's launch loop closes the server on it; atexit then runs

    signal.signal(signal.SIGTERM, stop)
    return root


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    root = temporary_root()
    print(f"web_demo.py: uploads and outputs under {root} (removed at exit)", file=sys.stderr, flush=True)
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(root, "gradio")  # read when gradio is imported
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, no version check: the page stays offline
    from generation.service import MAX_IMAGE_PIXELS

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Pillow refuses a header beyond twice this, before decoding
    import torch

    on_cpu = args.device == "cpu" or (not args.device and not torch.cuda.is_available())
    if args.threads or on_cpu:
        # a model spinning on every core starves the server's own threads (and is slower for it)
        torch.set_num_threads(args.threads or max(1, len(os.sched_getaffinity(0)) - 1))
    try:
        models = load_models(args)
    except (ValueError, OSError) as exc:
        print(f"web_demo.py: error: {exc}", file=sys.stderr)
        return 1
    page = Page(models, Outputs(os.path.join(root, "outputs")), args.max_images, args.max_inference_batch_size)
    app = build(page, args.queue_size, args.concurrency)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"web_demo.py: note: serving on {args.host}: reachable from other machines", file=sys.stderr)
    app.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=args.max_upload,
        ssr_mode=False,
        mcp_server=False,
        footer_links=["api"],
        show_error=False,
        head=QUEUE_WORDS,
        css=CSS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Image datasets for VQ-VAE training: a folder of image files or an LMDB of encoded images.

LMDB layout (the same key scheme as CogView's token LMDBs): key ``length`` holds the number of
images n as ASCII digits, keys ``"0"`` .. ``"n-1"`` (ASCII) hold the encoded bytes of one image
file each (PNG, JPEG, WebP ...: anything Pillow opens). :func:`write_image_lmdb` writes one.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from vqvae.image_io import normalize, open_image, pil_to_tensor, resize_shorter

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MAX_SKIPS = 10
_ENVS: dict = {}


def list_images(root: str) -> list[str]:
    """Image files under ``root`` (recursive), sorted so every rank sees the same order."""
    found = []
    for folder, _, files in os.walk(root, followlinks=True):
        found += [os.path.join(folder, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def random_crop(img, size: int) -> torch.Tensor:
    """Shorter side -> ``size`` (bilinear), then a random size x size crop; normalised [3, S, S].

    Uses torch's global RNG, so a resumed single-process run draws the same crops.
    """
    img = resize_shorter(img, size)
    w, h = img.size
    left = int(torch.randint(0, w - size + 1, ()).item())
    top = int(torch.randint(0, h - size + 1, ()).item())
    return normalize(pil_to_tensor(img.crop((left, top, left + size, top + size))))


class _Images(Dataset):
    """Shared logic: unreadable images are skipped (with a warning) instead of killing a run.

    Subclasses set ``img_size`` and define ``_open(index) -> RGB PIL image`` (ValueError when
    the image cannot be read) and ``__len__``.
    """

    img_size: int

    def __getitem__(self, index: int) -> torch.Tensor:
        for attempt in range(MAX_SKIPS):
            k = (index + attempt) % len(self)
            try:
                return random_crop(self._open(k), self.img_size)
            except ValueError as exc:
                warnings.warn(f"skipping image: {exc}", stacklevel=2)
        raise ValueError(f"{MAX_SKIPS} unreadable images in a row from index {index}")


class ImageFolderDataset(_Images):
    """All jpg/jpeg/png/webp files under a folder, recursively."""

    def __init__(self, root: str, img_size: int):
        self.root, self.img_size = root, img_size
        self.paths = list_images(root)
        if not self.paths:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")

    def __len__(self) -> int:
        return len(self.paths)

    def _open(self, index: int):
        return open_image(self.paths[index])


class LmdbImageDataset(_Images):
    """Encoded images in an LMDB (layout in the module docstring); opened lazily per worker."""

    def __init__(self, path: str, img_size: int):
        self.path, self.img_size = path, img_size
        # read the length with a short-lived handle: py-lmdb refuses to open a path that a
        # forked DataLoader worker inherited as open from its parent
        cached = _ENVS.get((os.getpid(), os.path.abspath(path)))
        env = cached or self._open_environment()
        try:
            with env.begin() as txn:
                raw = txn.get(b"length")
        finally:
            if cached is None:
                env.close()
        if raw is None or not raw.strip().isdigit():
            raise ValueError(f"{path}: LMDB without a numeric 'length' key")
        self.length = int(raw)

    def _environment(self):
        """One read-only environment per (process, path): lmdb refuses to open a path twice in
        a process, and a forked worker must not reuse its parent's handle."""

        key = (os.getpid(), os.path.abspath(self.path))
        if key not in _ENVS:
            _ENVS[key] = self._open_environment()
        return _ENVS[key]

    def _open_environment(self):
        import lmdb

        try:
            return lmdb.open(
                self.path,
                readonly=True,
                lock=False,
                readahead=False,
                meminit=False,
                max_readers=32,
                subdir=os.path.isdir(self.path),
            )
        except lmdb.Error as exc:
            raise ValueError(f"{self.path}: cannot open as LMDB ({exc})") from None

    def __len__(self) -> int:
        return self.length

    def _open(self, index: int):
        with self._environment().begin() as txn:
            data = txn.get(str(index).encode())
        if data is None:
            raise ValueError(f"{self.path}: key {index} missing")
        return open_image_bytes(data, f"{self.path}[{index}]")


def open_image_bytes(data: bytes, name: str):
    """Encoded bytes -> RGB PIL image; ValueError naming ``name`` when Pillow cannot decode them."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return open_image(img)
    except UnidentifiedImageError:
        raise ValueError(f"cannot read image {name}: not an image") from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {name}: truncated or corrupt ({exc})") from None


def is_lmdb(path: str) -> bool:
    return path.endswith(".lmdb") or os.path.isfile(os.path.join(path, "data.mdb"))


def make_dataset(path: str, img_size: int) -> Dataset:
    """A folder of images or an LMDB (a directory with data.mdb, or a path ending in .lmdb)."""
    if not os.path.exists(path):
        raise ValueError(f"training data {path}: no such file or directory")
    if is_lmdb(path):
        return LmdbImageDataset(path, img_size)
    return ImageFolderDataset(path, img_size)


def write_image_lmdb(paths: Sequence[str], out: str, map_size: int = 1 << 34) -> int:
    """Store image files' bytes (unchanged) in a new LMDB at ``out``; returns the count."""
    import lmdb

    env = lmdb.open(out, map_size=map_size, subdir=True)
    with env.begin(write=True) as txn:
        for i, path in enumerate(paths):
            with open(path, "rb") as f:
                txn.put(str(i).encode(), f.read())
        txn.put(b"length", str(len(paths)).encode())
    env.close()
    return len(paths)


class InfiniteSampler(Sampler[int]):
    """Endless shuffled indices, epoch e shuffled with seed + e, this rank taking every
    ``world``-th index; starts at sample ``start`` of its stream so a resumed run continues the
    data order instead of replaying it."""

    def __init__(self, n: int, seed: int = 0, start: int = 0, rank: int = 0, world: int = 1):
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world
        self.per_rank = -(-n // world)

    def __iter__(self) -> Iterator[int]:
        position = self.start
        while True:
            epoch, offset = divmod(position, self.per_rank)
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            perm += perm[: self.per_rank * self.world - self.n]  # pad so ranks get equal shares
            mine = perm[self.rank :: self.world]
            for index in mine[offset:]:
                yield index
            position = (epoch + 1) * self.per_rank

    def __len__(self) -> int:  # a DataLoader needs a length; the stream itself never ends
        return 1 << 62

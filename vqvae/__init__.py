"""CogView's image tokenizer: a VQ-VAE turning a 256 px image into 32x32 codes out of 8192.

``load_model`` reads the original's checkpoints (bare or ``module.``-prefixed state dicts) and
those of ``vqvae.train``; ``img2code`` / ``code2img`` convert between images and codes.
"""

from .api import RELEASED_CONFIG, code2img, img2code, infer_config, load_model, new_model
from .image_io import MEAN, STD, denormalize, make_grid, normalize, read_img, read_imgs, save_image
from .vqvae_zc import VQVAE, Quantize, ResBlock

__all__ = [
    "MEAN",
    "Quantize",
    "RELEASED_CONFIG",
    "ResBlock",
    "STD",
    "VQVAE",
    "code2img",
    "denormalize",
    "img2code",
    "infer_config",
    "load_model",
    "make_grid",
    "new_model",
    "normalize",
    "read_img",
    "read_imgs",
    "save_image",
]

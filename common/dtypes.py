"""The floating-point type names the command lines and config files use, and their torch dtypes.

One table, so ``--dtype``, exported releases and model setup agree on the spelling.
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

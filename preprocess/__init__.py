"""Turn a folder of images plus captions into the LMDB datasets training reads.

records (captions file -> Record list), images (worker-side decode / convert / resize),
rows (row layouts, incl. super-resolution windows matching generation.magnify),
journal (resume state and the report file), pipeline (the run itself).
Entry point: preprocess_entry.py.
"""

from .pipeline import PreprocessConfig, SetupError, run
from .records import Record, read_captions
from .rows import SRLayout, low_level_sr_row, sr_layout, sr_positions, sr_row

__all__ = [
    "PreprocessConfig",
    "Record",
    "SRLayout",
    "SetupError",
    "read_captions",
    "run",
    "sr_layout",
    "sr_positions",
    "sr_row",
    "low_level_sr_row",
]

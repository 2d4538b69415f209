"""A restricted unpickler for dataset rows written by the original CogView tools.

pickle.loads runs whatever callable a pickle names, so an LMDB file from elsewhere
could execute code when a row is read. Original rows only need numpy arrays, numpy
scalars and plain Python data; every other global is refused before it is resolved.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Callable, Dict, Tuple

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list."""


def _numpy_core(submodule: str, name: str) -> Callable[[], Any]:
    """Resolve numpy.core.* / numpy._core.* names to the installed numpy's object."""

    def resolve() -> Any:
        core = getattr(np, "_core", None)
        if core is None or not hasattr(core, submodule):  # numpy < 2
            core = np.core
        return getattr(getattr(core, submodule), name)

    return resolve


_NUMPY_CORE_NAMES = (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))

_ALLOWED: Dict[Tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    # protocol <= 2 pickles store the array bytes as _codecs.encode(latin-1 str)
    ("_codecs", "encode"): lambda: __import__("codecs").encode,
}
for _sub, _name in _NUMPY_CORE_NAMES:
    for _prefix in ("numpy.core", "numpy._core"):
        _ALLOWED[(f"{_prefix}.{_sub}", _name)] = _numpy_core(_sub, _name)

_SAFE_BUILTINS = (
    "int",
    "float",
    "complex",
    "bool",
    "str",
    "bytes",
    "bytearray",
    "list",
    "tuple",
    "dict",
    "set",
    "frozenset",
)
for _name in _SAFE_BUILTINS:
    _ALLOWED[("builtins", _name)] = lambda n=_name: __import__("builtins").__dict__[n]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose find_class admits only the names in _ALLOWED."""

    def __init__(self, file, source: str = "<bytes>"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        key = ("builtins" if module == "__builtin__" else module, name)
        resolve = _ALLOWED.get(key)
        if resolve is None:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name} in {self.source}: only numpy arrays, "
                "numpy scalars and plain Python data may be loaded from untrusted data"
            )
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {pid!r} in {self.source}: untrusted data")


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """pickle.loads restricted to numpy arrays/scalars and builtin data types.

    ``source`` names where the bytes came from (e.g. the LMDB path and row key) in errors.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except UnsafePickleError:
        raise
    except Exception as exc:
        raise pickle.UnpicklingError(f"cannot unpickle {source}: {exc}") from None

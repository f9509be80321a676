"""In-process AutoDIR engine: ctypes bindings over libautodir.so (the C API of include/autodir.h).

    import autodir
    engine = autodir.Engine("models/autodir-tiny")
    print(engine.detect("in.png"))            # {"artifact": "noise", "probabilities": {...}}
    out = engine.restore("in.png", steps=20, seed=1,
                         progress=lambda p: print(p.stage, p.step, p.total_steps))
    autodir.save_png(out, "out.png")

Images are a PNG path or a numpy array: HxWx3 (RGB), HxWx4 (alpha dropped), HxW or HxWx1 (gray),
dtype uint8 (0..255), uint16 (0..65535) or float (0..1; clamped; NaN refused). Results are float32
HxWx3 in [0, 1]. Every library failure raises ``autodir.Error`` whose ``code`` is the status
("invalid_argument", "io", "format", "model", "cancelled", "out_of_memory", "internal") and whose
``message`` is the library's own message.

The library is found at ``$AUTODIR_LIBRARY`` (a file, or a folder holding libautodir.so), else next to
this package, else in the repository's ``.build/release`` or ``.build/debug``.

Thread safety: one Engine may run detect/restore from several Python threads at once; the library
releases the GIL while it works (ctypes does), and each call owns its scratch memory.
"""
from __future__ import annotations

import ctypes
import os
import threading
from collections import namedtuple
from typing import Any, Callable, Dict, Optional, Union

import numpy as np

try:  # one Error class for the pool client and the engine, so `except autodir.Error` catches both
    from .client import Error
except ImportError:  # pyzmq missing: the engine still works
    class Error(Exception):  # type: ignore[no-redef]
        """A failure reported by libautodir: ``code`` (the status) and ``message``."""

        def __init__(self, code: str, message: str = ""):
            super().__init__(f"{code}: {message}" if message else code)
            self.code = code
            self.message = message

__all__ = ["Engine", "CancelToken", "Progress", "Error", "load_png", "save_png", "library_path", "version"]

# autodir_status → Error.code
_CODES = {1: "invalid_argument", 2: "io", 3: "format", 4: "model", 5: "cancelled", 6: "out_of_memory", 7: "internal"}

MAX_NAME = 64
MAX_CATEGORIES = 16
CFG_DEFAULT = -1.0

#: One progress report: 1-based pass of max_passes, sampler step of total_steps, and the stage
#: ("detect", "encode", "denoise", "decode" or "correct").
Progress = namedtuple("Progress", ["pass_index", "max_passes", "step", "total_steps", "stage"])


# ---- C types (include/autodir.h) -------------------------------------------------------------------

class _Image(ctypes.Structure):
    _fields_ = [("width", ctypes.c_int), ("height", ctypes.c_int), ("channels", ctypes.c_int),
                ("data", ctypes.POINTER(ctypes.c_float))]


class _EngineParams(ctypes.Structure):
    _fields_ = [("n_threads", ctypes.c_int), ("weight_type", ctypes.c_int)]


# autodir_weight_type: how the engine keeps convolution and linear weights in memory
WEIGHT_TYPES = {"f32": 0, "f16": 1, "bf16": 2}


class _Detection(ctypes.Structure):
    _fields_ = [("artifact", ctypes.c_char * MAX_NAME), ("artifact_index", ctypes.c_int),
                ("n_categories", ctypes.c_int), ("categories", (ctypes.c_char * MAX_NAME) * MAX_CATEGORIES),
                ("probabilities", ctypes.c_float * MAX_CATEGORIES)]


_ProgressFn = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.c_char_p, ctypes.c_void_p)


class _RestoreParams(ctypes.Structure):
    _fields_ = [("prompt", ctypes.c_char_p), ("steps", ctypes.c_int), ("seed", ctypes.c_uint64),
                ("cfg_text", ctypes.c_float), ("cfg_image", ctypes.c_float), ("max_passes", ctypes.c_int),
                ("color_fix", ctypes.c_bool), ("sampler", ctypes.c_char_p), ("progress", _ProgressFn),
                ("progress_user_data", ctypes.c_void_p), ("cancel", ctypes.c_void_p)]


# ---- Loading the library -----------------------------------------------------------------------------

_lib = None
_lib_path = None
_lib_lock = threading.Lock()


def _candidates():
    env = os.environ.get("AUTODIR_LIBRARY")
    if env:
        yield os.path.join(env, "libautodir.so") if os.path.isdir(env) else env
        return
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "libautodir.so")
    root = os.path.abspath(os.path.join(here, "..", "..", ".."))
    for config in ("release", "debug"):
        yield os.path.join(root, ".build", config, "libautodir.so")


def library_path() -> str:
    """The path of the libautodir.so this module uses (loading it on first use)."""
    _library()
    return _lib_path  # type: ignore[return-value]


def _library():
    global _lib, _lib_path
    with _lib_lock:
        if _lib is not None:
            return _lib
        tried = []
        for path in _candidates():
            tried.append(path)
            if os.path.isfile(path):
                try:
                    lib = ctypes.CDLL(path)
                    _declare(lib)
                except (OSError, AttributeError) as e:
                    raise Error("io", f"cannot use {path}: {e}") from None
                _lib, _lib_path = lib, path
                return lib
        raise Error("io", "libautodir.so not found (build it with `swift build`, or set AUTODIR_LIBRARY); tried: "
                    + ", ".join(tried))


def _declare(lib) -> None:
    P = ctypes.POINTER
    status, c_int, c_char_p, c_void_p = ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p
    sig = {
        "autodir_version": (c_int, []),
        "autodir_version_string": (c_char_p, []),
        "autodir_status_string": (c_char_p, [c_int]),
        "autodir_last_error": (c_char_p, []),
        "autodir_image_create": (status, [c_int, c_int, c_int, P(P(_Image))]),
        "autodir_image_free": (None, [P(_Image)]),
        "autodir_image_load_png": (status, [c_char_p, P(P(_Image))]),
        "autodir_image_save_png": (status, [P(_Image), c_char_p, c_int]),
        "autodir_engine_params_init": (_EngineParams, []),
        "autodir_engine_create": (status, [c_char_p, P(_EngineParams), P(c_void_p)]),
        "autodir_engine_destroy": (None, [c_void_p]),
        "autodir_detect": (status, [c_void_p, P(_Image), P(_Detection)]),
        "autodir_cancel_token_create": (status, [P(c_void_p)]),
        "autodir_cancel": (None, [c_void_p]),
        "autodir_cancel_token_is_cancelled": (ctypes.c_bool, [c_void_p]),
        "autodir_cancel_token_destroy": (None, [c_void_p]),
        "autodir_restore_params_init": (_RestoreParams, []),
        "autodir_restore": (status, [c_void_p, P(_Image), P(_RestoreParams), P(P(_Image))]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def _check(lib, status: int) -> None:
    if status != 0:
        message = (lib.autodir_last_error() or b"").decode("utf-8", "replace")
        raise Error(_CODES.get(status, "internal"), message)


def version() -> str:
    """The loaded library's version, "MAJOR.MINOR.PATCH"."""
    return _library().autodir_version_string().decode()


# ---- Images ------------------------------------------------------------------------------------------

ImageLike = Union[str, "os.PathLike[str]", np.ndarray]


def _fspath(path) -> bytes:
    try:
        return os.fsencode(path)
    except TypeError:
        raise Error("invalid_argument", f"expected a path or a numpy array, got {type(path).__name__}") from None


def _to_float(array: Any) -> np.ndarray:
    """A numpy image → contiguous float32 HxWxC (C in 1, 3, 4); the library checks sizes and values."""
    if not isinstance(array, np.ndarray):
        raise Error("invalid_argument", f"expected a path or a numpy array, got {type(array).__name__}")
    a = array
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise Error("invalid_argument", f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {array.shape}")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / np.float32(255)
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) / np.float32(65535)
    elif a.dtype.kind == "f":
        a = a.astype(np.float32, copy=False)
    else:
        raise Error("invalid_argument", f"unsupported dtype {a.dtype} (use uint8, uint16 or float)")
    return np.ascontiguousarray(a)


class _Input:
    """An image passed to the library: a loaded PNG (freed on exit) or a view of a float32 array."""

    def __init__(self, lib, image: ImageLike):
        self.lib, self.owned, self.array = lib, None, None
        if isinstance(image, np.ndarray):
            self.array = _to_float(image)
            h, w, c = self.array.shape
            # Sizes beyond int are refused here; the library refuses everything else that is too large.
            if max(h, w, c) > 2**31 - 1:
                raise Error("invalid_argument", f"image shape {image.shape} is too large")
            self.struct = _Image(w, h, c, self.array.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
            self.pointer = ctypes.pointer(self.struct)
        elif image is None:
            raise Error("invalid_argument", "image is None")
        else:
            out = ctypes.POINTER(_Image)()
            _check(lib, lib.autodir_image_load_png(_fspath(image), ctypes.byref(out)))
            self.owned = self.pointer = out

    def __enter__(self):
        return self.pointer

    def __exit__(self, *exc):
        if self.owned:
            self.lib.autodir_image_free(self.owned)
            self.owned = None


def _take(lib, image) -> np.ndarray:
    """Copies a library-owned image into a float32 HxWx3 array and frees it."""
    try:
        im = image.contents
        n = im.height * im.width * im.channels
        return np.ctypeslib.as_array(im.data, shape=(n,)).reshape(im.height, im.width, im.channels).copy()
    finally:
        lib.autodir_image_free(image)


def load_png(path) -> np.ndarray:
    """Reads a PNG (any colour type and bit depth) as float32 HxWx3 in [0, 1]."""
    lib = _library()
    out = ctypes.POINTER(_Image)()
    _check(lib, lib.autodir_image_load_png(_fspath(path), ctypes.byref(out)))
    return _take(lib, out)


def save_png(image: np.ndarray, path, bit_depth: int = 8) -> None:
    """Writes an image array (see the module doc) as an 8- or 16-bit RGB PNG."""
    lib = _library()
    with _Input(lib, _to_float(image) if isinstance(image, np.ndarray) else image) as pointer:
        _check(lib, lib.autodir_image_save_png(pointer, _fspath(path), int(bit_depth)))


# ---- Cancellation and the engine ---------------------------------------------------------------------

class CancelToken:
    """A thread-safe cancellation flag: pass it to Engine.restore(cancel=...) and call cancel() from any
    thread (or from the progress callback); the restore then raises Error("cancelled")."""

    def __init__(self):
        self._lib = _library()
        handle = ctypes.c_void_p()
        _check(self._lib, self._lib.autodir_cancel_token_create(ctypes.byref(handle)))
        self._handle = handle

    def cancel(self) -> None:
        self._lib.autodir_cancel(self._handle)

    @property
    def cancelled(self) -> bool:
        return bool(self._lib.autodir_cancel_token_is_cancelled(self._handle))

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.autodir_cancel_token_destroy(handle)


def _int_option(name: str, value: Optional[int], limit: int) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise Error("invalid_argument", f"{name} must be an int, got {type(value).__name__}")
    if not 1 <= value <= limit:
        raise Error("invalid_argument", f"{name} {value} is outside 1…{limit}")
    return int(value)


def _cfg_option(name: str, value: Optional[float]) -> float:
    if value is None:
        return CFG_DEFAULT
    value = float(value)
    if value < 0:
        raise Error("invalid_argument", f"{name} {value} is negative")
    return value  # NaN and infinity are refused by the library


class Engine:
    """An AutoDIR pipeline loaded from a model folder (libautodir's autodir_engine).

    threads: kernel threads (0 = leave the current setting, all cores by default; process-wide, see
    include/autodir.h).
    weights: "f32" (default, fastest), or "f16" / "bf16" to keep convolution and linear weights 16-bit in
    memory (half the resident size; widened per layer).
    Use as a context manager or call close(); the engine is also freed when garbage-collected.
    """

    def __init__(self, model_dir: Union[str, "os.PathLike[str]"], threads: int = 0, weights: str = "f32"):
        self._lib = _library()
        self._handle = None
        if model_dir is None:
            raise Error("invalid_argument", "model_dir is None")
        params = self._lib.autodir_engine_params_init()
        params.n_threads = int(threads)
        if weights not in WEIGHT_TYPES:
            raise Error("invalid_argument", f"weights must be one of {', '.join(WEIGHT_TYPES)}, got {weights!r}")
        params.weight_type = WEIGHT_TYPES[weights]
        handle = ctypes.c_void_p()
        _check(self._lib, self._lib.autodir_engine_create(_fspath(model_dir), ctypes.byref(params),
                                                          ctypes.byref(handle)))
        self._handle = handle
        self.model_dir = os.fspath(model_dir)

    def close(self) -> None:
        """Frees the engine; no call may be running on it."""
        handle, self._handle = self._handle, None
        if handle:
            self._lib.autodir_engine_destroy(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_handle", None):
            self.close()

    def _engine(self):
        if not self._handle:
            raise Error("invalid_argument", "the engine is closed")
        return self._handle

    def detect(self, image: ImageLike) -> Dict[str, Any]:
        """BIQA: ``{"artifact": name, "probabilities": {category: p, ...}}`` (categories in model order)."""
        d = _Detection()
        with _Input(self._lib, image) as pointer:
            _check(self._lib, self._lib.autodir_detect(self._engine(), pointer, ctypes.byref(d)))
        names = [d.categories[i].value.decode("utf-8", "replace") for i in range(d.n_categories)]
        return {"artifact": d.artifact.decode("utf-8", "replace"),
                "probabilities": {n: float(d.probabilities[i]) for i, n in enumerate(names)}}

    def restore(self, image: ImageLike, prompt: Optional[str] = None, steps: Optional[int] = None, seed: int = 0,
                cfg_text: Optional[float] = None, cfg_image: Optional[float] = None,
                max_passes: Optional[int] = None, color_fix: bool = False, sampler: Optional[str] = None,
                progress: Optional[Callable[[Progress], Any]] = None,
                cancel: Optional[CancelToken] = None) -> np.ndarray:
        """Restores an image; returns float32 HxWx3 in [0, 1] of the input's size.

        prompt: a user instruction ("A photo needs noise artifact reduction"), one pass; None = automatic
        (BIQA picks each pass's artifact). None for steps, cfg_text, cfg_image, max_passes and sampler
        means the model folder's default. progress(Progress) is called at each stage and step on the
        calling thread; returning False (exactly) cancels. An exception in it cancels and is re-raised.
        """
        params = self._lib.autodir_restore_params_init()
        if prompt is not None:
            if not isinstance(prompt, str):
                raise Error("invalid_argument", f"prompt must be a str, got {type(prompt).__name__}")
            params.prompt = prompt.encode("utf-8")
        params.steps = _int_option("steps", steps, 10000)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
            raise Error("invalid_argument", f"seed must be an int in 0…2^64-1, got {seed!r}")
        params.seed = int(seed)
        params.cfg_text = _cfg_option("cfg_text", cfg_text)
        params.cfg_image = _cfg_option("cfg_image", cfg_image)
        params.max_passes = _int_option("max_passes", max_passes, 100)
        params.color_fix = bool(color_fix)
        if sampler is not None:
            params.sampler = str(sampler).encode("utf-8")
        raised = []
        if progress is not None:
            def on_progress(pass_index, max_passes_, step, total_steps, stage, _user):
                try:
                    keep_going = progress(Progress(pass_index, max_passes_, step, total_steps,
                                                   (stage or b"").decode("utf-8", "replace")))
                    return keep_going is not False
                except BaseException as e:  # never unwind through C: cancel, re-raise below
                    raised.append(e)
                    return False
            callback = _ProgressFn(on_progress)  # kept alive by this frame for the whole call
            params.progress = callback
        if cancel is not None:
            if not isinstance(cancel, CancelToken):
                raise Error("invalid_argument", "cancel must be an autodir.CancelToken")
            params.cancel = cancel._handle
        out = ctypes.POINTER(_Image)()
        with _Input(self._lib, image) as pointer:
            status = self._lib.autodir_restore(self._engine(), pointer, ctypes.byref(params), ctypes.byref(out))
        if raised:
            if out:
                self._lib.autodir_image_free(out)
            raise raised[0]
        _check(self._lib, status)
        return _take(self._lib, out)

"""autodir.Engine (ctypes over libautodir.so) on the tiny random model folder.

Run: python3 -m pytest bindings/python/tests
AUTODIR_LIBRARY=path/to/libautodir.so (or its folder) picks the library, else the package's lookup
(.build/release, .build/debug); AUTODIR_TEST_MODEL and AUTODIR_TEST_IMAGE override the fixtures.
"""
import os
import sys
import threading

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import autodir  # noqa: E402
from autodir import Engine, Error  # noqa: E402
from autodir.engine import CancelToken, load_png, save_png  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
FIXTURES = os.path.join(ROOT, "Tests", "EngineTests", "Fixtures")
MODEL = os.environ.get("AUTODIR_TEST_MODEL", os.path.join(FIXTURES, "pipeline", "tiny-model"))
IMAGE = os.environ.get("AUTODIR_TEST_IMAGE", os.path.join(FIXTURES, "pipeline", "sample.png"))
STAGES = {"detect", "encode", "denoise", "decode", "correct"}
FAST = dict(steps=1, max_passes=1)


@pytest.fixture(scope="module")
def engine():
    try:
        autodir.engine.library_path()
    except Error as e:
        if "not found" in e.message:  # not built; a library that is found but unusable fails the tests
            pytest.skip(str(e))
        raise
    if not os.path.isfile(os.path.join(MODEL, "model_index.json")):
        pytest.skip(f"model folder {MODEL} not present")
    with Engine(MODEL) as e:
        yield e


@pytest.fixture(scope="module")
def image(engine):
    return load_png(IMAGE)


def test_version_matches_the_package(engine):
    assert autodir.engine.version().split(".")[0] == "0"


def test_detect_returns_a_distribution_over_the_categories(engine):
    d = engine.detect(IMAGE)
    probs = d["probabilities"]
    assert d["artifact"] in probs and "no" in probs
    assert abs(sum(probs.values()) - 1) < 1e-4
    assert d["artifact"] == max(probs, key=probs.get)


def test_path_float_and_uint8_inputs_agree(engine, image):
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3
    by_path = engine.detect(IMAGE)
    by_array = engine.detect(image)
    as_uint8 = np.round(image * 255).astype(np.uint8)
    by_uint8 = engine.detect(as_uint8)
    by_float64 = engine.detect(image.astype(np.float64))
    for other in (by_array, by_uint8, by_float64):
        assert other["artifact"] == by_path["artifact"]
        for k, p in by_path["probabilities"].items():
            assert abs(other["probabilities"][k] - p) <= 1e-6, k


def test_restore_returns_float32_hwc_in_unit_range_and_is_deterministic(engine, image):
    out = engine.restore(IMAGE, seed=3, **FAST)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    again = engine.restore(image, seed=3, **FAST)  # numpy input, same pixels, same seed
    np.testing.assert_array_equal(out, again)


def test_restore_accepts_gray_rgba_and_uint16(engine, image):
    image = np.ascontiguousarray(image[:16, :24])  # smaller, for speed
    h, w, _ = image.shape
    gray = engine.restore(image[:, :, 0], **FAST)
    assert gray.shape == (h, w, 3)
    np.testing.assert_array_equal(engine.restore(image[:, :, :1], **FAST), gray)
    rgba = np.concatenate([image, np.full((h, w, 1), 0.5, np.float32)], axis=2)
    np.testing.assert_array_equal(engine.restore(rgba, **FAST), engine.restore(image, **FAST))
    assert engine.restore((image * 65535).astype(np.uint16), **FAST).shape == (h, w, 3)


def test_restore_with_a_prompt_and_options(engine, image):
    out = engine.restore(image, prompt="A photo needs noise artifact reduction", steps=1, seed=1,
                         cfg_text=1.5, cfg_image=1.2, color_fix=True, sampler="euler")
    assert out.shape == image.shape


def test_progress_reports_every_step(engine, image):
    seen = []
    engine.restore(image, steps=3, max_passes=1, progress=seen.append)
    assert seen and all(p.stage in STAGES for p in seen)
    denoise = [p for p in seen if p.stage == "denoise"]
    assert [p.step for p in denoise if p.pass_index == 1] == [0, 1, 2, 3]  # 0 when denoising begins
    assert all(p.total_steps == 3 and p.max_passes >= 1 for p in denoise)


def test_progress_returning_false_cancels(engine, image):
    calls = []
    with pytest.raises(Error) as e:
        engine.restore(image, progress=lambda p: calls.append(p) or False, **FAST)
    assert e.value.code == "cancelled" and len(calls) == 1


def test_cancel_token_from_the_callback(engine, image):
    token = CancelToken()
    with pytest.raises(Error) as e:
        engine.restore(image, steps=3, max_passes=1, cancel=token, progress=lambda p: token.cancel())
    assert e.value.code == "cancelled" and token.cancelled
    with pytest.raises(Error) as e:  # a cancelled token stays cancelled
        engine.restore(image, cancel=token, **FAST)
    assert e.value.code == "cancelled"


def test_an_exception_in_the_callback_cancels_and_is_reraised(engine, image):
    def boom(p):
        raise KeyError("from the callback")
    with pytest.raises(KeyError):
        engine.restore(image, progress=boom, **FAST)
    assert engine.restore(image, **FAST).shape == image.shape  # the engine is still fine


def test_two_threads_on_one_engine_equal_sequential_runs(engine, image):
    image = image[:24, :32]
    seeds = [11, 12]
    sequential = [engine.restore(image, seed=s, **FAST) for s in seeds]
    results = [None, None]

    def work(i):
        results[i] = engine.restore(image, seed=seeds[i], **FAST)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(sequential, results):
        # Not bit-identical: multithreaded OpenBLAS splits a GEMM differently when two calls overlap
        # (include/autodir.h, THREAD SAFETY); bindings/c/concurrent.c checks bit-identity with 1 thread.
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_png_round_trip(engine, image, tmp_path):
    path = tmp_path / "out.png"
    save_png(image, path, bit_depth=16)
    np.testing.assert_allclose(load_png(path), image, atol=1 / 65535)
    save_png(np.round(image * 255).astype(np.uint8), str(path))
    np.testing.assert_allclose(load_png(path), image, atol=0.5 / 255 + 1e-6)


# ---- errors: every bad input is an autodir.Error with the library's message, never a crash ----------

def _code(call, *args, **kwargs):
    with pytest.raises(Error) as e:
        call(*args, **kwargs)
    assert e.value.message, "the error carries a message"
    return e.value.code


def test_missing_or_empty_model_folder(engine, tmp_path):
    assert _code(Engine, "/nonexistent/autodir-model") == "model"
    assert _code(Engine, str(tmp_path)) == "model"
    assert _code(Engine, None) == "invalid_argument"
    assert _code(Engine, MODEL, threads=-1) == "invalid_argument"
    assert _code(Engine, MODEL, weights="f8") == "invalid_argument"


@pytest.mark.parametrize("weights", ["f16", "bf16"])
def test_sixteen_bit_weights_restore_close_to_float32(engine, image, weights):
    small = np.ascontiguousarray(image[:32, :40])
    reference = engine.restore(small, seed=1, **FAST)
    with Engine(MODEL, weights=weights) as half:
        assert half.detect(small)["artifact"] == engine.detect(small)["artifact"]
        out = half.restore(small, seed=1, **FAST)
    assert out.shape == reference.shape
    assert np.abs(out - reference).max() < (0.02 if weights == "f16" else 0.08)


def test_missing_and_corrupt_png(engine, tmp_path):
    assert _code(engine.detect, str(tmp_path / "missing.png")) == "io"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not a PNG")
    assert _code(engine.restore, str(bad), **FAST) == "format"
    with open(IMAGE, "rb") as f:
        head = f.read(60)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(head)
    assert _code(engine.detect, truncated) == "format"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert _code(load_png, empty) == "format"


@pytest.mark.parametrize("array", [
    np.zeros((0, 4, 3), np.float32),        # zero height
    np.zeros((4, 0, 3), np.float32),        # zero width
    np.zeros((4, 4, 2), np.float32),        # 2 channels
    np.zeros((4, 4, 5), np.float32),        # 5 channels
    np.zeros((4,), np.float32),             # 1-D
    np.zeros((1, 4, 4, 3), np.float32),     # 4-D
    np.zeros((4, 4, 3), np.int32),          # unsupported dtypes
    np.zeros((4, 4, 3), np.bool_),
    np.zeros((4, 4, 3), np.complex64),
    np.zeros((4, 4, 3), object),
    np.full((4, 4, 3), np.nan, np.float32),  # NaN / infinity
    np.full((4, 4, 3), np.inf, np.float64),
    np.zeros((40000, 1, 3), np.uint8),      # a side above AUTODIR_MAX_SIDE
])
def test_bad_arrays(engine, array):
    assert _code(engine.detect, array) == "invalid_argument"
    assert _code(engine.restore, array, **FAST) == "invalid_argument"


def test_bad_objects_and_options(engine, image):
    assert _code(engine.detect, None) == "invalid_argument"
    assert _code(engine.detect, 123) == "invalid_argument"
    assert _code(engine.restore, [[0.5]], **FAST) == "invalid_argument"
    for options in (dict(steps=-1), dict(steps=0), dict(steps=10**6), dict(max_passes=0), dict(max_passes=-3),
                    dict(seed=-1), dict(seed=2**64), dict(cfg_text=float("nan")), dict(cfg_image=float("inf")),
                    dict(cfg_text=-2), dict(sampler="bogus"), dict(prompt=""), dict(prompt=b"bytes"),
                    dict(steps=1.5), dict(cancel="no")):
        assert _code(engine.restore, image, **options) == "invalid_argument", options
    assert _code(save_png, image, "/nonexistent/dir/x.png") == "io"
    assert _code(save_png, image, "/tmp/x.png", bit_depth=7) == "invalid_argument"


def test_closed_engine(engine, image):
    e = Engine(MODEL)
    e.close()
    e.close()
    assert _code(e.detect, image) == "invalid_argument"

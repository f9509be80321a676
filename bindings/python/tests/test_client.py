"""autodir.Client against a real broker and worker (the built autodir-cli) on 127.0.0.1.

Run: python3 -m pytest bindings/python/tests   (AUTODIR_CLI=path overrides the binary lookup)
"""
import glob
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from autodir import Client, Error  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _binary():
    env = os.environ.get("AUTODIR_CLI")
    if env:
        return env
    # The default build folder first (scripts/run-tests builds it), then any other, newest first; the binary
    # must know the pool commands (an older build may not).
    preferred = [os.path.join(ROOT, ".build", c, "autodir-cli") for c in ("debug", "release")]
    others = glob.glob(os.path.join(ROOT, ".build*", "*", "autodir-cli")) + glob.glob(os.path.join(ROOT, ".build*", "*", "*", "autodir-cli"))
    others.sort(key=os.path.getmtime, reverse=True)
    for p in preferred + others:
        if os.access(p, os.X_OK) and b"--workers" in subprocess.run([p, "broker", "--help"], stdout=subprocess.PIPE,
                                                                   stderr=subprocess.STDOUT).stdout:
            return p
    pytest.skip("autodir-cli with the pool commands not built (swift build), or set AUTODIR_CLI")


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAST = ["--heartbeat-ms", "100", "--liveness", "5"]


@pytest.fixture
def pool(tmp_path):
    exe = _binary()
    cp, wp = _port(), _port()
    procs = []

    def spawn(*args):
        p = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        return p

    spawn("broker", "--clients", f"tcp://127.0.0.1:{cp}", "--workers", f"tcp://127.0.0.1:{wp}", *FAST)
    spawn("worker", "--connect", f"tcp://127.0.0.1:{wp}", "--name", "py", *FAST)
    endpoint = f"tcp://127.0.0.1:{cp}"
    with Client(endpoint, timeout=0.5, retries=0) as c:
        for _ in range(100):
            try:
                if c.status()["worker_count"] == 1:
                    break
            except Error:
                pass
            time.sleep(0.05)
    yield {"endpoint": endpoint, "workers": f"tcp://127.0.0.1:{wp}", "spawn": spawn, "exe": exe}
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=3)
        except subprocess.TimeoutExpired:
            p.kill()


def test_echo_roundtrip_exact(pool):
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 48)).astype(np.float32)
    with Client(pool["endpoint"], timeout=5) as c:
        y = c.call("echo", x)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.array_equal(x, y)


def test_progress_callback_and_status(pool):
    seen = []
    with Client(pool["endpoint"], timeout=5) as c:
        y = c.call("sleep", np.ones(4, np.float32), ms=200, step_ms=40, progress=lambda d, t: seen.append((d, t)))
        assert np.array_equal(y, np.ones(4, np.float32))
        assert seen and seen[-1][0] == seen[-1][1]
        s = c.status()
    for key in ("workers", "queue_depth", "in_flight", "completed", "failed", "latency_us",
                "autodir_inference_request_success", "autodir_inference_request_summary_us"):
        assert key in s
    assert s["completed"] >= 1 and s["worker_count"] == 1


def test_errors_are_raised_with_codes(pool):
    with Client(pool["endpoint"], timeout=5) as c:
        with pytest.raises(Error) as e:
            c.call("no-such-op", np.zeros(2, np.float32))
        assert e.value.code == "unknown_op"
        with pytest.raises(Error) as e:
            c.call("sleep", None, ms=3000, deadline_ms=200)
        assert e.value.code == "deadline_exceeded"
        # Still serving afterwards.
        assert np.array_equal(c.call("echo", np.arange(5, dtype=np.float32)), np.arange(5, dtype=np.float32))


def test_retry_with_same_id_returns_cached_result(pool):
    with Client(pool["endpoint"], timeout=5) as c:
        first = c.call("echo", np.full(3, 7, np.float32), id="fixed-id")
        again = c.call("echo", np.full(3, 7, np.float32), id="fixed-id")
        assert np.array_equal(first, again)
        assert c.status()["cache_hits"] == 1


def test_timeout_when_nobody_answers():
    with Client(f"tcp://127.0.0.1:{_port()}", timeout=0.2, retries=1) as c:
        t0 = time.monotonic()
        with pytest.raises(Error) as e:
            c.call("echo", np.zeros(1, np.float32))
        assert e.value.code == "timeout"
        assert time.monotonic() - t0 < 2


def test_curve(tmp_path):
    exe = _binary()
    keys = str(tmp_path / "keys")
    subprocess.run([exe, "keygen", "--out", keys], check=True, stdout=subprocess.DEVNULL)
    cp, wp = _port(), _port()
    procs = [subprocess.Popen([exe, "broker", "--clients", f"tcp://127.0.0.1:{cp}", "--workers", f"tcp://127.0.0.1:{wp}",
                               "--curve-keys", keys, *FAST], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([exe, "worker", "--connect", f"tcp://127.0.0.1:{wp}", "--curve-key", f"{keys}/workers/worker.key",
                               "--server-key", f"{keys}/broker.pub", *FAST], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        with Client(f"tcp://127.0.0.1:{cp}", timeout=5, curve=(f"{keys}/clients/client.key", f"{keys}/broker.pub")) as c:
            x = np.arange(12, dtype=np.float32).reshape(3, 4)
            assert np.array_equal(c.call("echo", x), x)
        with Client(f"tcp://127.0.0.1:{cp}", timeout=0.3, retries=0) as plain:
            with pytest.raises(Error) as e:
                plain.status()
            assert e.value.code == "timeout"
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=3)


# -- restore / detect through a real broker + worker with the tiny random model ------------------------------
FIXTURES = os.path.join(ROOT, "Tests", "EngineTests", "Fixtures", "pipeline")
MODEL = os.environ.get("AUTODIR_TEST_MODEL", os.path.join(FIXTURES, "tiny-model"))
SAMPLE = os.path.join(FIXTURES, "sample.png")


def _pipeline_binary():
    """A built autodir-cli whose workers serve restore/detect (an older build may not)."""
    env = os.environ.get("AUTODIR_CLI")
    found = [env] if env else glob.glob(os.path.join(ROOT, ".build*", "*", "autodir-cli")) + \
        glob.glob(os.path.join(ROOT, ".build*", "*", "*", "autodir-cli"))
    found = [p for p in found if p and os.access(p, os.X_OK)]
    found.sort(key=os.path.getmtime, reverse=True)
    for p in found:
        if b"AUTODIR_MODEL" in subprocess.run([p, "worker", "--help"], stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT).stdout:
            return p
    pytest.skip("no autodir-cli whose workers serve restore/detect (swift build), or set AUTODIR_CLI")


def _engine_or_none():
    try:
        from autodir.engine import Engine
        import autodir.engine
        autodir.engine.library_path()
    except (ImportError, Error):
        return None
    return Engine(MODEL)


@pytest.fixture(scope="module")
def model_pool():
    if not os.path.isfile(os.path.join(MODEL, "model_index.json")):
        pytest.skip(f"model folder {MODEL} not present")
    exe = _pipeline_binary()
    cp, wp = _port(), _port()
    procs = [subprocess.Popen([exe, "broker", "--clients", f"tcp://127.0.0.1:{cp}", "--workers", f"tcp://127.0.0.1:{wp}", *FAST],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([exe, "worker", "--connect", f"tcp://127.0.0.1:{wp}", "--model", MODEL, "--name", "model", *FAST],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    endpoint = f"tcp://127.0.0.1:{cp}"
    try:
        with Client(endpoint, timeout=0.5, retries=0) as c:
            for _ in range(200):
                try:
                    ws = c.status()["workers"]
                    if ws and "restore" in ws[0]["ops"] and "detect" in ws[0]["ops"]:
                        break
                except Error:
                    pass
                time.sleep(0.05)
            else:
                pytest.fail("the worker never announced restore and detect")
        yield endpoint
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()


def test_restore_through_pool_matches_engine(model_pool):
    x = np.random.default_rng(4).random((38, 53, 3)).astype(np.float32)
    seen = []
    with Client(model_pool, timeout=20, retries=0) as c:
        y = c.restore(x, seed=5, steps=2, max_passes=2, progress=lambda d, t: seen.append((d, t)))
        assert y.dtype == np.float32 and y.shape == (38, 53, 3)
        assert np.all((y >= 0) & (y <= 1))
        assert seen and all(0 <= d <= t for d, t in seen)
        # PNG bytes in → PNG bytes out; a prompt is exactly one pass.
        with open(SAMPLE, "rb") as f:
            png = f.read()
        out = c.restore(png, prompt="remove the noise", steps=1, seed=1)
        assert isinstance(out, bytes) and out[:8] == b"\x89PNG\r\n\x1a\n"
        with pytest.raises(Error) as e:
            c.restore(x, steps="many")
        assert e.value.code == "invalid_input"
    engine = _engine_or_none()
    if engine is None:
        pytest.skip("libautodir not built: no in-process comparison")
    with engine:
        expected = engine.restore(x, seed=5, steps=2, max_passes=2)
    assert expected.shape == y.shape
    assert np.abs(expected - y).max() <= 1e-5


def test_detect_through_pool_matches_engine(model_pool):
    x = np.random.default_rng(5).random((40, 31, 3)).astype(np.float32)
    with Client(model_pool, timeout=20, retries=0) as c:
        d = c.detect(x)
        with open(SAMPLE, "rb") as f:
            d_png = c.detect(f.read())
    for r in (d, d_png):
        assert set(r) == {"artifact", "probabilities"}
        assert r["artifact"] in r["probabilities"]
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-4
    engine = _engine_or_none()
    if engine is None:
        pytest.skip("libautodir not built: no in-process comparison")
    with engine:
        for got, image in ((d, x), (d_png, SAMPLE)):
            e = engine.detect(image)
            assert got["artifact"] == e["artifact"]
            assert set(got["probabilities"]) == set(e["probabilities"])
            for k, p in e["probabilities"].items():
                assert abs(got["probabilities"][k] - p) <= 1e-5, k

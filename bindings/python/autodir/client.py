"""ZeroMQ client of the autodir worker pool (protocol: docs/PROTOCOL.md).

    from autodir import Client
    with Client("tcp://127.0.0.1:5555", timeout=10, retries=3) as c:
        y = c.call("echo", np.zeros((1, 3, 8, 8), np.float32))
        print(c.status()["queue_depth"])

Requests carry an id; when the broker is silent for `timeout` seconds the client reconnects and sends
the same request again with the same id (Lazy Pirate), so a retry never runs a job twice and a
finished result comes back from the broker's cache.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np
import zmq

PROTOCOL_VERSION = 1

__all__ = ["Client", "Error", "PROTOCOL_VERSION"]


class Error(Exception):
    """An error reply from the pool (``code`` as in docs/PROTOCOL.md), or ``code == "timeout"``."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


def _read_key_lines(path: str) -> list:
    with open(path, "r", encoding="ascii") as f:
        return [l.strip() for l in f if l.strip() and not l.startswith("#")]


def _curve_keys(curve) -> Optional[Tuple[bytes, bytes, bytes]]:
    """curve: None, (client_key_file, server_pub_file), or dict(public=, secret=, server=) of Z85 strings."""
    if curve is None:
        return None
    if isinstance(curve, dict):
        return curve["public"].encode(), curve["secret"].encode(), curve["server"].encode()
    key_file, server = curve
    pub, sec = _read_key_lines(key_file)[:2]
    server_key = server if len(server) == 40 and not server.endswith(".pub") else _read_key_lines(server)[0]
    return pub.encode(), sec.encode(), server_key.encode()


class Client:
    """A client of one broker. Not thread-safe: use one per thread.

    endpoint: the broker's client endpoint, e.g. ``"tcp://HOST:5555"``.
    timeout:  seconds of silence (no result, progress or heartbeat) before a retry.
    retries:  re-sends after silence before raising ``Error("timeout")``.
    curve:    ``(client_key_file, server_pub_file)`` from ``autodir keygen``, or a dict of Z85 keys.
    """

    def __init__(self, endpoint: str, timeout: float = 10.0, retries: int = 3, curve=None,
                 context: Optional[zmq.Context] = None):
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.retries = int(retries)
        self._curve = _curve_keys(curve)
        self._context = context or zmq.Context.instance()
        self._socket: Optional[zmq.Socket] = None

    # -- sockets -------------------------------------------------------------------------------
    def _connected(self) -> zmq.Socket:
        if self._socket is None:
            s = self._context.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)  # a request to a dead broker must not block close() or exit
            if self._curve:
                pub, sec, server = self._curve
                s.curve_publickey, s.curve_secretkey, s.curve_serverkey = pub, sec, server
            s.connect(self.endpoint)
            self._socket = s
        return self._socket

    def _reset(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def close(self) -> None:
        self._reset()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------------
    def _exchange(self, frames: list, rid: Optional[str], progress: Optional[Callable[[int, int], Any]] = None):
        for attempt in range(self.retries + 1):
            if attempt:
                self._reset()
            s = self._connected()
            s.send_multipart(frames, copy=False)
            while s.poll(int(self.timeout * 1000), zmq.POLLIN):
                msg = s.recv_multipart()
                try:
                    h = json.loads(msg[0])
                except ValueError:
                    continue
                if not isinstance(h, dict) or h.get("id") != rid:
                    continue  # a stale reply or a heartbeat for another request
                kind = h.get("type")
                if kind == "heartbeat":
                    continue
                if kind == "progress":
                    if progress is not None:
                        progress(int(h.get("done", 0)), int(h.get("total", 0)))
                    continue
                if kind == "error":
                    raise Error(h.get("code", "internal"), h.get("message", ""))
                return h, msg[1:]
        self._reset()
        raise Error("timeout", f"no reply from {self.endpoint} after {self.retries + 1} tries of {self.timeout} s")

    def call(self, op: str, array: Union[np.ndarray, bytes, None] = None, *, deadline_ms: Optional[int] = None,
             progress: Optional[Callable[[int, int], Any]] = None, id: Optional[str] = None, **options):
        """Runs ``op`` on ``array`` (a float32 tensor, or PNG ``bytes``) and returns the result.

        A float32 result comes back as a numpy array of the returned shape, a PNG result as bytes,
        a result without data as its header dict. ``options`` go to the handler (e.g. ``ms=200``
        for ``sleep``). ``progress(done, total)`` sees PARTIAL messages. Raises ``Error``.
        """
        rid = id or str(uuid.uuid4())
        header = {"v": PROTOCOL_VERSION, "type": "request", "id": rid, "op": op, "options": options}
        if deadline_ms is not None:
            header["deadline_ms"] = int(deadline_ms)
        data: list = []
        if array is None:
            header["dtype"] = "none"
        elif isinstance(array, (bytes, bytearray, memoryview)):
            header["dtype"] = "png"
            data = [bytes(array)]
        else:
            a = np.ascontiguousarray(array, dtype="<f4")
            header["dtype"] = "float32"
            header["shape"] = list(a.shape)
            data = [memoryview(a).cast("B")]
        h, frames = self._exchange([json.dumps(header).encode()] + data, rid, progress)
        dtype = h.get("dtype")
        if dtype == "float32" and frames:
            return np.frombuffer(frames[0], dtype="<f4").reshape(h["shape"]).copy()
        if dtype == "png" and frames:
            return bytes(frames[0])
        return h

    def status(self) -> dict:
        """The broker's metrics: workers, queue_depth, in_flight, completed, failed, latency_us …"""
        h, _ = self._exchange([json.dumps({"v": PROTOCOL_VERSION, "type": "status"}).encode()], None)
        return h

    def cancel(self, id: str) -> bool:
        """Cancels request ``id``; True if it was still queued or running."""
        h, _ = self._exchange([json.dumps({"v": PROTOCOL_VERSION, "type": "cancel", "id": id}).encode()], id)
        return bool(h.get("found"))

    # -- image helpers mirroring Engine (numpy H×W×3 in, float32 H×W×3 out) --------------------
    @staticmethod
    def _nchw(img: np.ndarray) -> np.ndarray:
        a = np.asarray(img)
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 image, got shape {a.shape}")
        a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
        return np.ascontiguousarray(a.transpose(2, 0, 1)[None])  # [1, 3, H, W]

    @staticmethod
    def _hwc(t: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(t[0].transpose(1, 2, 0))

    def scm(self, img: np.ndarray, **kw) -> np.ndarray:
        """Structure correction (NAFNet) of an H×W×3 image (uint8 or float in [0, 1]) run as [image, image]."""
        x = self._nchw(img)
        return self._hwc(self.call("scm", np.concatenate([x, x], axis=1), **kw))

    def restore(self, img: Union[np.ndarray, bytes], prompt: Optional[str] = None, seed: int = 0, **kw):
        """Full AutoDIR restoration (needs workers serving op ``restore``, i.e. started with a model folder).

        ``img``: an H×W×3 image (uint8, or float in [0, 1]) → float32 H×W×3 in [0, 1]; or PNG bytes → PNG
        bytes. ``prompt``: a user instruction (one pass) instead of automatic detection. Other options
        (docs/PROTOCOL.md §8): ``steps``, ``cfg_text``, ``cfg_image``, ``max_passes``, ``color_fix``,
        ``sampler``, ``bit_depth`` (PNG); plus ``deadline_ms``, ``progress(done, total)`` and ``id`` as for
        ``call``. The same seed gives the same image as ``autodir.Engine.restore`` (within float rounding).
        """
        opts: dict = {"seed": int(seed)}
        if prompt is not None:
            opts["prompt"] = prompt
        opts.update({k: v for k, v in kw.items() if v is not None})
        if isinstance(img, (bytes, bytearray, memoryview)):
            return self.call("restore", img, **opts)
        return self._hwc(self.call("restore", self._nchw(img), **opts))

    def detect(self, img: Union[np.ndarray, bytes], **kw) -> dict:
        """Degradation detection (BIQA): ``{"artifact": name, "probabilities": {category: p, ...}}``, as
        ``autodir.Engine.detect`` (needs workers serving op ``detect``). ``img`` as for ``restore``."""
        x = img if isinstance(img, (bytes, bytearray, memoryview)) else self._nchw(img)
        h = self.call("detect", x, **kw)
        return {"artifact": h["artifact"], "probabilities": h["probabilities"]}

"""The service's model, off the event loop: one thread runs every model call, in order, and
embeds the images of concurrent requests together.

JAX runs the model on a device; two calls at once on one device would only contend (and on a CPU
oversubscribe its cores). So the model has exactly one thread, fed by a queue: a request's
embedding waits its turn, and whatever other requests queued meanwhile are embedded in the same
batch (the encoder pads every call to its batch size anyway, so a batch of several requests costs
about what one costs). Decoding and preprocessing uploads (numpy and PIL) run beside it, on at
most one thread per core.

`score_enrolment` is the one place where a questioned scan meets a writer's references, ad hoc or
enrolled: today the K reference scores fused by the workdir's `config.eval.fusion`, as `eval.py`
and `siamjax-verify` score K references.

Not for: HTTP (`siamjax.serve.app`) or storage (`siamjax.serve.store`).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import numpy as np

from siamjax.verify.lib import Verifier
from siamjax.verify.records import Decision


def score_enrolment(
    verifier: Verifier,
    references: np.ndarray,
    questioned: np.ndarray,
    reference_names: Sequence[str],
    questioned_name: str,
) -> Decision:
    """The decision on a questioned embedding [D] against a writer's reference embeddings [K, D].

    Today: the K (reference, questioned) scores fused by the verifier's fusion (the workdir's
    `config.eval.fusion`), the threshold calibrated on validation: exactly what `siamjax-verify`
    gives for the same files. A writer-dependent enrolment method chosen by the config belongs
    here, so that ad hoc and enrolled references score alike.
    """
    return verifier.decide_embeddings(references, questioned, reference_names, questioned_name)


class Engine:
    """A `Verifier` behind one model thread. Use `embed` and `decide` from the event loop."""

    def __init__(self, verifier: Verifier, max_batch_images: int = 256):
        self.verifier = verifier.load()
        self.identity = verifier.model_identity()
        self.max_batch_images = max_batch_images
        # Compiles the encoder and the head now, so that the first request waits for nothing
        # and a model that cannot run fails at start-up.
        blank = np.zeros((1, self.verifier.height, self.verifier.width, 1), np.uint8)
        e = self.verifier.embed_images(blank)
        score_enrolment(self.verifier, e, e[0], ["warm-up"], "warm-up")
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="siamjax-model", daemon=True)
        self._thread.start()
        # Preprocessing holds a decoded page (up to 100 megapixels as float32) per call.
        self._preprocess_limiter = anyio.CapacityLimiter(max(1, os.cpu_count() or 1))
        self.model_calls = 0  # Calls run by the model thread (for /healthz and benchmarks),
        self.embed_batches = 0  # of which encoder batches,
        self.embedded_images = 0  # holding this many images.

    @property
    def queued(self) -> int:
        """Model calls waiting for the model thread (approximate, as any queue size)."""
        return self._queue.qsize()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    # ---- on the event loop -----------------------------------------------------------------

    async def preprocess(self, data: bytes, name: str) -> np.ndarray:
        """uint8 [H, W, 1] of a file's bytes, off the event loop; `UserError` naming `name`."""
        return await anyio.to_thread.run_sync(
            self.verifier.preprocess_bytes, data, name, limiter=self._preprocess_limiter
        )

    async def embed(self, images: np.ndarray) -> np.ndarray:
        """float32 [n, D] of uint8 [n, H, W, 1], batched with other requests' images."""
        return await self._submit("embed", np.asarray(images, np.uint8))

    async def decide(
        self,
        references: np.ndarray,
        questioned: np.ndarray,
        reference_names: Sequence[str],
        questioned_name: str,
    ) -> Decision:
        """`score_enrolment` on the model thread."""
        return await self._submit(
            "call",
            lambda: score_enrolment(
                self.verifier, references, questioned, reference_names, questioned_name
            ),
        )

    async def _submit(self, kind: str, payload: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((kind, payload, future, loop))
        return await future

    # ---- on the model thread ---------------------------------------------------------------

    @staticmethod
    def _settle(
        future: asyncio.Future, loop, result: Any = None, error: BaseException | None = None
    ):
        def settle():
            if future.done():  # The request went away (client disconnected, cancelled).
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        loop.call_soon_threadsafe(settle)

    def _loop(self) -> None:
        pending: list = []
        while True:
            item = pending.pop(0) if pending else self._queue.get()
            if item is None:
                return
            kind, payload, future, loop = item
            if kind == "call":
                self._run(lambda p=payload: p(), [(future, loop)])
                continue
            # Embeddings: take every embedding request already waiting, up to max_batch_images.
            batch, count = [item], len(payload)
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or nxt[0] != "embed" or count + len(nxt[1]) > self.max_batch_images:
                    pending.append(nxt)
                    break
                batch.append(nxt)
                count += len(nxt[1])
            images = np.concatenate([b[1] for b in batch])
            self.embed_batches += 1
            self.embedded_images += len(images)
            sizes = np.cumsum([len(b[1]) for b in batch])[:-1]
            self._run(
                lambda images=images, sizes=sizes: np.split(
                    self.verifier.embed_images(images), sizes
                ),
                [(b[2], b[3]) for b in batch],
                split=True,
            )

    def _run(self, fn: Callable[[], Any], waiters: list, split: bool = False) -> None:
        self.model_calls += 1
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the request that asked.
            for future, loop in waiters:
                self._settle(future, loop, error=e)
            return
        results = result if split else [result]
        for (future, loop), r in zip(waiters, results, strict=True):
            self._settle(future, loop, result=r)

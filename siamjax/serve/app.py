"""The HTTP face of the service: a FastAPI app over an `Engine` (the model) and a `Store` (the
enrolled writers). `create_app(engine, store)` builds it; `siamjax.serve.cli` runs it.

    GET    /                       the page (static/index.html: no build step)
    GET    /healthz                {"status": "ok", ...}
    GET    /api/model              threshold, fusion, checkpoint step, fingerprint, limits
    POST   /api/verify             multipart: questioned + (reference... | writer) -> the JSON
                                   object `siamjax-verify --json` prints for the same files
    POST   /api/writers            multipart: writer + reference... -> enrols (adds references)
    GET    /api/writers            the enrolled writers
    GET    /api/writers/{writer}   one writer's references (names, SHA-256, when)
    DELETE /api/writers/{writer}   forgets a writer
    POST   /api/preprocess         multipart: file -> PNG of the model's input (what it sees)

Every error is a 4xx with {"error": "<one line naming the file, field or writer>"}: 400 a bad
file or field, 401 a missing or wrong token, 404 an unknown writer, 409 a writer enrolled under
another model, 413 a body over --max-upload-mb, 422 a missing field. The server lives on.
With a token, every /api/ call must carry `Authorization: Bearer <token>`; the page and /healthz
need none (the page asks for the token when the API refuses it).
"""

from __future__ import annotations

import asyncio
import hmac
import io
import os
import pathlib
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from siamjax.errors import UserError, one_line
from siamjax.serve.engine import Engine
from siamjax.serve.store import ModelMismatch, Store, UnknownWriter, check_writer_name

STATIC = pathlib.Path(__file__).parent / "static"
MAX_FILES = 64  # Files per request: references of one writer, not a dataset.


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status)


class _BodyTooLarge(StarletteHTTPException):
    """Raised from inside the body's parsing: an HTTPException, so that FastAPI passes it on
    (it turns any other exception there into a 400)."""

    def __init__(self, max_body: int):
        super().__init__(
            413,
            f"request body over the server's limit of {max_body / 2**20:g} MB (--max-upload-mb).",
        )


class _Guard:
    """ASGI middleware: 413 for a body over the limit (by Content-Length, or counted as it
    streams), 401 for an /api/ call without the token. Runs before the body is parsed."""

    def __init__(self, app, max_body: int, token: str | None):
        self.app, self.max_body, self.token = app, max_body, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.token and scope["path"].startswith("/api/"):
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                what = "a wrong token" if given else "no token"
                response = _error(
                    401,
                    f"this server needs its token ({what} given): send "
                    "'Authorization: Bearer <token>'.",
                )
                return await response(scope, receive, send)
        too_large = _BodyTooLarge(self.max_body)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _error(413, too_large.detail)(scope, receive, send)
        seen, started = 0, False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise too_large
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _error(413, too_large.detail)(scope, receive, send)


def create_app(
    engine: Engine, store: Store, *, max_upload_mb: float = 20, token: str | None = None
) -> FastAPI:
    """The service over a loaded engine and an open store; `token` guards every /api/ call.
    The caller closes both when the server has stopped."""

    app = FastAPI(
        title="siamjax verification service",
        summary="Enrol writers and verify questioned signatures with a trained siamjax workdir.",
    )
    app.state.engine, app.state.store = engine, store
    verifier = engine.verifier

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError):
        status = (
            404 if isinstance(e, UnknownWriter) else 409 if isinstance(e, ModelMismatch) else 400
        )
        return _error(status, str(e))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        if first.get("type") == "missing":
            return _error(422, f"{field}: missing field (the form is in GET /openapi.json).")
        return _error(422, f"{field}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail))

    # ---- helpers ---------------------------------------------------------------------------

    def name_of(upload: UploadFile, fallback: str) -> str:
        return os.path.basename(upload.filename or "") or fallback

    def present(files: list[UploadFile] | None) -> list[UploadFile]:
        """Browsers send an empty part for a file input left empty: that is no file."""
        return [f for f in files or [] if f.filename or (f.size or 0) > 0]

    async def read_and_embed(uploads: list[UploadFile], role: str):
        """-> (names, bytes, images uint8 [n, H, W, 1], embeddings [n, D]); a bad file is a
        UserError naming it (the first one, in the order given)."""
        if len(uploads) > MAX_FILES:
            raise UserError(f"{role}: {len(uploads)} files, at most {MAX_FILES} per request.")
        names = [name_of(u, f"{role} {i + 1}") for i, u in enumerate(uploads)]
        data = [await u.read() for u in uploads]
        # Side by side (one thread per core at most); the first bad file in the given order wins.
        results = await asyncio.gather(
            *(engine.preprocess(d, n) for d, n in zip(data, names, strict=True)),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        images = np.stack(results)
        return names, data, images, await engine.embed(images)

    # ---- routes ----------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "checkpoint_step": verifier.step,
            "model_calls": engine.model_calls,
            "embed_batches": engine.embed_batches,
            "embedded_images": engine.embedded_images,
        }

    @app.get("/api/model")
    async def model() -> dict[str, Any]:
        return {
            "workdir": verifier.workdir,
            "checkpoint_step": verifier.step,
            "threshold": verifier.threshold,
            "threshold_source": verifier.threshold_source,
            "fusion": verifier.fusion,
            "enrollment": verifier.enrollment,
            "prior_positive": verifier.prior_positive,
            "input": {"height": verifier.height, "width": verifier.width},
            "model_fingerprint": store.fingerprint,
            "identity": engine.identity,
            "max_upload_mb": max_upload_mb,
            "max_files": MAX_FILES,
        }

    @app.post("/api/verify")
    async def verify(
        questioned: Annotated[UploadFile, File(description="the scan to verify")],
        reference: Annotated[
            list[UploadFile] | None, File(description="ad hoc genuine scans")
        ] = None,
        writer: Annotated[str | None, Form(description="an enrolled writer, or references")] = None,
    ) -> dict[str, Any]:
        """The decision on `questioned` against ad hoc `reference` files or an enrolled `writer`:
        the JSON object `siamjax-verify --json` prints for the same files."""
        refs = present(reference)
        if refs and writer:
            raise UserError("give either reference files or a writer, not both.")
        if not refs and not (writer or "").strip():
            raise UserError("give one or more reference files, or an enrolled writer.")
        if not present([questioned]):
            raise UserError("questioned: no file given.")
        if writer:
            # An unknown writer is a 404 before any model work.
            enrolled = await anyio.to_thread.run_sync(store.references, writer)
            q_names, _, _, q_emb = await read_and_embed([questioned], "questioned")
            ref_emb = np.stack([r.embedding for r in enrolled])
            ref_names = [r.file_name for r in enrolled]
        else:
            names, _, _, emb = await read_and_embed([*refs, questioned], "reference")
            q_names, q_emb = names[-1:], emb[-1:]
            ref_names, ref_emb = names[:-1], emb[:-1]
        decision = await engine.decide(ref_emb, q_emb[0], ref_names, q_names[0])
        return decision.to_json()

    @app.post("/api/writers")
    async def enrol(
        writer: Annotated[str, Form(description="the writer's name")],
        reference: Annotated[list[UploadFile], File(description="genuine scans of the writer")],
    ) -> dict[str, Any]:
        """Enrols `writer` with the `reference` scans, or adds them to its references."""
        refs = present(reference)
        if not refs:
            raise UserError("reference: give one or more reference scans to enrol.")
        check_writer_name(writer)  # Before any model work.
        names, data, _, emb = await read_and_embed(refs, "reference")
        return await anyio.to_thread.run_sync(
            store.enrol, writer, list(zip(names, data, emb, strict=True))
        )

    @app.get("/api/writers")
    async def writers() -> dict[str, Any]:
        return {"writers": store.writers()}

    @app.get("/api/writers/{writer:path}")
    async def writer_detail(writer: str) -> dict[str, Any]:
        refs = await anyio.to_thread.run_sync(store.references, writer)
        return {
            "writer": writer,
            "references": [
                {"file_name": r.file_name, "sha256": r.sha256, "enrolled_at": r.enrolled_at}
                for r in refs
            ],
        }

    @app.delete("/api/writers/{writer:path}")
    async def delete_writer(writer: str) -> dict[str, Any]:
        n = await anyio.to_thread.run_sync(store.delete, writer)
        return {"deleted": writer, "references": n}

    @app.post("/api/preprocess")
    async def preprocess(file: Annotated[UploadFile, File(description="a scan")]) -> Response:
        """PNG of the file as the model sees it: ink high (white) on black, at the model's size."""
        image = await engine.preprocess(await file.read(), name_of(file, "file"))
        buf = io.BytesIO()
        Image.fromarray(image[..., 0]).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    app.add_middleware(_Guard, max_body=int(max_upload_mb * 2**20), token=token)
    return app

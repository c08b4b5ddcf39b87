"""siamjax.serve's API through FastAPI's test client, on the session's tiny workdir: the same
decisions as siamjax-verify, enrolment in SQLite, bad input, limits, the token, the model on one
thread, and the database after a SIGKILL."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from siamjax import verify
from siamjax.datasets.synthetic import generator as synthetic

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("httpx", reason="the test extra (httpx, for the test client) is missing")

from fastapi.testclient import TestClient  # noqa: E402

from siamjax.serve import cli, store  # noqa: E402
from siamjax.serve.app import create_app  # noqa: E402
from siamjax.serve.engine import Engine  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scan(writer: int, index: int) -> bytes:
    """A synthetic signature as a scan looks (dark ink on white paper), as PNG bytes."""
    ink = synthetic.render_genuine(synthetic.make_writer(5, writer), index, 90, 150, 5, writer)
    page = np.full((130, 210), 255, np.uint8)
    page[20:110, 30:180] = 255 - ink[..., 0]
    buf = io.BytesIO()
    Image.fromarray(page).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(side: int) -> bytes:
    """A PNG of a few hundred bytes whose header claims side x side pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (side + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Scans of writer A (a0..a3) and B (b0), and bad files, on disk (for the Verifier)."""
    d = tmp_path_factory.mktemp("serve_files")
    data = {f"a{i}": _scan(0, i) for i in range(4)} | {"b0": _scan(1, 0)}
    blank = io.BytesIO()
    Image.new("L", (210, 130), 250).save(blank, format="PNG")
    data |= {
        "truncated": data["a0"][: len(data["a0"]) // 2],
        "text": b"not an image\n",
        "bomb": _bomb_png(12_000),
        "blank": blank.getvalue(),
    }
    out = {}
    for name, content in data.items():
        out[name] = str(d / f"{name}.png")
        with open(out[name], "wb") as f:
            f.write(content)
    return out


def _part(field: str, path: str) -> tuple[str, tuple[str, bytes, str]]:
    with open(path, "rb") as f:
        return (field, (os.path.basename(path), f.read(), "image/png"))


@pytest.fixture(scope="module")
def engine(tiny_run) -> Engine:
    workdir = tiny_run[1]
    config = verify.load_config(workdir)
    e = Engine(verify.Verifier(workdir, fusion=verify.config_fusion(config)))
    yield e
    e.close()


@pytest.fixture
def make_client(engine, tmp_path):
    stores = []

    def make(**kwargs) -> TestClient:
        s = store.Store(tmp_path / f"db{len(stores)}.sqlite", engine.identity)
        stores.append(s)
        return TestClient(create_app(engine, s, **kwargs))

    yield make
    for s in stores:
        s.close()


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def _same_decision(api: dict, lib: verify.Decision, tol: float = 1e-6) -> None:
    expected = lib.to_json()
    assert set(api) == set(expected)
    assert api["questioned"] == os.path.basename(expected["questioned"])
    assert api["references"] == [os.path.basename(r) for r in expected["references"]]
    for key in ("fusion", "threshold", "prior_positive", "decision", "checkpoint_step"):
        assert api[key] == expected[key], key
    np.testing.assert_allclose(api["reference_scores"], expected["reference_scores"], atol=tol)
    assert api["score"] == pytest.approx(expected["score"], abs=tol)
    assert api["llr"] == pytest.approx(expected["llr"], abs=1e-4)


def test_verify_with_references_is_siamjax_verify(client, engine, files):
    for refs, q in (([files["a0"]], files["a1"]), ([files["a0"], files["a1"]], files["b0"])):
        r = client.post(
            "/api/verify", files=[*(_part("reference", p) for p in refs), _part("questioned", q)]
        )
        assert r.status_code == 200, r.text
        _same_decision(r.json(), engine.verifier.verify(refs, q))


def test_enrol_list_verify_delete(client, engine, files):
    enrol = client.post(
        "/api/writers",
        data={"writer": "alice"},
        files=[_part("reference", files["a0"]), _part("reference", files["a1"])],
    )
    assert enrol.status_code == 200, enrol.text
    assert enrol.json() == {
        "writer": "alice",
        "added": ["a0.png", "a1.png"],
        "already_enrolled": [],
        "references": 2,
    }
    again = client.post(
        "/api/writers",
        data={"writer": "alice"},
        files=[_part("reference", files["a1"]), _part("reference", files["a2"])],
    ).json()
    assert again["added"] == ["a2.png"] and again["already_enrolled"] == ["a1.png"]
    (w,) = client.get("/api/writers").json()["writers"]
    assert w["writer"] == "alice" and w["references"] == 3 and w["usable"]
    detail = client.get("/api/writers/alice").json()["references"]
    with open(files["a2"], "rb") as f:
        assert detail[2]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    for q in ("a3", "b0"):  # The enrolled writer scores as its files given as references.
        r = client.post(
            "/api/verify", data={"writer": "alice"}, files=[_part("questioned", files[q])]
        )
        assert r.status_code == 200, r.text
        refs = [files["a0"], files["a1"], files["a2"]]
        _same_decision(r.json(), engine.verifier.verify(refs, files[q]))
    odd = client.post(  # Any printable name, a slash included, round-trips through the URL.
        "/api/writers", data={"writer": "a/b é"}, files=[_part("reference", files["a0"])]
    )
    assert odd.status_code == 200
    assert client.get("/api/writers/a%2Fb%20%C3%A9").json()["writer"] == "a/b é"
    assert client.delete("/api/writers/a%2Fb%20%C3%A9").status_code == 200
    assert client.delete("/api/writers/alice").json() == {"deleted": "alice", "references": 3}
    r = client.post(
        "/api/verify", data={"writer": "alice"}, files=[_part("questioned", files["a3"])]
    )
    assert r.status_code == 404 and r.json() == {"error": "writer 'alice' is not enrolled."}
    assert client.delete("/api/writers/alice").status_code == 404


@pytest.mark.parametrize("bad", ["truncated", "text", "bomb", "blank"])
def test_bad_files_are_400_naming_them_and_the_server_lives_on(client, files, bad):
    as_questioned = client.post(
        "/api/verify", files=[_part("reference", files["a0"]), _part("questioned", files[bad])]
    )
    as_reference = client.post(
        "/api/verify", files=[_part("reference", files[bad]), _part("questioned", files["a0"])]
    )
    enrol = client.post(
        "/api/writers", data={"writer": "w"}, files=[_part("reference", files[bad])]
    )
    preview = client.post("/api/preprocess", files=[_part("file", files[bad])])
    for r in (as_questioned, as_reference, enrol, preview):
        assert r.status_code == 400, r.text
        (message,) = r.json().values()
        assert f"{bad}.png" in message and "\n" not in message
    assert client.get("/api/writers").json() == {"writers": []}  # Nothing half-enrolled.
    ok = client.post(
        "/api/verify", files=[_part("reference", files["a0"]), _part("questioned", files["a1"])]
    )
    assert ok.status_code == 200


def test_missing_or_conflicting_fields_are_4xx_one_line(client, files):
    cases = [
        (client.post("/api/verify", files=[_part("reference", files["a0"])]), 422, "questioned"),
        (client.post("/api/verify", files=[_part("questioned", files["a0"])]), 400, "reference"),
        (
            client.post(
                "/api/verify",
                data={"writer": "x"},
                files=[_part("reference", files["a0"]), _part("questioned", files["a1"])],
            ),
            400,
            "not both",
        ),
        (client.post("/api/writers", files=[_part("reference", files["a0"])]), 422, "writer"),
        (client.post("/api/writers", data={"writer": "x"}), 422, "reference"),
        (
            client.post(
                "/api/writers", data={"writer": "  "}, files=[_part("reference", files["a0"])]
            ),
            400,
            "writer",
        ),
        (client.get("/api/writers/nobody"), 404, "nobody"),
    ]
    for r, status, word in cases:
        assert r.status_code == status, (r.status_code, r.text)
        assert set(r.json()) == {"error"} and word in r.json()["error"], r.text


def test_body_over_the_limit_is_413(make_client, files):
    client = make_client(max_upload_mb=0.05)
    big = ("questioned", ("big.png", b"\0" * 80_000, "image/png"))
    r = client.post("/api/verify", files=[_part("reference", files["a0"]), big])
    assert r.status_code == 413 and "--max-upload-mb" in r.json()["error"]

    def chunks():  # No Content-Length: counted as it streams.
        yield (
            b'--b\r\nContent-Disposition: form-data; name="questioned"; filename="q.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        for _ in range(20):
            yield b"x" * 8192
        yield b"\r\n--b--\r\n"

    r = client.post(
        "/api/verify",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 413
    small = client.post(
        "/api/verify", files=[_part("reference", files["a0"]), _part("questioned", files["a1"])]
    )
    assert small.status_code == 200


def test_token_guards_every_api_call(make_client, files):
    client = make_client(token="s3cret")
    assert client.get("/api/writers").status_code == 401
    wrong = client.get("/api/writers", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "wrong token" in wrong.json()["error"]
    refused = client.post(
        "/api/verify", files=[_part("reference", files["a0"]), _part("questioned", files["a1"])]
    )
    assert refused.status_code == 401
    ok = client.get("/api/writers", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200


def test_writer_of_another_model_is_refused(engine, tmp_path, files):
    db = tmp_path / "shared.sqlite"
    other = dict(engine.identity, checkpoint_step=999, weights_sha256="0" * 64)
    old = store.Store(db, other)
    old.enrol("carol", [("c.png", b"c", np.zeros(16, np.float32))])
    old.close()
    s = store.Store(db, engine.identity)
    client = TestClient(create_app(engine, s))
    (w,) = client.get("/api/writers").json()["writers"]
    assert w["writer"] == "carol" and not w["usable"]
    r = client.post(
        "/api/verify", data={"writer": "carol"}, files=[_part("questioned", files["a0"])]
    )
    assert r.status_code == 409 and "step 999" in r.json()["error"]
    r = client.post(
        "/api/writers", data={"writer": "carol"}, files=[_part("reference", files["a0"])]
    )
    assert r.status_code == 409
    assert client.delete("/api/writers/carol").status_code == 200
    s.close()


def test_model_endpoint_says_how_it_decides(client, engine):
    """GET /api/model (the page's header line): the checkpoint, threshold, fusion and writer
    enrolment the decisions use."""
    m = client.get("/api/model").json()
    v = engine.verifier
    assert m["checkpoint_step"] == v.step and m["threshold"] == v.threshold
    assert m["fusion"] == v.fusion and m["enrollment"] == v.enrollment == "none"
    assert m["input"] == {"height": v.height, "width": v.width}


def test_preprocess_shows_the_model_input(client, engine, files):
    r = client.post("/api/preprocess", files=[_part("file", files["a0"])])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    shown = np.asarray(Image.open(io.BytesIO(r.content)))
    with open(files["a0"], "rb") as f:
        np.testing.assert_array_equal(
            shown, engine.verifier.preprocess_bytes(f.read(), "a0")[..., 0]
        )
    page = client.get("/")
    assert page.status_code == 200 and 'id="enrol-files"' in page.text


def test_model_runs_on_one_thread_and_batches(engine, files, monkeypatch, tmp_path):
    """Concurrent requests: the model never runs twice at once; their images share batches."""
    import httpx

    inside, most, calls = 0, 0, []
    lock = threading.Lock()
    real = engine.verifier.embed_images

    def watched(images):
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
            calls.append(len(images))
        # Hold the first call until every other request waits for the model. Each request embeds
        # 2 images; requests that queued before the model thread woke are in this first call.
        deadline = time.monotonic() + 30
        while len(calls) == 1 and engine.queued < len(questions) - calls[0] // 2:
            assert time.monotonic() < deadline, "the other requests never reached the model"
            time.sleep(0.01)
        try:
            return real(images)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(engine.verifier, "embed_images", watched)
    s = store.Store(tmp_path / "c.sqlite", engine.identity)
    app = create_app(engine, s)
    with open(files["a0"], "rb") as f:
        a0 = f.read()
    questions = [files[n] for n in ("a1", "a2", "a3", "b0")] * 2

    async def one(client, path):
        with open(path, "rb") as f:
            q = f.read()
        return await client.post(
            "/api/verify",
            files=[("reference", ("a0.png", a0)), ("questioned", (os.path.basename(path), q))],
        )

    async def all_at_once():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await asyncio.gather(*(one(client, p) for p in questions))

    responses = asyncio.run(all_at_once())
    s.close()
    assert [r.status_code for r in responses] == [200] * len(questions)
    assert most == 1
    # Every image embedded once, in at most two calls: whoever waited shared one batch.
    assert sum(calls) == 2 * len(questions) and len(calls) <= 2, calls
    for r, q in zip(responses, questions, strict=True):
        _same_decision(r.json(), engine.verifier.verify(files["a0"], q))


def test_refuses_a_public_address_without_token(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    assert cli.main(["--workdir", str(tmp_path), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--token" in err and "0.0.0.0" in err
    assert cli.is_loopback("127.0.0.1") and cli.is_loopback("::1") and cli.is_loopback("localhost")
    assert not cli.is_loopback("192.168.1.4") and not cli.is_loopback("example.org")
    assert cli.main(["--workdir", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


_ENROL_FOREVER = """
import sys, numpy as np
from siamjax.serve import store
s = store.Store(sys.argv[1], {"m": 1})
print("ready", flush=True)
i = 0
while True:
    refs = [(f"r{j}.png", f"{i}-{j}".encode(), np.full(64, j, np.float32)) for j in range(50)]
    s.enrol(f"writer{i}", refs)
    i += 1
"""


def test_sigkill_during_enrolment_leaves_the_database_whole(tmp_path):
    db = str(tmp_path / "killed.sqlite")
    env = dict(os.environ, PYTHONPATH=ROOT)
    for delay in (0.3, 0.7, 1.1):
        p = subprocess.Popen(
            [sys.executable, "-c", _ENROL_FOREVER, db], env=env, stdout=subprocess.PIPE, text=True
        )
        assert p.stdout.readline().strip() == "ready"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        with sqlite3.connect(db) as c:
            assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            counts = c.execute(
                "SELECT w.name, COUNT(r.id) FROM writers w LEFT JOIN reference_scans r "
                "ON r.writer = w.name GROUP BY w.name"
            ).fetchall()
        assert all(n == 50 for _, n in counts), counts  # Whole enrolments only.
    assert counts
    s = store.Store(db, {"m": 1})  # Still opens, and enrols on.
    assert s.enrol("after", [("x.png", b"x", np.zeros(64, np.float32))])["references"] == 1
    s.close()

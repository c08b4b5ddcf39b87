"""siamjax-serve: a local verification service over a trained workdir.

    siamjax-serve --workdir W [--host 127.0.0.1] [--port 8000] [--db FILE] [--max-upload-mb 20]
                  [--token T]
    then open http://127.0.0.1:8000/ (the page); the API: /openapi.json (or /docs, whose
    Swagger UI assets the browser fetches from the internet)

What it is for: people who put a verifier in front of others. The page enrols a writer from a few
genuine scans once, then verifies questioned scans against the enrolled writer (or against
references dropped ad hoc), showing each image as the model sees it, the score, the threshold,
the llr and the decision. `POST /api/verify` answers with the JSON object `siamjax-verify --json`
prints for the same files.

It is a thin layer over `siamjax.verify`'s `Verifier`: `engine.py` (the model on one thread,
requests batched; `score_enrolment`, where references meet a questioned scan), `store.py` (the
enrolled writers' embeddings in SQLite), `app.py` (HTTP), `cli.py` (the command line),
`static/index.html` (the page: plain HTML and JavaScript, no build step).

What it is not for: the open internet (no users, no rate limits, one shared token), or training.
Its dependencies are the `serve` extra: pip install -e ".[serve]".
"""

"""The `siamjax-serve` command line: checks what it is asked for, loads the model, opens the
enrolment store, and runs the app under uvicorn.

It listens on 127.0.0.1 unless told otherwise, and refuses (one line, exit code 2) to listen on
any other address without a token (`--token` or $SIAMJAX_TOKEN): enrolled writers and every
verification would otherwise be open to the network. Everything else a user can fix (a workdir
without a run, a database it cannot open) is also one line and exit code 2, before it listens.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence

from siamjax.errors import UserError, one_line

TOKEN_ENV = "SIAMJAX_TOKEN"
DB_NAME = "enrolment.sqlite"  # Inside the workdir, unless --db.


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siamjax-serve",
        description="Serves a trained siamjax workdir: a page that enrols writers and verifies "
        "questioned scans, and its JSON API (GET /openapi.json on the running server).",
        epilog="example: siamjax-serve --workdir run/  then open http://127.0.0.1:8000/",
    )
    p.add_argument("--workdir", required=True, help="workdir of a training run")
    p.add_argument(
        "--step", type=int, default=None, help="checkpoint step (default: best by validation EER)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--db",
        default=None,
        help=f"SQLite file of the enrolled writers (default: WORKDIR/{DB_NAME})",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=20.0,
        help="largest request body in MB; larger ones get 413 (default: 20)",
    )
    p.add_argument(
        "--token",
        default=None,
        help=f"every API call must carry 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV}); "
        "required to listen on anything but loopback",
    )
    p.add_argument(
        "--enrollment",
        default=None,
        help="writer enrolment (none, znorm, svm, svm_scaled, svm_pair; default: the workdir's "
        "config.eval.enrollment); "
        "other than none it needs eval.py's calibration for it (see siamjax-verify --help)",
    )
    p.add_argument("--verbose", action="store_true", help="keep JAX/orbax log messages")
    return p


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (or 'localhost'): reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # A name: it may resolve to anything.


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit code (0 after a clean shutdown, 2 for anything to fix)."""
    args = _parser().parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        print(
            f"error: --host {args.host} is not loopback: pass --token (or set {TOKEN_ENV}) so "
            "that every API call must carry it, or listen on 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    if not 0 < args.max_upload_mb <= 4096:
        print(
            f"error: --max-upload-mb {args.max_upload_mb} must lie in (0, 4096].", file=sys.stderr
        )
        return 2
    from siamjax import entry  # The same quiet terminal as siamjax-verify.

    entry.quiet_terminal(args.verbose)
    try:
        import uvicorn

        from siamjax.serve.app import create_app
        from siamjax.serve.engine import Engine
        from siamjax.serve.store import Store
        from siamjax.verify.lib import Verifier, config_fusion, load_config
    except ImportError as e:
        print(
            f"error: siamjax-serve needs the serve extra ({one_line(e)}): "
            "pip install -e '.[serve]'",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config(args.workdir)
        engine = Engine(
            Verifier(
                args.workdir,
                step=args.step,
                fusion=config_fusion(config),
                enrollment=args.enrollment,
            )
        )
        db = args.db or os.path.join(args.workdir, DB_NAME)
        store = Store(db, engine.identity)
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    v = engine.verifier
    print(
        f"siamjax-serve: step {v.step} of {v.workdir} (threshold {v.threshold:.4f}, fusion "
        f"{v.fusion}), writers in {os.path.abspath(db)}; "
        f"http://{args.host}:{args.port}/{' (token required)' if token else ''}",
        file=sys.stderr,
        flush=True,
    )
    app = create_app(engine, store, max_upload_mb=args.max_upload_mb, token=token)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    except OSError as e:  # The port is taken, the address is not this machine's, ...
        print(f"error: cannot listen on {args.host}:{args.port} ({one_line(e)})", file=sys.stderr)
        return 2
    finally:
        engine.close()
        store.close()
    return 0


def run() -> None:
    """Entry point of the `siamjax-serve` console script and of `python -m siamjax.serve`."""
    from siamjax import entry

    entry.run_console(main)


if __name__ == "__main__":
    run()

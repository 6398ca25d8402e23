"""``python -m reidkit.serve``: run the search service, or create a token, without a spec.

``reidkit serve -e spec.yaml`` is the usual entry point; this one takes the same settings as
flags, for a quick start and for the tests and benchmark, which start real servers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reidkit.errors import ReidkitError
from reidkit.serve.settings import ServeSettings
from reidkit.serve.tokens import SCOPES, create_token


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reidkit.serve", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    run = verbs.add_parser("run", help="serve the API and the operator page")
    run.add_argument("--model", required=True, type=Path, help="exported .onnx model")
    run.add_argument("--gallery", required=True, help="gallery folder or milvus URI")
    run.add_argument("--tokens", required=True, type=Path, help="token file")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8080)
    run.add_argument("--workers", type=int, default=1)
    run.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all)")
    run.add_argument("--max-batch", type=int, default=32)
    run.add_argument("--batch-wait-ms", type=float, default=5.0)
    run.add_argument("--max-request-bytes", type=int, default=16 * 1024 * 1024)
    run.add_argument("--max-image-pixels", type=int, default=4_000_000)
    run.add_argument("--max-images", type=int, default=64)
    run.add_argument(
        "--match-threshold", type=float, default=None, help="default: the model card's"
    )
    run.add_argument("--log-level", default="info")
    token = verbs.add_parser("token", help="create a token and print it once")
    token.add_argument("--file", required=True, type=Path, help="token file (created if absent)")
    token.add_argument("--name", required=True, help="who holds it (shown in the audit log)")
    token.add_argument(
        "--scopes", default="search", help=f"comma-separated, of {', '.join(SCOPES)}"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.verb == "token":
            print(create_token(args.file, args.name, args.scopes.split(",")))
            return 0
        from reidkit.serve.runner import run_server

        settings = ServeSettings(
            model=args.model, gallery=args.gallery, tokens=args.tokens, host=args.host,
            port=args.port, workers=args.workers, threads=args.threads,
            max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
            max_request_bytes=args.max_request_bytes, max_image_pixels=args.max_image_pixels,
            max_images=args.max_images, match_threshold=args.match_threshold,
        )  # fmt: skip
        run_server(settings, log_level=args.log_level)
    except ReidkitError as error:
        print(f"reidkit serve: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

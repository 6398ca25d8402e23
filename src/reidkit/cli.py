"""Command line: ``reidkit <action> -e spec.yaml [section.key=value ...]``.

The CLI only parses arguments, loads the spec and calls the action's Python function; every
user-fixable problem arrives as a :class:`ReidkitError` and leaves as one line on stderr with
exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from reidkit import __version__
from reidkit.config.spec import ExperimentSpec, load_spec
from reidkit.errors import ReidkitError

EXIT_USER_ERROR = 2


def _train(spec: ExperimentSpec) -> None:
    from reidkit.engine.train import train

    result = train(spec)
    kpi = ", ".join(f"{k} {v:.2f}" for k, v in result.kpi.items()) or "no validation run"
    print(f"trained {result.epochs} epochs -> {result.checkpoint} ({kpi})")


def _evaluate(spec: ExperimentSpec) -> None:
    from reidkit.evaluation.evaluate import evaluate

    result = evaluate(spec)
    print(f"metrics, plots and status written to {result.results_dir}")


def _inference(spec: ExperimentSpec) -> None:
    from reidkit.evaluation.infer import infer

    result = infer(spec)
    print(f"embedded {result.num_images} images -> {result.output_file}, {result.matches_file}")


def _export(spec: ExperimentSpec) -> None:
    from reidkit.export.onnx import export

    result = export(spec)
    print(
        f"exported {result.onnx_file}: max |onnx - torch| {result.max_abs_diff:.2e}, "
        f"min cosine {result.min_cosine:.6f}"
    )


# Action name -> (help, function of the resolved spec). New actions register here.
SPEC_ACTIONS: dict[str, tuple[str, Callable[[ExperimentSpec], None]]] = {
    "train": ("train a model (resumes from the latest checkpoint in results_dir)", _train),
    "evaluate": ("CMC / mAP / mINP of a checkpoint or .onnx model, with plots", _evaluate),
    "inference": ("embeddings and top matches for every query and gallery image", _inference),
    "export": ("write an ONNX model and verify it against PyTorch", _export),
}


def _synth(args: argparse.Namespace) -> None:
    from reidkit.data import synthesize

    summary = synthesize(
        Path(args.out), ids=args.ids, cameras=args.cameras, images_per_id=args.images_per_id,
        height=args.height, width=args.width, seed=args.seed,
    )  # fmt: skip
    print(f"wrote synthetic dataset to {args.out}: {summary}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reidkit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"reidkit {__version__}")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, (help_text, _) in SPEC_ACTIONS.items():
        sub = actions.add_parser(name, help=help_text)
        sub.add_argument("-e", "--experiment_spec", required=True, help="YAML experiment spec")
        sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted spec overrides")

    dataset = actions.add_parser("dataset", help="dataset tools")
    tools = dataset.add_subparsers(dest="tool", required=True, metavar="TOOL")
    synth = tools.add_parser("synth", help="render the built-in synthetic multi-camera dataset")
    synth.add_argument("--out", required=True, help="output folder (Market-1501 layout)")
    synth.add_argument("--ids", type=int, default=60)
    synth.add_argument("--cameras", type=int, default=4)
    synth.add_argument("--images-per-id", type=int, default=12)
    synth.add_argument("--height", type=int, default=128)
    synth.add_argument("--width", type=int, default=64)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=_synth)
    return parser


def one_line(error: BaseException) -> str:
    """The user-facing line of an error, also when a data-loader worker wrapped it."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    last = lines[-1]
    # Worker exceptions arrive as "Caught X in DataLoader worker ... Original Traceback ...".
    return (
        last.split(": ", 1)[1]
        if len(lines) > 1 and last.startswith("reidkit.errors.")
        else lines[0]
    )


def _log_to_stderr() -> None:
    """reidkit's own progress lines on stderr; Lightning keeps its own handler (no duplicates)."""
    logger = logging.getLogger("reidkit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    _log_to_stderr()
    args = build_parser().parse_args(argv)
    try:
        if args.action in SPEC_ACTIONS:
            spec = load_spec(args.experiment_spec, args.overrides)
            SPEC_ACTIONS[args.action][1](spec)
        else:
            args.run(args)
    except ReidkitError as error:
        print(f"reidkit {args.action}: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(
            f"reidkit {args.action}: interrupted; rerun the same command to resume", file=sys.stderr
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

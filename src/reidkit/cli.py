"""Command line: ``reidkit <action> -e spec.yaml [section.key=value ...]``.

The CLI only parses arguments, loads the spec and calls one action's Python function (in
:mod:`reidkit.actions`, imported only when that action runs, so ``--version``, ``validate`` and
``schema`` never load torch); every
user-fixable problem arrives as a :class:`ReidkitError` and leaves as one line on stderr with
exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from reidkit import __version__
from reidkit.config.loading import load_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import ReidkitError, SpecError, first_line
from reidkit.interrupts import RunInterrupted, stop_on_signals
from reidkit.oserrors import describe_os_error
from reidkit.redaction import RedactingFilter

if TYPE_CHECKING:
    from reidkit.actions.automl import AutomlResult

EXIT_USER_ERROR = 2


def _train(spec: ExperimentSpec, args: argparse.Namespace) -> None:
    from reidkit.actions.fit import TrainResult
    from reidkit.actions.train import train

    result = train(spec, args.automl_policy)
    if not isinstance(result, TrainResult):
        _print_automl(result)
        return
    kpi = ", ".join(f"{k} {v:g}" for k, v in result.kpi.items()) or "no validation run"
    print(f"trained {result.epochs} epochs -> {result.checkpoint} ({kpi})")


def _automl(spec: ExperimentSpec, args: argparse.Namespace) -> None:
    from reidkit.actions.automl import automl

    _print_automl(automl(spec))


def _print_automl(result: AutomlResult) -> None:
    print(
        f"{result.trials} trials in {result.results_dir}; best trial {result.best_trial}: "
        f"{result.best_value:.2f} with {result.best_params} -> {result.best_spec}"
    )


def _evaluate(spec: ExperimentSpec, args: argparse.Namespace) -> None:
    from reidkit.actions.evaluate import evaluate

    result = evaluate(spec)
    print(f"metrics, plots and status written to {result.results_dir}")


def _inference(spec: ExperimentSpec, args: argparse.Namespace) -> None:
    from reidkit.actions.infer import infer

    result = infer(spec)
    print(f"embedded {result.num_images} images -> {result.output_file}, {result.matches_file}")


def _export(spec: ExperimentSpec, args: argparse.Namespace) -> None:
    from reidkit.actions.export import export

    result = export(spec)  # it logs its own check (largest difference, smallest cosine)
    print(f"ONNX model: {result.onnx_file}")


def _adapt(spec: ExperimentSpec, args: argparse.Namespace) -> None:
    from reidkit.actions.adapt import adapt

    adapt(spec)  # it prints each round and the round it kept


def _serve(spec: ExperimentSpec, args: argparse.Namespace) -> None:
    from reidkit.actions import serve

    token_options = {"--name": args.name, "--scopes": args.scopes, "--list": args.list,
                     "--revoke": args.revoke}  # fmt: skip
    given = [option for option, value in token_options.items() if value]
    if args.verb is None:
        if given:
            raise SpecError(f"{given[0]} belongs to 'reidkit serve token'")
        serve.serve(spec)
        return
    if args.list or args.revoke:
        if len(given) != 1:
            raise SpecError("reidkit serve token takes one of --list, --revoke NAME, --name")
        if args.revoke:
            path = serve.token_revoke(spec, args.revoke)
            print(f"token '{args.revoke}' revoked in {path}", file=sys.stderr)
            return
        tokens, path = serve.token_list(spec)
        print(f"{len(tokens)} tokens in {path}", file=sys.stderr)
        for token in tokens:
            print(f"{token.name}\t{','.join(token.scopes)}\t{token.created or '-'}")
        return
    if not args.name:
        raise SpecError("reidkit serve token needs --name (who holds it; shown in the audit log)")
    token, path = serve.new_token(spec, args.name, (args.scopes or "search").split(","))
    print(f"token '{args.name}' added to {path}; it is shown only now:", file=sys.stderr)
    print(token)


def _associate(spec: ExperimentSpec, args: argparse.Namespace) -> None:
    from reidkit.actions.associate import associate

    result = associate(spec)
    print(f"global ids, MOT files and timeline written to {result.results_dir}")


# Action name -> (help, function of the resolved spec). New actions register here.
SPEC_ACTIONS: dict[str, tuple[str, Callable[[ExperimentSpec, argparse.Namespace], None]]] = {
    "train": ("train a model (resumes from the latest checkpoint in results_dir)", _train),
    "automl": ("tune the train action's hyper-parameters with optuna (resumable)", _automl),
    "evaluate": ("CMC / mAP / mINP of a checkpoint or .onnx model, with plots", _evaluate),
    "inference": ("embeddings and top matches for every query and gallery image", _inference),
    "export": ("write an ONNX model and verify it against PyTorch", _export),
    "serve": ("search service and operator page; 'serve token' makes, lists, revokes", _serve),
    "associate": ("per-camera tracks in, one global identity per person out", _associate),
    "adapt": ("fit a trained model to a site's unlabelled crops (pseudo-labels)", _adapt),
}


def _gallery(spec: ExperimentSpec, args: argparse.Namespace) -> None:
    from reidkit.actions import gallery

    if args.verb == "add":
        added = gallery.gallery_add(spec)
        print(f"added {added.added} crops ({added.already_stored} already stored)")
        print(gallery.stats_line(added.stats))
    elif args.verb == "search":
        result = gallery.gallery_search(spec)
        print(f"hits written to {result.output_file}")
    elif args.verb == "forget":
        if args.yes and not args.everything:
            raise SpecError("--yes confirms --all only")
        if args.everything and not args.yes:
            raise SpecError("--all erases every crop of the gallery; add --yes to confirm")
        gallery.gallery_forget(spec, everything=args.everything)
    elif args.verb == "rebuild":
        gallery.gallery_rebuild(spec)
    else:
        gallery.gallery_stats(spec)


GALLERY_VERBS = {
    "add": "embed crops (a folder of Market-style names or a CSV manifest) into the gallery",
    "search": "find query crops in the gallery, filtered by camera and time",
    "forget": "remove tracks, crops or everything older than the retention, from disk",
    "stats": "size, cameras, time span, index and model of the gallery",
    "rebuild": "re-embed the gallery's crops with a new model (gallery.checkpoint), then switch",
}


def _schema(args: argparse.Namespace) -> None:
    from reidkit.actions.schema import schema

    written = schema(args.out)
    print(f"wrote {len(written)} files under {args.out}")


def _validate(args: argparse.Namespace) -> None:
    from reidkit.actions.validate import validate

    validate(args.experiment_spec, args.spec_action)
    print(f"{args.experiment_spec}: valid for {args.spec_action}")


def _synth(args: argparse.Namespace) -> None:
    from reidkit.actions.dataset import synth

    summary = synth(
        args.out, ids=args.ids, cameras=args.cameras, images_per_id=args.images_per_id,
        height=args.height, width=args.width, seed=args.seed, site=args.site,
        tracks=args.tracks, hours=args.hours, dim=args.dim,
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
        if name == "train":
            sub.add_argument(
                "--automl-policy", choices=["auto", "off"], default=None,
                help="'auto': AutoML when automl.automl_enabled (default: the spec's policy)",
            )  # fmt: skip
        if name == "serve":
            sub.add_argument("--name", help="token: who holds it (shown in the audit log)")
            sub.add_argument("--scopes", help="token: comma-separated search,write,admin")
            sub.add_argument("--list", action="store_true", help="token: names, scopes, created")
            sub.add_argument("--revoke", metavar="NAME", help="token: remove the named token")

    gallery = actions.add_parser(
        "gallery", help="a site's crops: add, search, forget, stats, rebuild"
    )
    verbs = gallery.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, help_text in GALLERY_VERBS.items():
        sub = verbs.add_parser(verb, help=help_text)
        sub.add_argument("-e", "--experiment_spec", required=True, help="YAML experiment spec")
        sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted spec overrides")
        if verb == "forget":
            sub.add_argument(
                "--all", dest="everything", action="store_true",
                help="erase every crop (an explicit request; needs --yes)",
            )  # fmt: skip
            sub.add_argument("--yes", action="store_true", help="confirm --all")
    gallery.set_defaults(spec_run=_gallery)

    schema = actions.add_parser("schema", help="write JSON schemas and spec templates")
    schema.add_argument("--out", required=True, help="folder for schemas/ and references/")
    schema.set_defaults(run=_schema)
    validate = actions.add_parser("validate", help="check a spec against an action's schema")
    validate.add_argument("-e", "--experiment_spec", required=True, help="YAML experiment spec")
    validate.add_argument(
        "spec_action",
        nargs="?",
        default="train",
        choices=[
            "train",
            "evaluate",
            "inference",
            "export",
            "gallery",
            "serve",
            "associate",
            "adapt",
        ],
    )
    validate.set_defaults(run=_validate)

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
    synth.add_argument("--site", action="store_true", help="a multi-camera site of tracks instead")
    synth.add_argument("--tracks", type=int, default=10_000, help="--site: tracks in all")
    synth.add_argument("--hours", type=float, default=24.0, help="--site: hours they span")
    synth.add_argument("--dim", type=int, default=128, help="--site: embedding width")
    synth.set_defaults(run=_synth)
    return parser


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is when a line is logged, not as it was
    when the handler was made: ``main`` may run many times in one process (tests, embedding
    programs), each with its own redirected stderr, and a stream kept from the first run may
    be closed by then."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        """``StreamHandler.__init__`` sets a stream; the current one is always used."""


def _log_to_stderr() -> None:
    """reidkit's own progress lines on stderr; Lightning keeps its own handler (no duplicates).

    Every line passes a filter that masks URL credentials (a library may log a URL); reidkit's
    own lines never hold a secret (see :mod:`reidkit.redaction`).
    """
    logger = logging.getLogger("reidkit")
    redactor = RedactingFilter()
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    for handler in logger.handlers:
        handler.addFilter(redactor)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser``'s reading of ``argv``, with ``KEY=VALUE`` overrides allowed after options
    too (``reidkit serve token -e spec --name bob results_dir=out``): argparse stops a ``*``
    positional at the first option and calls what follows unrecognised."""
    args, rest = parser.parse_known_args(argv)
    later = [item for item in rest if "=" in item and not item.startswith("-")]
    if len(later) < len(rest) or (later and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if later:
        args.overrides = [*args.overrides, *later]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one action; exit 0 on success, 2 on a user error, 128 + signal when interrupted."""
    _log_to_stderr()
    args = _parse(build_parser(), argv)

    def say(line: str) -> None:
        print(f"reidkit {args.action}: {line}", file=sys.stderr)

    with stop_on_signals():
        try:
            if args.action in SPEC_ACTIONS or hasattr(args, "spec_run"):
                if args.action == "serve":  # 'reidkit serve token -e ...': a verb before overrides
                    is_token = args.overrides[:1] == ["token"]
                    args.verb = "token" if is_token else None
                    args.overrides = args.overrides[1:] if is_token else args.overrides
                spec = load_spec(args.experiment_spec, args.overrides)
                run = getattr(args, "spec_run", None) or SPEC_ACTIONS[args.action][1]
                run(spec, args)
            else:
                args.run(args)
        except ReidkitError as error:
            say(f"error: {first_line(error)}")
            return EXIT_USER_ERROR
        except OSError as error:
            described = describe_os_error(error)
            if described is None:
                raise
            say(f"error: {described}")
            return EXIT_USER_ERROR
        except RunInterrupted as stop:
            say(str(stop))
            return stop.exit_code
        except KeyboardInterrupt:  # a Ctrl-C that landed before the handler was installed
            say("interrupted; rerun the same command to resume")
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

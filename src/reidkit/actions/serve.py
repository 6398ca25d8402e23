"""``reidkit serve``: the search service and operator page, and its access tokens.

The ``serve:`` section becomes :class:`~reidkit.serve.settings.ServeSettings`; the model and
gallery are opened before the server binds, so a wrong path or a gallery filled by another
model stops with one line instead of a failed worker. ``status.json`` says ``RUNNING`` while
the service is up and ``SUCCESS`` after a clean stop (Ctrl-C or SIGTERM). Creating a token
loads no torch (the heavy imports wait for :func:`serve`); neither do listing tokens (names,
scopes, creation times: the file holds no secret to show) and revoking one by name.
"""

from __future__ import annotations

from pathlib import Path

from reidkit.config.spec import ExperimentSpec
from reidkit.errors import SpecError
from reidkit.serve.settings import ServeSettings
from reidkit.serve.tokens import TokenInfo, create_token, list_tokens, revoke_token

TOKEN_FILE = "tokens.json"
#: The audit log of a server whose gallery is read-only, in the serve results folder.
READ_ONLY_AUDIT = "audit.jsonl"


def token_file(spec: ExperimentSpec) -> Path:
    """``serve.token_file``, else ``tokens.json`` in the serve results folder."""
    return Path(spec.serve.token_file or spec.action_dir("serve") / TOKEN_FILE)


def serve_settings(spec: ExperimentSpec) -> ServeSettings:
    """The ``serve:`` section as the server's plain settings (model resolved, limits in bytes)."""
    from reidkit.actions.models import resolve_checkpoint
    from reidkit.data.preprocessing import spec_settings

    section = spec.serve
    # One spec can drive both 'reidkit gallery add' and 'reidkit serve'.
    model_key = "serve.model" if section.model else "gallery.checkpoint"
    model_path = section.model or spec.gallery.checkpoint
    gallery_uri = section.gallery_uri or spec.gallery.uri
    if not model_path:
        raise SpecError(
            "serve.model is not set; set it to an exported .onnx file or an export run's folder "
            "(e.g. <results_dir>/export)"
        )
    if not gallery_uri:
        raise SpecError(
            "serve.gallery_uri (or gallery.uri) is not set; set it to a gallery folder or a "
            "Milvus URI"
        )
    model = resolve_checkpoint(model_path, model_key)
    if model.suffix.lower() != ".onnx":
        raise SpecError(
            f"{model_key} '{model}' is a checkpoint; export it with 'reidkit export' and serve "
            "the .onnx file (the service runs on onnxruntime)"
        )
    return ServeSettings(
        model=model,
        gallery=gallery_uri,
        tokens=token_file(spec),
        host=section.host,
        port=section.port,
        workers=section.workers,
        max_request_bytes=int(section.max_request_mb * 1024 * 1024),
        max_image_pixels=section.max_image_pixels,
        max_images=section.max_images,
        max_k=section.max_k,
        max_batch=section.max_batch,
        batch_wait_ms=section.batch_wait_ms,
        threads=section.threads,
        match_threshold=section.match_threshold,
        **{
            name: tuple(value)
            for name, (_, value) in spec_settings(spec.model, spec.dataset).items()
            if name in ("pixel_mean", "pixel_std")  # the ONNX graph fixes the input size
        },
        cors_origins=tuple(section.cors_origins),
        crop_root=crop_root(spec),
        audit_file=spec.action_dir("serve") / READ_ONLY_AUDIT,
        association_calibration=association_calibration(spec),
    )


def crop_root(spec: ExperimentSpec) -> str | None:
    """The folder ``gallery add`` read the crops from (``gallery.crops``, or the manifest's
    folder, against which its relative paths resolve), absolute; None if the spec names none."""
    gallery = spec.gallery
    root = gallery.crops or (str(Path(gallery.manifest).parent) if gallery.manifest else None)
    return None if root is None else str(Path(root).resolve())


def association_calibration(spec: ExperimentSpec) -> str | None:
    """``serve.association_calibration``, else the associate run's ``calibration.json`` if one
    is there (live association is off without one)."""
    if spec.serve.association_calibration:
        return spec.serve.association_calibration
    found = spec.action_dir("associate") / "calibration.json"
    return str(found) if found.is_file() else None


def serve(spec: ExperimentSpec) -> None:
    """Serve the API and the operator page until interrupted."""
    from reidkit.actions.lifecycle import run_action
    from reidkit.actions.run_record import ServeOutcome
    from reidkit.serve.runner import run_server

    with run_action(spec, "serve") as run:
        settings = serve_settings(spec)
        url = f"http://{settings.host}:{settings.port}"
        run.update(f"serving {settings.gallery} at {url}", ServeOutcome(url=url))
        run_server(settings, log_level=spec.serve.log_level)
        run.succeed(f"stopped serving {settings.gallery}")


def new_token(spec: ExperimentSpec, name: str, scopes: list[str]) -> tuple[str, Path]:
    """Create a token in the spec's token file; return it (shown once) and the file."""
    path = token_file(spec)
    return create_token(path, name, scopes), path


def token_list(spec: ExperimentSpec) -> tuple[list[TokenInfo], Path]:
    """The spec's token file's tokens (never a secret) and the file."""
    path = token_file(spec)
    return list_tokens(path), path


def token_revoke(spec: ExperimentSpec, name: str) -> Path:
    """Remove the token named ``name`` from the spec's token file (rewritten atomically); a
    running server refuses it from its next request on. Returns the file."""
    path = token_file(spec)
    revoke_token(path, name)
    return path

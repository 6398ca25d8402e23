"""One image decoder: the same bytes give the same pixels, or the same refusal, at every door.

Every case is generated here and fed, as a file or as an upload, to each entry point a user
reaches: the training dataset, the up-front image check, the evaluation loader (which inference
and export use too), the gallery's ingest (``gallery add`` checks then embeds; ``gallery
search`` embeds its queries the same way), and the service over real HTTP. An accepted image
must come out as the same tensor everywhere and equal an independent reference (numpy, or a
hand-encoded file whose pixels are known); a refused one gets the same one-line reason
everywhere, only the label naming the image differs.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.cli import main
from reidkit.config.loading import load_spec
from reidkit.data.dataset import ImageDataset, verify_images
from reidkit.data.images import MAX_IMAGE_PIXELS
from reidkit.data.market import ImageRecord
from reidkit.data.preprocessing import training_preprocessing
from reidkit.engine.datamodule import eval_loader
from reidkit.errors import DatasetError
from reidkit.gallery.ingest import check_readable, embed_batches, meta_from_name
from reidkit.gallery.store import GalleryError
from tests.conftest import empty_spec
from tests.export.conftest import make_checkpoint
from tests.serve.conftest import Server, Tokens

HEIGHT, WIDTH = 64, 32  # the eval size, so resizing is the identity and pixels compare 1:1
SPEC = load_spec(
    None, [f"model.input_height={HEIGHT}", f"model.input_width={WIDTH}", "dataset.num_workers=0"]
)
CARD = {
    "backbone": "resnet_18",
    "input_height": HEIGHT,
    "input_width": WIDTH,
    "embedding_dim": 64,
    "pixel_mean": list(SPEC.dataset.pixel_mean),
    "pixel_std": list(SPEC.dataset.pixel_std),
}
RAMP = (np.arange(HEIGHT * WIDTH, dtype=np.int64).reshape(HEIGHT, WIDTH) * 32).astype(np.uint16)
BLOCKS = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
BLOCKS[: HEIGHT // 2], BLOCKS[HEIGHT // 2 :] = (200, 30, 30), (30, 30, 200)  # red over blue


@dataclass(frozen=True)
class Case:
    """Bytes to decode, and either the RGB they must give or the reason they are refused."""

    name: str
    data: bytes
    rgb: np.ndarray | None = None  # the independent reference
    tolerance: int = 0  # in 8-bit levels, for references that round differently
    refusal: str | None = None  # a regular expression for the reason


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour): grey or RGB."""
    height, width = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def _png_header_only(width: int, height: int) -> bytes:
    """A bomb's header: a 1-bit PNG claiming ``width x height`` pixels in a hundred bytes."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    )


def _pillow_rgb(data: bytes) -> np.ndarray:
    """What Pillow itself gives for an opaque 8-bit file: the reference for lossy formats."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _tiff(pixels: np.ndarray) -> bytes:
    return _encode(Image.fromarray(pixels), "TIFF")


def _grey3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


def _cases() -> list[Case]:
    high_byte = _grey3((RAMP >> 8).astype(np.uint8))
    palette = np.array([[0, 0, 0], [250, 10, 10], [10, 250, 10], [10, 10, 250]], np.uint8)
    indices = (np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) // 7 % 4).astype(np.uint8)
    paletted = Image.fromarray(indices, "P")
    paletted.putpalette(palette.reshape(-1).tolist())
    see_through = palette[indices].copy()
    see_through[indices == 2] = 0  # index 2 is the transparent colour: black
    alpha = (np.arange(WIDTH, dtype=np.int64) * 8)[None, :].repeat(HEIGHT, 0)  # 0..248
    rgba = np.dstack([BLOCKS, alpha.astype(np.uint8)])
    composited = np.rint(BLOCKS * (alpha[..., None] / 255)).astype(np.uint8)
    grey = BLOCKS[..., 0]
    la = np.dstack([grey, alpha.astype(np.uint8)])
    bits = np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) % 3 == 0
    cmyk = _encode(Image.fromarray(BLOCKS).convert("CMYK"), "JPEG", quality=95)
    sideways = Image.fromarray(BLOCKS).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as a phone held upright writes
    rotated = _encode(sideways, "JPEG", quality=95, exif=exif.tobytes())
    solid = _encode(Image.fromarray(BLOCKS), "JPEG", quality=95)
    noisy = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    noisy_png, noisy_jpeg = (_encode(Image.fromarray(noisy), f) for f in ("PNG", "JPEG"))
    wide_ints = (RAMP.astype(np.int32) * 1000).astype(np.int32)
    limit = (
        f"the limit is {MAX_IMAGE_PIXELS} \\(a person crop is far smaller: crop or downscale it\\)"
    )
    damaged = r"is damaged or truncated \(image file is truncated\)"
    floats = _encode(Image.fromarray(RAMP.astype(np.float32)), "TIFF")
    resave = "save it as an 8-bit or 16-bit image"
    formats = r"is not a readable image \(use BMP, GIF, JPEG, PNG, TIFF or WEBP\)"
    la_png = _encode(Image.fromarray(la, "LA"), "PNG")
    see_through_png = _encode(paletted, "PNG", transparency=2)
    return [
        Case("16-bit grey gradient PNG", _encode(Image.fromarray(RAMP), "PNG"), high_byte),
        Case("16-bit colour gradient PNG", _png16(np.dstack([RAMP] * 3)), high_byte),
        Case("32-bit integer TIFF in 0-65535", _tiff(RAMP.astype(np.int32)), high_byte),
        Case("RGB JPEG", solid, _pillow_rgb(solid)),
        Case("CMYK JPEG", cmyk, _pillow_rgb(cmyk)),
        Case("YCbCr TIFF", _encode(Image.fromarray(BLOCKS).convert("YCbCr"), "TIFF"), BLOCKS, 2),
        Case("palette PNG", _encode(paletted, "PNG"), palette[indices]),
        Case("palette PNG with a transparent colour", see_through_png, see_through),
        Case("RGBA PNG", _encode(Image.fromarray(rgba, "RGBA"), "PNG"), composited, 1),
        Case("LA PNG", la_png, _grey3(np.rint(grey * alpha / 255)), 1),
        Case("1-bit PNG", _encode(Image.fromarray(bits), "PNG"), _grey3(bits * 255)),
        Case("EXIF-rotated JPEG", rotated, _pillow_rgb(solid), 6),
        Case("float TIFF", floats, refusal=rf"has floating-point pixels \(mode F\); {resave}"),
        Case(
            "32-bit integer TIFF beyond 16 bits",
            _tiff(wide_ints),
            refusal=f"has I pixels outside 0-65535; {resave}",
        ),
        Case(
            "bomb header over the limit",
            _png_header_only(12_000, 12_000),
            refusal=f"is 12000x12000 = 144000000 pixels; {limit}",
        ),
        Case(
            "bomb header over Pillow's guard",
            _png_header_only(40_000, 40_000),
            refusal=f"is 1600000000 pixels; {limit}",
        ),
        Case("truncated JPEG", noisy_jpeg[: len(noisy_jpeg) // 2], refusal=damaged),
        Case("truncated PNG", noisy_png[: len(noisy_png) // 2], refusal=damaged),
        Case("empty file", b"", refusal="is empty"),
        Case(
            "PPM (not an allowed format)", _encode(Image.fromarray(BLOCKS), "PPM"), refusal=formats
        ),
    ]


CASES = _cases()


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory,
    onnx_model: Path,
    tokens: Tokens,
) -> Iterator[Callable[[bytes], tuple[int, object]]]:
    """``post(bytes)``: the service's answer to one uploaded image, ``(status, embedding or
    detail)``; the server's pixel limit is the decoder's default, as the files have it."""
    folder = tmp_path_factory.mktemp("decoder-service")
    server = Server(
        onnx_model, folder / "gallery", tokens.path, f"serve.max_image_pixels={MAX_IMAGE_PIXELS}"
    )
    with server.client(tokens.admin) as client:

        def post(data: bytes) -> tuple[int, object]:
            response = client.post("/v1/embed", files=[("images", ("crop", data, "image/png"))])
            body = response.json()
            if response.status_code == 200:
                return 200, np.asarray(body["embeddings"][0])
            return response.status_code, body["detail"]

        yield post
    server.kill()


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message
    return message


def _rgb(tensor: torch.Tensor) -> np.ndarray:
    """The 8-bit pixels behind a normalised eval tensor (exact: the resize is the identity)."""
    mean = torch.tensor(CARD["pixel_mean"])[:, None, None]
    std = torch.tensor(CARD["pixel_std"])[:, None, None]
    pixels = ((tensor * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 0).numpy()


def _png(rgb: np.ndarray) -> bytes:
    return _encode(Image.fromarray(rgb), "PNG")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_bytes_same_pixels_or_same_refusal_everywhere(
    case: Case, tmp_path: Path, service: Callable[[bytes], tuple[int, object]]
) -> None:
    path = tmp_path / "0001_c1s1_000001_00.png"
    path.write_bytes(case.data)
    record = ImageRecord(path, 1, 1)
    loader = eval_loader(SPEC, [record], 1, training_preprocessing(SPEC.model, SPEC.dataset))
    transform = loader.dataset.transform
    meta = meta_from_name(path, 0.0)

    def gallery() -> torch.Tensor:
        check_readable([meta])  # what 'gallery add' does first
        vectors, _, _ = next(embed_batches(lambda x: x, CARD, [meta], progress=False))
        return vectors[0]

    entry_points: dict[str, Callable[[], torch.Tensor]] = {
        "training dataset": lambda: ImageDataset([record], transform, [0])[0][0],
        "evaluation loader": lambda: next(iter(loader))[0][0],
        "gallery ingest": gallery,
    }
    status, answer = service(case.data)

    if case.refusal is not None:
        expected_reason = re.compile(case.refusal)
        labels = {
            "training dataset": f"image '{path}' ",
            "evaluation loader": f"image '{path}' ",
            "gallery ingest": f"crop '{path}' ",
        }
        reasons = set()
        for name, run in entry_points.items():
            with pytest.raises((DatasetError, GalleryError)) as refused:
                run()
            message = _one_line(refused.value)
            assert message.startswith(labels[name]), (name, message)
            reasons.add(message.removeprefix(labels[name]))
        with pytest.raises(DatasetError) as up_front:
            verify_images([record])
        assert _one_line(up_front.value).startswith(f"1 images cannot be read: '{path}' ")
        reasons.add(
            str(up_front.value)
            .removeprefix(f"1 images cannot be read: '{path}' ")
            .removesuffix("; remove or replace them")
        )
        assert status == 422, answer
        reasons.add(str(answer).removeprefix("image 1 "))
        assert len(reasons) == 1, reasons
        assert expected_reason.fullmatch(reasons.pop())
        return

    assert case.rgb is not None
    tensors = {name: run() for name, run in entry_points.items()}
    verify_images([record])
    first = next(iter(tensors.values()))
    for name, tensor in tensors.items():
        assert torch.equal(tensor, first), name
    decoded = _rgb(first)
    assert decoded.shape == (HEIGHT, WIDTH, 3)
    difference = np.abs(decoded.astype(int) - case.rgb.astype(int))
    assert difference.max() <= case.tolerance, (case.name, difference.max())
    assert status == 200, answer
    _, reference = service(_png(decoded))  # the same pixels, losslessly: the same embedding
    np.testing.assert_allclose(answer, reference, atol=1e-5)


def test_16_bit_gradient_is_a_gradient_not_white() -> None:
    """The defect itself: Pillow's own conversion clipped 16-bit grey at 255 (all white)."""
    case = CASES[0]
    assert Image.open(io.BytesIO(case.data)).mode == "I;16"
    clipped = np.asarray(Image.open(io.BytesIO(case.data)).convert("RGB"))
    assert (clipped == 255).mean() > 0.99
    assert case.rgb is not None and case.rgb.min() == 0 and case.rgb.max() == 255


def test_exif_rotated_crop_comes_out_upright() -> None:
    """A phone stores the crop sideways with 'rotate to display'; the reference is upright."""
    case = next(c for c in CASES if c.name == "EXIF-rotated JPEG")
    assert Image.open(io.BytesIO(case.data)).size == (HEIGHT, WIDTH)  # stored sideways
    assert case.rgb is not None
    assert case.rgb[: HEIGHT // 2, :, 0].mean() > 150 > case.rgb[HEIGHT // 2 :, :, 0].mean()


def test_refusal_crosses_a_loader_worker_as_one_line(tmp_path: Path) -> None:
    """In a worker process the refusal is re-raised in the main one: still its one line."""
    from reidkit.errors import first_line

    path = tmp_path / "0001_c1s1_000001_00.png"
    path.write_bytes(_png_header_only(12_000, 12_000))
    spec = load_spec(
        None,
        [f"model.input_height={HEIGHT}", f"model.input_width={WIDTH}", "dataset.num_workers=1"],
    )
    with pytest.raises(DatasetError) as refused:
        next(
            iter(
                eval_loader(
                    spec,
                    [ImageRecord(path, 1, 1)],
                    1,
                    training_preprocessing(spec.model, spec.dataset),
                )
            )
        )
    assert first_line(refused.value).startswith(f"image '{path}' is 12000x12000 = ")


def test_bomb_crop_in_gallery_add_and_search_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``gallery add`` and ``gallery search`` with a decompression-bomb crop: exit 2, one line
    naming the crop (a traceback before; the service already refused the same file)."""
    model = make_checkpoint(tmp_path / "model", "model.backbone=resnet_18")
    good, bombs = tmp_path / "good", tmp_path / "bombs"
    good.mkdir()
    bombs.mkdir()
    Image.fromarray(BLOCKS).save(good / "0001_c1s1_000001_00.png")
    bomb = bombs / "0002_c1s1_000001_00.png"
    bomb.write_bytes(_png_header_only(40_000, 40_000))
    common = [
        "-e", str(empty_spec(tmp_path)), f"results_dir={tmp_path / 'results'}",
        "model.backbone=resnet_18", "model.input_height=64", "model.input_width=32",
        "model.feat_dim=64", f"gallery.uri={tmp_path / 'gallery'}",
        f"gallery.checkpoint={model.export.checkpoint}", "gallery.operator=ops",
    ]  # fmt: skip
    assert main(["gallery", "add", *common, f"gallery.crops={good}"]) == 0
    capsys.readouterr()
    for verb, key in (("add", f"gallery.crops={bombs}"), ("search", f"gallery.query=[{bomb}]")):
        assert main(["gallery", verb, *common, key]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"reidkit gallery: error: crop '{bomb}' is 1600000000 pixels; the limit is "
            f"{MAX_IMAGE_PIXELS} (a person crop is far smaller: crop or downscale it)"
        )

"""Pack CUHK03 (detected), resized, into one small tar that can travel with a GPU check.

Run from the repository root (needs ``../shared``)::

    .venv/bin/python benchmarks/pack_cuhk03.py      # -> .gpu_data/cuhk03_128x64.tar.gz (~26 MB)

Every image of ``bounding_box_train``, ``bounding_box_test`` and ``query`` is resized to
``--height`` x ``--width`` (bilinear, with antialiasing, as ``v2.Resize`` does on a PIL image)
and re-encoded as JPEG at ``--quality``; file names and the Market layout are kept, so the
unpacked folder is a reidkit dataset as it stands. Training at the packed size then resizes
nothing. The archive must stay under ``--max-mb`` (the device machine takes at most 64 MiB of
working tree per call, wheels and weights included): the script fails rather than write a
larger one. ``.gpu_data/`` is git-ignored.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("bounding_box_train", "bounding_box_test", "query")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def encode(path: Path, size: tuple[int, int], quality: int) -> bytes:
    """``path`` resized to ``size`` (height, width) as JPEG bytes."""
    height, width = size
    with Image.open(path) as image:
        resized = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def pack(source: Path, target: Path, size: tuple[int, int], quality: int) -> int:
    """Write ``target``, a gzipped tar of the three split folders; returns the image count.

    The JPEGs do not shrink, but gzip takes back the 512-byte tar header and padding of each
    small file (a quarter of a plain tar's size here).
    """
    images = [
        path
        for split in SPLITS
        for path in sorted((source / split).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not images:
        raise SystemExit(f"no images under {source}/{{{','.join(SPLITS)}}}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with ThreadPoolExecutor() as pool, tarfile.open(partial, "w:gz", compresslevel=6) as tar:
        encoded = pool.map(lambda path: encode(path, size, quality), images)
        for path, data in zip(images, encoded, strict=True):
            member = tarfile.TarInfo(f"{path.parent.name}/{path.with_suffix('.jpg').name}")
            member.size = len(data)
            member.mode = 0o644
            tar.addfile(member, io.BytesIO(data))
    partial.replace(target)
    return len(images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=(ROOT / "../shared/data/cuhk03_detected").resolve()
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu_data" / "cuhk03_128x64.tar.gz")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--max-mb", type=float, default=30.0, help="refuse a larger archive")
    args = parser.parse_args()
    count = pack(args.source, args.out, (args.height, args.width), args.quality)
    megabytes = args.out.stat().st_size / 1e6
    print(f"{args.out}: {count} images at {args.height}x{args.width}, {megabytes:.1f} MB")
    if megabytes > args.max_mb:
        args.out.unlink()
        print(f"larger than --max-mb {args.max_mb}: removed; lower --quality", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

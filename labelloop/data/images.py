"""Decoding images the same way everywhere: import checks, thumbnails, model inputs."""

from __future__ import annotations

import contextlib
import hashlib
import io
import multiprocessing
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from labelloop.data import storage

# An image above this many pixels is refused before decoding: a small file can
# claim enormous dimensions (a decompression bomb) and exhaust memory.
MAX_PIXELS = 178_956_970


class ImageProblem(Exception):
    """A file that cannot be used as an image; the message is the reason shown to users."""


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """``workers`` processes for decoding, started by a fork server (safe from a multi-threaded
    process such as the Streamlit server, where plain fork can copy a held lock).

    Python starts each such worker by running the parent's ``__main__`` script again. Under
    ``streamlit run`` that script is the whole app: every worker ran it in "bare mode", spending
    seconds on imports and filling the server log with "missing ScriptRunContext" warnings. The
    workers need only ``core`` modules, so the script's path is hidden while they start (all of
    them, at once) and put back right after.
    """
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None) if getattr(main, "__spec__", None) is None else None
    with pool:
        try:
            if script is not None:
                del main.__file__
            # A worker starts when a task finds none idle: tasks that are still sleeping when the next one
            # arrives start all of them now, while the script is hidden (and the fork server, once per process).
            for started in [pool.submit(time.sleep, 0.2) for _ in range(workers)]:
                started.result()
        finally:
            if script is not None:
                main.__file__ = script
        yield pool


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_bytes(path: str) -> bytes:
    """The bytes of an image file, local or ``s3://``; an :class:`ImageProblem` says why not."""
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise ImageProblem("missing: no such file") from None
    except IsADirectoryError:
        raise ImageProblem("not an image: it is a folder") from None
    except PermissionError:
        raise ImageProblem("unreadable: permission denied") from None
    except OSError as exc:
        if storage.is_remote(path):
            raise ImageProblem(f"unreadable: {storage.explain(exc, path, 'read').args[0]}") from None
        raise ImageProblem(f"unreadable: {exc.strerror or exc}") from None
    if not data:
        raise ImageProblem("zero bytes: the file is empty")
    return data


def decode(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Fully decode ``data``; ``draft_size`` lets JPEGs decode at a reduced scale (still reading every byte)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageProblem(f"too large: {width}x{height} pixels is over the {MAX_PIXELS:,}-pixel limit (possible decompression bomb)")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            return image
    except UnidentifiedImageError:
        raise ImageProblem("not an image: the content is not a readable image format") from None
    except Image.DecompressionBombError as exc:
        raise ImageProblem(f"too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageProblem(decode_failure(exc, len(data))) from None


def decode_failure(exc: BaseException, size: int) -> str:
    """Why a file did not decode, in the user's words rather than the decoder's."""
    text = str(exc)
    if "truncated" in text or isinstance(exc, EOFError):
        # Pillow says "image file is truncated (6 bytes not processed)": what matters is that the data stops early.
        return f"truncated or corrupt: the file ({size:,} bytes) ends before the image does (an interrupted copy or download?); copy it again"
    return f"truncated or corrupt: the image data cannot be decoded ({text[:100]})"


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB view of any image: 16-bit and float scaled, CMYK converted, transparency on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 255 if high > low else np.zeros_like(pixels)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def load_square(path: str, size: int, expected_hash: str | None = None) -> np.ndarray:
    """The image at ``path`` as uint8 RGB ``size`` x ``size``: shorter side resized to ``size``, centre cropped.

    Raises :class:`ImageProblem` if the file cannot be used, or if its content
    no longer matches ``expected_hash`` (it changed since it was imported).
    """
    data = read_bytes(path)
    if expected_hash and content_hash(data) != expected_hash:
        raise ImageProblem("changed since import: the file's content differs from the imported one; re-import it")
    image = to_rgb(decode(data, draft_size=size))
    width, height = image.size
    scale = size / min(width, height)
    resized = (max(size, round(width * scale)), max(size, round(height * scale)))
    if resized != image.size:
        image = image.resize(resized, Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)

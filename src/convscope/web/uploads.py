"""Uploaded images: bounded in bytes while they stream in, in pixels before they are decoded, and in type.

A body larger than the limit is refused with 413 as soon as its declared length or its running count passes the
limit, so the server never holds more than the limit. The header of an image is read before its pixels: an image
declaring more pixels than allowed (a decompression bomb: a few kilobytes of PNG that decode to gigabytes) is
refused before decoding. Only PNG, JPEG, GIF, BMP and WebP decoders are tried. Every refusal is an `UploadError`
with one line for the page; nothing an upload contains can make the server answer 500.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ..errors import ConvscopeError

__all__ = ["UploadError", "UploadLimits", "read_upload", "decode_image"]


class UploadError(ConvscopeError):
    """An upload the live page cannot use: too large (status 413), not an image, corrupt, too many pixels (400)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """max_bytes: body size; max_pixels: width x height before decoding; max_side: images are kept at most this
    large (the model sees a few hundred pixels at most); formats: the PIL decoders tried."""

    max_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    max_side: int = 1024
    formats: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


def _too_large(limit: int) -> UploadError:
    return UploadError(f"the upload is larger than {limit / 2**20:.0f} MB; send a smaller image", status=413)


async def _counted(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise _too_large(limit)
        yield chunk


async def read_upload(request, limits: UploadLimits) -> bytes:
    """The image bytes of a request: the raw body, or the first file of a multipart form; at most `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise UploadError("the request's Content-Length is not a number")
        if int(declared) > limits.max_bytes:
            raise _too_large(limits.max_bytes)
    stream = _counted(request.stream(), limits.max_bytes)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        try:
            form = await MultiPartParser(request.headers, stream, max_files=1, max_fields=8).parse()
        except MultiPartException as error:
            raise UploadError(f"the form could not be read ({error})") from None
        try:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not files:
                raise UploadError("the form holds no file: send the image as its 'file' field")
            data = await files[0].read()
        finally:
            await form.close()
    else:
        body = bytearray()
        async for chunk in stream:
            body += chunk
        data = bytes(body)
    if not data:
        raise UploadError("the upload is empty: choose an image file")
    return data


def decode_image(data: bytes, limits: UploadLimits) -> Image.Image:
    """Bytes -> an RGB or grayscale PIL image at most `max_side` pixels on its longer side, or `UploadError`."""
    kinds = ", ".join("WebP" if f == "WEBP" else f for f in limits.formats)
    try:
        image = Image.open(io.BytesIO(data), formats=list(limits.formats))
    except Image.DecompressionBombError:
        raise UploadError(f"the image declares too many pixels (more than {limits.max_pixels:,}); refused") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UploadError(f"not an image of a supported type ({kinds})") from None
    width, height = image.size
    if width * height > limits.max_pixels or width < 1 or height < 1:
        raise UploadError(f"the image is {width}x{height} = {width * height:,} pixels; the limit is "
                          f"{limits.max_pixels:,}")
    try:
        image.load()
        image = image.convert("L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB")
    except Exception as error:  # noqa: BLE001 - any decoder failure on untrusted bytes is the file's fault
        raise UploadError(f"the image could not be decoded ({type(error).__name__}: {error}); the file is "
                          "damaged or truncated") from None
    if max(image.size) > limits.max_side:
        image.thumbnail((limits.max_side, limits.max_side), Image.LANCZOS)
    return image

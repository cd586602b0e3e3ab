"""The image battery: everything a student can upload either loads as RGB or gets a clear message."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.images import ImageError, fit_to_size, load_image, to_tensor
from explorer.samples import gallery


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size; the pixel data is a tiny stub."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding():
    data = png_header_only(10000, 8000)  # 80 MP claimed in a few bytes
    with pytest.raises(ImageError) as err:
        load_image(data)
    msg = str(err.value)
    assert "10000×8000" in msg and "80 MP" in msg and "limit is 50 MP" in msg and "EXPLORER_MAX_PIXELS" in msg
    # beyond PIL's own bomb threshold the message keeps the same form
    with pytest.raises(ImageError, match="The image is 1200 MP; the limit is 50 MP"):
        load_image(png_header_only(40000, 30000))


def test_pixel_limit_can_be_lowered_by_environment(monkeypatch):
    monkeypatch.setenv("EXPLORER_MAX_PIXELS", "100")
    with pytest.raises(ImageError, match="limit is 0 MP"):
        load_image(encode(Image.new("RGB", (20, 20))))


def test_truncated_file():
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageError, match="truncated or damaged"):
        load_image(data[: len(data) // 2])


def test_16_bit_grey_is_scaled_not_clipped():
    arr = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    img = load_image(encode(Image.fromarray(arr)))
    out = np.asarray(img)
    assert img.mode == "RGB" and out.shape == (2, 2, 3)
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255 and out[1, 0, 0] == 128 and out[1, 1, 0] == 4


def test_cmyk_jpeg():
    img = load_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))  # pure red in CMYK
    r, g, b = np.asarray(img)[4, 4]
    assert img.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_palette_with_transparency_composited_on_white():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    p.putpixel((0, 0), 1)
    p.info["transparency"] = 0  # colour 0 (red) is transparent
    out = np.asarray(load_image(encode(p)))
    assert tuple(out[1, 1]) == (255, 255, 255)  # transparent -> white
    assert tuple(out[0, 0]) == (0, 0, 255)


def test_la_half_transparent_black_becomes_grey():
    la = Image.new("LA", (3, 3), (0, 128))
    out = np.asarray(load_image(encode(la)))
    assert abs(int(out[0, 0, 0]) - 127) <= 1


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = load_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    r, g, b = np.asarray(load_image(buf.getvalue()))[5, 5]
    assert r > 200 and g < 50 and b < 50


def test_one_pixel_image_feeds_the_model_size():
    img = load_image(encode(Image.new("RGB", (1, 1), (10, 20, 30))))
    assert img.size == (1, 1)
    x = to_tensor(img, (32, 32))
    assert x.shape == (1, 3, 32, 32)


def test_extreme_aspect_ratio_is_padded_not_cropped_away():
    strip = Image.new("RGB", (10000, 20), (200, 0, 0))
    img = load_image(encode(strip))
    assert img.size == (4096, 8)  # long side capped at 4096, aspect kept
    fitted = fit_to_size(img, (224, 224))
    arr = np.asarray(fitted)
    assert fitted.size == (224, 224)
    # the whole strip survives as a thin band in the middle, padding elsewhere
    assert arr[112, :, 0].min() > 150  # band runs edge to edge
    assert fit_to_size(Image.new("RGB", (300, 200)), (224, 224)).size == (224, 224)


def test_random_bytes_and_empty_bytes():
    with pytest.raises(ImageError, match="not an image"):
        load_image(np.random.default_rng(1).bytes(4096))
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_unsupported_format_named():
    with pytest.raises(ImageError, match="ICO images are not supported"):
        load_image(encode(Image.new("RGB", (16, 16)), "ICO"))


def test_huge_but_allowed_image_is_downscaled():
    img = load_image(encode(Image.new("RGB", (6000, 100))))
    assert max(img.size) == 4096


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_supported_formats_load(fmt):
    img = load_image(encode(Image.new("RGB", (12, 9), (0, 128, 255)), fmt))
    assert img.mode == "RGB" and img.size == (12, 9)


def test_to_tensor_normalises():
    img = Image.new("RGB", (4, 4), (255, 0, 128))
    x = to_tensor(img, (4, 4), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]), atol=1e-6)


def test_gallery_has_real_photos_and_shapes_with_masks():
    samples = gallery()
    assert samples["astronaut"].image.size == (512, 512) and samples["astronaut"].image.mode == "RGB"
    assert samples["chelsea"].image.size == (451, 300) and samples["chelsea"].mask is None
    shapes = [s for name, s in samples.items() if name.startswith("shapes: ")]
    assert {s.label for s in shapes} == {"circle", "square", "triangle", "cross", "star"}
    for s in shapes:
        assert s.mask.shape == (64, 64) and s.mask.dtype == bool and 0 < s.mask.mean() < 1  # the bundled model's size

#!/usr/bin/env python3
"""Generate the image-preprocessing parity fixtures for the `dinov2-image` crate.

Reference: transformers 5.17.0 `BitImageProcessorPil` (the PIL backend of the DINOv2 image processor)
with Pillow 13.0.0, exactly the versions in requirements-preprocess.txt (asserted below).

Writes (default output folder <repo>/tests/fixtures/preprocess/, replaced as a whole):

    images/<name>.<ext>       small test images of many kinds (JPEG, PNG, GIF, WebP, BMP, TIFF)
    broken/<name>             broken files: truncated, empty, not an image, decompression bomb
    configs/<name>.json       preprocessor_config.json variants
    expected/<case>.safetensors
        rgb           u8  [H, W, 3]  Pillow's decode + `convert("RGB")` (only for small images)
        resized       u8  [h, w, 3]  the intermediate image after Pillow's resize (if small enough)
        pixel_values  f32 [3, h, w]  what BitImageProcessorPil returns
    cases.json                the list of cases (image, config, expected sizes, CRC-32 of every
                              uint8 array, also of those too large to store), the broken files with
                              what Pillow does with them, and a table of resize output sizes
    README.md

Sources of pixels: crops and rescales of the sample photos in <repo>/assets/images/ (public domain /
CC0, see the LICENSE.md there), themselves written by `--assets` from scikit-image's bundled data.

Usage (from anywhere):
    python make_preprocess.py [--out DIR]    # regenerate the fixtures
    python make_preprocess.py --assets       # (re)write assets/images/ first (needs scikit-image)
or `cargo xtask golden --python ...`, which runs this script after make_golden.py.
Deterministic: no randomness other than numpy generators with fixed seeds.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

PINNED = {"transformers": "5.17.0", "pillow": "13.0.0", "numpy": "2.4.6", "safetensors": "0.8.0"}

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "preprocess"
ASSETS = REPO_ROOT / "assets" / "images"

# Arrays at most this many bytes are stored in full; larger ones only as CRC-32 in cases.json.
MAX_STORED_U8 = 12_000


def check_versions() -> None:
    try:
        import numpy
        import PIL
        import safetensors
        import transformers
    except ImportError as err:
        sys.exit(
            f"make_preprocess.py: {err} (python {sys.executable}). Run it with the python of a virtual"
            " environment holding xtask/golden/requirements-preprocess.txt."
        )
    found = {
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
    }
    problems = [f"{k} {found[k]} is installed, {v} is pinned" for k, v in PINNED.items() if found[k] != v]
    if problems:
        sys.exit(
            "make_preprocess.py: wrong reference environment: "
            + "; ".join(problems)
            + ". Install xtask/golden/requirements-preprocess.txt and run with that python."
        )


check_versions()

import numpy as np  # noqa: E402
from PIL import Image, ImageOps, features  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from transformers import BitImageProcessorPil  # noqa: E402
from transformers.image_transforms import (  # noqa: E402
    convert_to_rgb,
    get_resize_output_image_size,
    get_size_with_aspect_ratio,
)
from transformers.image_utils import ChannelDimension, get_image_size_for_max_height_width  # noqa: E402

for feature in ("webp", "jpg", "zlib", "libtiff"):
    if not features.check(feature):
        sys.exit(f"make_preprocess.py: this Pillow lacks {feature} support")


# --------------------------------------------------------------------------------------------------
# Sample photos (assets/images/).

ASSET_SPECS = [
    # file, skimage loader, licence line for LICENSE.md
    ("astronaut.jpg", "astronaut", "Eileen Collins, NASA Great Images database; public domain"),
    ("astronaut.png", "astronaut", "same picture, lossless"),
    ("coffee.jpg", "coffee", "coffee cup, courtesy of Pikolo Espresso Bar, photo by Rachel Michetti; CC0"),
    ("chelsea.jpg", "chelsea", "Chelsea the cat, photo by Stefan van der Walt; CC0"),
    ("chelsea.png", "chelsea", "same picture, lossless"),
    ("rocket.jpg", "rocket", "launch of DSCOVR on Falcon 9, SpaceX; released into the public domain"),
    ("camera.png", "camera", "cameraman (grayscale), photo by Lav Varshney; CC0"),
]


def write_assets() -> None:
    try:
        import skimage
        import skimage.data
    except ImportError:
        sys.exit("make_preprocess.py --assets needs scikit-image (pip install scikit-image)")
    ASSETS.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Sample images",
        "",
        "Photographs from scikit-image's bundled sample data (`skimage.data`, scikit-image "
        f"{skimage.__version__}), re-encoded by `xtask/golden/make_preprocess.py --assets` with Pillow "
        f"{PINNED['pillow']} (JPEG quality 90, 4:2:0; PNG optimized). Every picture is free of copyright "
        "restrictions as stated by scikit-image (`skimage/data/_fetchers.py`):",
        "",
        "| file | size (w x h) | source and licence |",
        "| --- | --- | --- |",
    ]
    for name, loader, licence in ASSET_SPECS:
        arr = getattr(skimage.data, loader)()
        im = Image.fromarray(arr)
        path = ASSETS / name
        if name.endswith(".jpg"):
            im.save(path, "JPEG", quality=90)
        else:
            im.save(path, "PNG", optimize=True)
        lines.append(f"| `{name}` | {im.width} x {im.height} | `skimage.data.{loader}()`: {licence} |")
    lines += [
        "",
        "They are used as realistic inputs by the preprocessing fixtures (tests/fixtures/preprocess/) and",
        "for trying the command-line program.",
        "",
    ]
    (ASSETS / "LICENSE.md").write_text("\n".join(lines))
    print(f"wrote {ASSETS}")


def asset_rgb(name: str) -> np.ndarray:
    return np.array(Image.open(ASSETS / name).convert("RGB"))


# --------------------------------------------------------------------------------------------------
# Test-image content.


def photo(w: int, h: int, source: str = "chelsea.png", x0: int = 0, y0: int = 0) -> np.ndarray:
    """A w x h RGB uint8 picture: a crop of a sample photo, Lanczos-rescaled first if too small."""
    src = Image.open(ASSETS / source).convert("RGB")
    scale = max(w / (src.width - x0), h / (src.height - y0), 1.0)
    if scale > 1.0:
        src = src.resize((int(np.ceil(src.width * scale)), int(np.ceil(src.height * scale))), Image.LANCZOS)
    arr = np.array(src)[y0 : y0 + h, x0 : x0 + w]
    assert arr.shape == (h, w, 3), arr.shape
    return np.ascontiguousarray(arr)


def gray(w: int, h: int, **kw) -> np.ndarray:
    return np.array(Image.fromarray(photo(w, h, **kw)).convert("L"))


def alpha_pattern(w: int, h: int) -> np.ndarray:
    """Alpha with fully transparent, opaque and partial areas."""
    yy, xx = np.mgrid[0:h, 0:w]
    a = ((xx * 255) // max(w - 1, 1)).astype(np.uint8)
    a[: h // 4] = 0
    a[h // 4 : h // 2, : w // 3] = 255
    return a


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_raw(
    samples: np.ndarray,
    bit_depth: int,
    color_type: int,
    interlace: bool = False,
    plte: bytes | None = None,
    trns: bytes | None = None,
) -> bytes:
    """A PNG written by hand (for kinds Pillow cannot write: 16-bit RGB(A)/LA, 2/4-bit gray, Adam7).

    `samples` is [H, W, C] of integers (C = samples per pixel), big-endian 16-bit when bit_depth 16.
    """
    h, w = samples.shape[:2]
    channels = samples.shape[2]

    def rows(sub: np.ndarray) -> bytes:
        out = bytearray()
        for row in sub:
            out.append(0)  # filter: none
            if bit_depth == 16:
                out += row.astype(">u2").tobytes()
            elif bit_depth == 8:
                out += row.astype(np.uint8).tobytes()
            else:
                vals = row.reshape(-1).astype(np.uint8)
                per = 8 // bit_depth
                padded = np.zeros(((len(vals) + per - 1) // per) * per, np.uint8)
                padded[: len(vals)] = vals
                packed = np.zeros(len(padded) // per, np.uint8)
                for i in range(per):
                    packed |= padded[i::per] << (8 - bit_depth * (i + 1))
                out += packed.tobytes()
        return bytes(out)

    if interlace:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        raw = b""
        for x0, y0, dx, dy in passes:
            sub = samples[y0::dy, x0::dx]
            if sub.shape[0] and sub.shape[1]:
                raw += rows(sub)
    else:
        raw = rows(samples)
    del channels
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 1 if interlace else 0)
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
    if plte is not None:
        out += png_chunk(b"PLTE", plte)
    if trns is not None:
        out += png_chunk(b"tRNS", trns)
    return out + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def build_images() -> dict[str, bytes]:
    """name (with extension) -> file bytes."""
    imgs: dict[str, bytes] = {}
    W, H = 64, 48  # most kinds
    rgb = Image.fromarray(photo(W, H, x0=150, y0=60))
    rgb_odd = Image.fromarray(photo(67, 45, x0=200, y0=100))

    # JPEG
    imgs["jpeg_sub420.jpg"] = encode(rgb, "JPEG", quality=90, subsampling=2)
    imgs["jpeg_sub422.jpg"] = encode(rgb_odd, "JPEG", quality=90, subsampling=1)
    imgs["jpeg_sub444.jpg"] = encode(rgb_odd, "JPEG", quality=95, subsampling=0)
    imgs["jpeg_progressive.jpg"] = encode(rgb_odd, "JPEG", quality=85, progressive=True)
    imgs["jpeg_optimized_q50.jpg"] = encode(rgb, "JPEG", quality=50, optimize=True)
    imgs["jpeg_gray.jpg"] = encode(Image.fromarray(gray(67, 45, x0=90, y0=30)), "JPEG", quality=90)
    imgs["jpeg_gray_progressive.jpg"] = encode(
        Image.fromarray(gray(W, H, x0=20, y0=200)), "JPEG", quality=80, progressive=True
    )
    cmyk = rgb_odd.convert("CMYK")
    imgs["jpeg_cmyk.jpg"] = encode(cmyk, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    imgs["jpeg_exif_rot6.jpg"] = encode(Image.fromarray(photo(50, 30, x0=10, y0=10)), "JPEG", quality=90, exif=exif)
    # Decoded at reduced scale (`draft` cases): large enough for 1/2, 1/4 and 1/8 of the small
    # configs, odd sizes so that the scaled sides round up.
    draft_src = Image.fromarray(photo(301, 283, x0=40, y0=10))
    imgs["jpeg_draft_sub420.jpg"] = encode(draft_src, "JPEG", quality=90, subsampling=2)
    imgs["jpeg_draft_sub444.jpg"] = encode(draft_src, "JPEG", quality=90, subsampling=0)
    imgs["jpeg_draft_progressive.jpg"] = encode(draft_src, "JPEG", quality=85, subsampling=1, progressive=True)
    imgs["jpeg_draft_gray.jpg"] = encode(draft_src.convert("L"), "JPEG", quality=90)
    imgs["jpeg_draft_exif_rot6.jpg"] = encode(
        Image.fromarray(photo(323, 121, x0=30, y0=100)), "JPEG", quality=90, exif=exif
    )
    # Size-rule cases (all JPEG: realistic and small files).
    imgs["jpeg_100x60.jpg"] = encode(Image.fromarray(photo(100, 60, x0=120, y0=80)), "JPEG", quality=85)
    imgs["jpeg_1000x90.jpg"] = encode(Image.fromarray(photo(1000, 90, y0=200)), "JPEG", quality=85)
    imgs["jpeg_90x1000.jpg"] = encode(Image.fromarray(photo(90, 1000, x0=300)), "JPEG", quality=85)
    imgs["jpeg_64x64.jpg"] = encode(Image.fromarray(photo(64, 64, x0=100, y0=20)), "JPEG", quality=85)
    imgs["jpeg_333x517.jpg"] = encode(Image.fromarray(photo(333, 517, source="coffee.jpg")), "JPEG", quality=85)

    # PNG (Pillow writer)
    imgs["png_rgb.png"] = encode(rgb, "PNG")
    rgba = np.dstack([np.array(rgb), alpha_pattern(W, H)])
    imgs["png_rgba.png"] = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    imgs["png_l.png"] = encode(Image.fromarray(gray(W, H, x0=40, y0=40)), "PNG")
    la = Image.merge("LA", (Image.fromarray(gray(W, H, x0=60, y0=10)), Image.fromarray(alpha_pattern(W, H))))
    imgs["png_la.png"] = encode(la, "PNG")
    p = rgb.quantize(colors=200)
    imgs["png_p_trns.png"] = encode(p, "PNG", transparency=bytes([0, 128] + [255] * 20 + [7]))
    imgs["png_p4.png"] = encode(rgb_odd.quantize(colors=16), "PNG")
    g16 = gray(W, H, x0=0, y0=120).astype(np.uint16)
    g16[:, W // 2 :] = g16[:, W // 2 :] * 257 + 3  # right half above 255
    imgs["png_gray16.png"] = encode(Image.fromarray(g16), "PNG")
    imgs["png_1bit.png"] = encode(Image.fromarray(gray(W, H, x0=5, y0=5) > 110), "PNG")
    l_trns = Image.fromarray(gray(W, H, x0=33, y0=77))
    imgs["png_l_trns.png"] = encode(l_trns, "PNG", transparency=100)
    # PNG (hand-written)
    lo = rng(1).integers(0, 256, (H, W, 3))
    rgb16 = np.array(rgb_odd.resize((W, H))).astype(np.int64) * 256 + lo
    imgs["png_rgb16.png"] = png_raw(rgb16, 16, 2)
    rgba16 = np.dstack([rgb16, alpha_pattern(W, H).astype(np.int64) * 257])
    imgs["png_rgba16.png"] = png_raw(rgba16, 16, 6)
    la16 = np.dstack([gray(W, H, x0=7, y0=9).astype(np.int64) * 256 + lo[..., :1].squeeze(-1), lo[..., 1] * 256])
    imgs["png_la16.png"] = png_raw(la16, 16, 4)
    imgs["png_gray2.png"] = png_raw((gray(W, H) >> 6)[..., None], 2, 0)
    imgs["png_gray4.png"] = png_raw((gray(67, 45) >> 4)[..., None], 4, 0)
    imgs["png_interlaced.png"] = png_raw(np.array(rgb_odd), 8, 2, interlace=True)
    g16t = gray(W, H, x0=11, y0=3).astype(np.int64)
    imgs["png_gray16_trns.png"] = png_raw(g16t[..., None] * 3, 16, 0, trns=struct.pack(">H", 300))
    # palette PNG whose pixels index past the end of a short PLTE (Pillow fills a grey ramp)
    idx = (gray(W, H, x0=100, y0=100) >> 5)[..., None]  # 0..7
    imgs["png_p_short_plte.png"] = png_raw(idx, 8, 3, plte=bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9]))

    # GIF
    imgs["gif_palette.gif"] = encode(rgb.quantize(colors=256), "GIF")
    imgs["gif_transparent.gif"] = encode(rgb_odd.quantize(colors=64), "GIF", transparency=3)
    imgs["gif_gray.gif"] = encode(Image.fromarray(gray(W, H, x0=50, y0=150)), "GIF")

    # WebP
    imgs["webp_lossy.webp"] = encode(rgb_odd, "WEBP", quality=80)
    imgs["webp_lossless_rgba.webp"] = encode(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True)
    imgs["webp_lossy_rgba.webp"] = encode(Image.fromarray(rgba, "RGBA"), "WEBP", quality=75)

    # BMP
    imgs["bmp_rgb.bmp"] = encode(rgb_odd, "BMP")
    imgs["bmp_p.bmp"] = encode(rgb.quantize(colors=100), "BMP")
    imgs["bmp_l.bmp"] = encode(Image.fromarray(gray(W, H, x0=70, y0=70)), "BMP")
    imgs["bmp_1bit.bmp"] = encode(Image.fromarray(gray(67, 45) > 90), "BMP")
    imgs["bmp_rgba.bmp"] = encode(Image.fromarray(rgba, "RGBA"), "BMP")

    # TIFF
    imgs["tiff_rgb.tif"] = encode(rgb_odd, "TIFF")
    imgs["tiff_rgb_lzw.tif"] = encode(rgb, "TIFF", compression="tiff_lzw")
    imgs["tiff_rgb_deflate.tif"] = encode(rgb_odd, "TIFF", compression="tiff_adobe_deflate")
    imgs["tiff_rgb_packbits.tif"] = encode(rgb, "TIFF", compression="packbits")
    imgs["tiff_l.tif"] = encode(Image.fromarray(gray(W, H, x0=80, y0=20)), "TIFF")
    imgs["tiff_rgba.tif"] = encode(Image.fromarray(rgba, "RGBA"), "TIFF", compression="tiff_lzw")
    imgs["tiff_cmyk.tif"] = encode(cmyk, "TIFF")
    imgs["tiff_gray16.tif"] = encode(Image.fromarray(g16), "TIFF")
    imgs["tiff_1bit.tif"] = encode(Image.fromarray(gray(67, 45, x0=3) > 100), "TIFF")
    imgs["tiff_1bit_g4.tif"] = encode(Image.fromarray(gray(W, H, x0=9) > 120), "TIFF", compression="group4")
    imgs["tiff_la.tif"] = encode(la, "TIFF")
    imgs["tiff_p.tif"] = encode(rgb_odd.quantize(colors=50), "TIFF")  # in UNSUPPORTED

    # GIF written by hand: frames that do not cover the logical screen.
    pal = bytes([200, 10, 10, 10, 200, 10, 10, 10, 200, 250, 250, 0])  # 4 colours, not a grey ramp
    frame = (gray(20, 10, x0=30, y0=30) >> 6).astype(np.uint8)  # indices 0..3
    imgs["gif_offset_frame.gif"] = gif_raw(40, 30, pal, frame, left=5, top=7)
    imgs["gif_offset_frame_transparent.gif"] = gif_raw(40, 30, pal, frame, left=5, top=7, transparent=2)
    imgs["gif_frame_outside_screen.gif"] = gif_raw(16, 12, pal, frame, left=6, top=4, local=True)

    # EXIF orientations (applied only on request), tiny images.
    for o in range(2, 9):
        ex = Image.Exif()
        ex[0x0112] = o
        imgs[f"png_exif_orientation{o}.png"] = encode(Image.fromarray(photo(10, 6, x0=40 + 7 * o, y0=80)), "PNG", exif=ex)
    ex = Image.Exif()
    ex[0x0112] = 3
    imgs["webp_exif_rot3.webp"] = encode(Image.fromarray(photo(21, 13, x0=5, y0=5)), "WEBP", lossless=True, exif=ex)
    imgs["tiff_orientation8.tif"] = encode(Image.fromarray(photo(11, 7, x0=15, y0=25)), "TIFF", tiffinfo={274: 8})

    # Files Pillow still opens although they end early or carry junk (checked in main()).
    imgs["jpeg_trailing_garbage.jpg"] = imgs["jpeg_sub420.jpg"] + b"garbage" * 10
    png = imgs["png_rgb.png"]
    assert png.endswith(png_chunk(b"IEND", b""))
    imgs["png_no_iend.png"] = png[:-12]
    gif = imgs["gif_palette.gif"]
    assert gif.endswith(b"\x00;")
    imgs["gif_no_trailer.gif"] = gif[:-1]
    imgs["gif_no_trailer_no_terminator.gif"] = gif[:-2]
    return imgs


def gif_raw(
    w: int, h: int, palette: bytes, frame: np.ndarray, left: int, top: int,
    transparent: int | None = None, local: bool = False,
) -> bytes:
    """A one-frame GIF89a written by hand, LZW-coded with literal codes only."""
    n_colors = len(palette) // 3
    bits = max(1, (n_colors - 1).bit_length())
    table = palette + bytes(3 * ((1 << bits) - n_colors))
    out = bytearray(b"GIF89a")
    out += struct.pack("<HHBBB", w, h, 0 if local else (0x80 | (bits - 1)), 0, 0)
    if not local:
        out += table
    if transparent is not None:
        out += bytes([0x21, 0xF9, 4, 1, 0, 0, transparent, 0])
    fh, fw = frame.shape
    out += b"," + struct.pack("<HHHHB", left, top, fw, fh, (0x80 | (bits - 1)) if local else 0)
    if local:
        out += table
    min_code = max(2, bits)
    clear, eoi = 1 << min_code, (1 << min_code) + 1
    size = min_code + 1
    codes = []
    for i, v in enumerate(frame.reshape(-1)):
        if i % ((1 << min_code) - 3) == 0:
            codes.append(clear)
        codes.append(int(v))
    codes.append(eoi)
    acc = nbits = 0
    data = bytearray()
    for c in codes:
        acc |= c << nbits
        nbits += size
        while nbits >= 8:
            data.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    if nbits:
        data.append(acc & 0xFF)
    out.append(min_code)
    for i in range(0, len(data), 255):
        chunk = data[i : i + 255]
        out.append(len(chunk))
        out += chunk
    out += b"\x00;"
    return bytes(out)


def build_broken(images: dict[str, bytes]) -> dict[str, bytes]:
    jpg = images["jpeg_333x517.jpg"]
    prog = images["jpeg_progressive.jpg"]
    png = images["png_rgb.png"]
    # A decompression bomb: a valid PNG header claiming 60000 x 60000 RGB pixels, with a tiny IDAT.
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + png_chunk(b"IEND", b"")
    )
    idat = png.find(b"IDAT") + 4
    # The same as a JPEG header (SOF0 with 60000 x 60000).
    jbomb = bytearray(images["jpeg_sub420.jpg"])
    sof = jbomb.find(b"\xff\xc0")
    jbomb[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    return {
        "truncated.jpg": jpg[: len(jpg) * 6 // 10],
        "truncated_progressive.jpg": prog[: len(prog) // 2],
        "truncated.png": png[: len(png) * 6 // 10],
        "truncated.gif": images["gif_palette.gif"][: len(images["gif_palette.gif"]) * 7 // 10],
        "truncated_gif_last_block.gif": images["gif_palette.gif"][:-3],
        "jpeg_no_eoi.jpg": images["jpeg_sub420.jpg"][:-2],
        "jpeg_progressive_no_eoi.jpg": prog[:-2],
        "truncated.bmp": images["bmp_rgb.bmp"][:-100],
        "truncated.tif": images["tiff_rgb.tif"][:-100],
        "truncated.webp": images["webp_lossy.webp"][:300],
        "empty.jpg": b"",
        "text.jpg": b"This is a text file, not a JPEG image.\n",
        "bomb.png": bomb,
        "bomb.jpg": bytes(jbomb),
        "bad_crc.png": png[: idat + 20] + bytes([png[idat + 20] ^ 0xFF]) + png[idat + 21 :],
    }


# --------------------------------------------------------------------------------------------------
# Configs.

DINOV2 = {
    "do_convert_rgb": True,
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 0.00392156862745098,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "image_processor_type": "BitImageProcessor",
}


def cfg(**changes) -> dict:
    out = dict(DINOV2)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


SMALL = dict(size={"shortest_edge": 28}, crop_size={"height": 20, "width": 20})
CONFIGS = {
    "dinov2": cfg(),
    "small": cfg(**SMALL),
    # every filter, on an image that is up-scaled along one axis and down-scaled along the other
    **{
        f"{name}_{which}": cfg(resample=code, size=size, do_center_crop=False)
        for name, code in [
            ("nearest", 0),
            ("lanczos", 1),
            ("bilinear", 2),
            ("bicubic", 3),
            ("box", 4),
            ("hamming", 5),
            ("mks2013", 6),
            ("mks2021", 7),
        ]
        for which, size in [("mix1", {"height": 56, "width": 16}), ("mix2", {"height": 14, "width": 70})]
    },
    "nearest_down": cfg(resample=0, size={"shortest_edge": 37}, crop_size={"height": 30, "width": 33}),
    "lanczos_down": cfg(resample=1, **SMALL),
    "bilinear_up": cfg(resample=2, size={"shortest_edge": 71}, crop_size={"height": 45, "width": 39}),
    "height_width": cfg(size={"height": 41, "width": 29}, crop_size={"height": 24, "width": 20}),
    "no_crop": cfg(size={"shortest_edge": 33}, do_center_crop=False),
    "custom_mean_std": cfg(**SMALL, image_mean=0.5, image_std=[0.25, 0.5, 0.125]),
    "legacy_int_size": cfg(size=40, crop_size=32, processor_class="Dinov2Processor", use_square_size=True),
    "no_rescale": cfg(**SMALL, do_rescale=False),
    "no_normalize": cfg(**SMALL, do_normalize=False),
    "no_rescale_no_normalize": cfg(**SMALL, do_rescale=False, do_normalize=False),
    "pad_crop": cfg(do_resize=False, crop_size={"height": 67, "width": 50}),
    "pad_crop_odd": cfg(size={"height": 31, "width": 26}, crop_size={"height": 40, "width": 33}),
    "shortest_longest": cfg(size={"shortest_edge": 40, "longest_edge": 60}, do_center_crop=False),
    "max_height_width": cfg(size={"max_height": 50, "max_width": 45}, do_center_crop=False),
    "do_pad": cfg(**SMALL, do_pad=True, pad_size={"height": 27, "width": 30}),
    "rescale_0_5": cfg(**SMALL, rescale_factor=0.5, do_normalize=False),
    "missing_keys": {"image_processor_type": "BitImageProcessor", **SMALL},
}

# (case name, image file, config name, decode options)
CASES: list[tuple[str, str, str, dict]] = []


def add(name: str, image: str, config: str, **decode) -> None:
    CASES.append((name, image, config, decode))


# Images Pillow opens that dinov2-image refuses with an "unsupported" error (the `tiff` crate
# does not decode palette TIFFs).
UNSUPPORTED = {"tiff_p.tif": "palette (RGBPalette) TIFF"}


def define_cases(images: dict[str, bytes]) -> None:
    for image in images:
        if image in UNSUPPORTED:
            continue
        stem = image.rsplit(".", 1)[0]
        if stem.startswith("jpeg_") and stem[5].isdigit():
            continue  # size-rule images get their own configs below
        add(stem, f"images/{image}", "small")
    for image in images:
        if "exif" in image or "orientation" in image:
            add(image.rsplit(".", 1)[0] + "_applied", f"images/{image}", "small", apply_exif_orientation=True)
    add("jpeg_100x60", "images/jpeg_100x60.jpg", "small")
    add("jpeg_1000x90", "images/jpeg_1000x90.jpg", "small")
    add("jpeg_90x1000", "images/jpeg_90x1000.jpg", "small")
    add("jpeg_64x64_same_size", "images/jpeg_64x64.jpg", "same_size")
    add("jpeg_333x517", "images/jpeg_333x517.jpg", "small")
    add("jpeg_100x60_pad", "images/jpeg_100x60.jpg", "pad_crop")
    add("jpeg_100x60_pad_odd", "images/jpeg_100x60.jpg", "pad_crop_odd")
    for config in CONFIGS:
        if config.endswith(("_mix1", "_mix2")):
            add(f"png_rgb_{config}", "images/png_rgb.png", config)
    for config in ["nearest_down", "lanczos_down", "height_width", "no_crop", "custom_mean_std",
                   "legacy_int_size", "no_rescale", "no_normalize", "no_rescale_no_normalize",
                   "shortest_longest", "max_height_width", "do_pad", "rescale_0_5", "missing_keys"]:
        add(f"jpeg_progressive_{config}", "images/jpeg_progressive.jpg", config)
    add("png_l_bilinear_up", "images/png_l.png", "bilinear_up")
    add("jpeg_1000x90_shortest_longest", "images/jpeg_1000x90.jpg", "shortest_longest")
    add("jpeg_90x1000_max_height_width", "images/jpeg_90x1000.jpg", "max_height_width")
    # The real DINOv2 configuration on the sample photos (full-size pixel_values).
    add("asset_astronaut_jpg_dinov2", "../../../assets/images/astronaut.jpg", "dinov2")
    add("asset_rocket_jpg_small", "../../../assets/images/rocket.jpg", "small")
    add("asset_chelsea_png_small", "../../../assets/images/chelsea.png", "small")
    add("asset_camera_png_small", "../../../assets/images/camera.png", "small")
    add("asset_coffee_jpg_lanczos", "../../../assets/images/coffee.jpg", "lanczos_down")
    # Decoded at reduced scale (DecodeOptions::draft): Pillow's draft at 1/2, 1/4 and 1/8, then the
    # processor on the smaller image.
    for image, configs in [
        ("jpeg_draft_sub420", ["draft_64", "small", "draft_16"]),
        ("jpeg_draft_sub444", ["draft_64", "draft_16"]),
        ("jpeg_draft_progressive", ["small", "draft_16"]),
        ("jpeg_draft_gray", ["draft_64"]),
        ("jpeg_draft_exif_rot6", ["draft_exact"]),
    ]:
        for config in configs:
            add(f"{image}_{config}", f"images/{image}.jpg", config, draft=True)
    add("jpeg_draft_exif_rot6_draft_exact_applied", "images/jpeg_draft_exif_rot6.jpg", "draft_exact",
        draft=True, apply_exif_orientation=True)
    # Too small to draft: decoded in full.
    add("jpeg_100x60_draft", "images/jpeg_100x60.jpg", "small", draft=True)


CONFIGS["same_size"] = cfg(size={"shortest_edge": 64}, crop_size={"height": 40, "width": 40})
CONFIGS["draft_64"] = cfg(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56})
CONFIGS["draft_16"] = cfg(size={"shortest_edge": 16}, crop_size={"height": 14, "width": 14})
# On the oriented image (axes exchanged by orientation 6) the draft differs from the stored one's.
CONFIGS["draft_exact"] = cfg(size={"height": 40, "width": 15}, do_center_crop=False)


# --------------------------------------------------------------------------------------------------
# Running transformers.


class Recorder(BitImageProcessorPil):
    """BitImageProcessorPil that remembers the output of its (PIL) resize step."""

    last_resized: np.ndarray | None = None

    def resize(self, image, size, resample=None, reducing_gap=None, **kwargs):
        out = super().resize(image, size, resample=resample, reducing_gap=reducing_gap, **kwargs)
        Recorder.last_resized = np.ascontiguousarray(np.transpose(out, (1, 2, 0)))
        return out


RGB_STORED: set[tuple[str, str]] = set()


def crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).tobytes())


def resize_target(height: int, width: int, size: dict) -> tuple[int, int]:
    """transformers' resize output (height, width) for the size rules the draft cases use."""
    if set(size) == {"shortest_edge"}:
        oh, ow = get_resize_output_image_size(
            np.zeros((3, height, width), np.uint8), size=size["shortest_edge"], default_to_square=False,
            input_data_format=ChannelDimension.FIRST,
        )
        return int(oh), int(ow)
    assert set(size) == {"height", "width"}, size
    return size["height"], size["width"]


def open_image(path: Path, decode: dict, config: str) -> Image.Image:
    im = Image.open(path)
    if decode.get("draft"):
        # Pillow's draft for twice the resize's output (what Image.thumbnail does), the output
        # computed for the image as the processor will see it (oriented when that is applied).
        swapped = decode.get("apply_exif_orientation") and im.getexif().get(0x0112) in (5, 6, 7, 8)
        w, h = (im.height, im.width) if swapped else im.size
        oh, ow = resize_target(h, w, CONFIGS[config]["size"])
        im.draft(None, (2 * oh, 2 * ow) if swapped else (2 * ow, 2 * oh))
    im.load()
    if decode.get("apply_exif_orientation"):
        im = ImageOps.exif_transpose(im)
    return im


def run_case(out: Path, name: str, image: str, config: str, decode: dict) -> dict:
    path = (out / image).resolve()
    im = open_image(path, decode, config)
    mode = im.mode
    rgb = np.array(convert_to_rgb(im))
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, (name, rgb.shape)
    proc = Recorder.from_dict(CONFIGS[config])
    Recorder.last_resized = None
    pv = proc(im, return_tensors="np")["pixel_values"]
    assert pv.shape[0] == 1
    pv = pv[0]
    if pv.dtype != np.float32:
        assert pv.dtype == np.uint8, pv.dtype  # do_rescale and do_normalize both off
        pv = pv.astype(np.float32)
    resized = Recorder.last_resized
    tensors = {"pixel_values": np.ascontiguousarray(pv)}
    key = (image, json.dumps(decode, sort_keys=True))
    if rgb.nbytes <= MAX_STORED_U8 and key not in RGB_STORED:
        RGB_STORED.add(key)  # the decoded image is stored once, with the first case that uses it
        tensors["rgb"] = rgb
    if resized is not None and resized.nbytes <= MAX_STORED_U8:
        tensors["resized"] = resized
    save_file(tensors, str(out / "expected" / f"{name}.safetensors"))
    return {
        "name": name,
        "image": image,
        "config": f"configs/{config}.json",
        "decode": decode,
        "pil_mode": mode,
        "width": int(rgb.shape[1]),
        "height": int(rgb.shape[0]),
        "rgb_crc32": crc(rgb),
        "resized_shape": None if resized is None else list(resized.shape),
        "resized_crc32": None if resized is None else crc(resized),
        "pixel_values_shape": list(pv.shape),
        "stored": sorted(tensors),
    }


def pillow_outcome(path: Path) -> str:
    try:
        im = Image.open(path)
        im.load()
        im.convert("RGB")
    except Exception as err:  # noqa: BLE001 - we record what Pillow does
        return f"error: {type(err).__name__}: {err}".replace(str(path), path.name)
    return "ok"


BROKEN_EXPECT = {
    "truncated.jpg": "truncated",
    "truncated_progressive.jpg": "truncated",
    "truncated.png": "truncated",
    "truncated.gif": "truncated",
    "truncated_gif_last_block.gif": "truncated",
    "jpeg_no_eoi.jpg": "truncated",
    "jpeg_progressive_no_eoi.jpg": "truncated",
    "truncated.bmp": "truncated",
    "truncated.tif": "truncated",
    "truncated.webp": "truncated",
    "empty.jpg": "empty",
    "text.jpg": "unknown_format",
    "bomb.png": "too_large",
    "bomb.jpg": "too_large",
    "bad_crc.png": "corrupt",
}


def output_size_table() -> list[dict]:
    """transformers' resize output (height, width) for many input sizes and size dicts."""
    shapes = [(1, 1), (1, 7), (7, 1), (60, 100), (100, 60), (90, 1000), (1000, 90), (256, 256), (517, 333),
              (333, 517), (480, 640), (640, 480), (427, 640), (301, 299), (3, 1000), (224, 225), (999, 1000)]
    sizes = [{"shortest_edge": 256}, {"shortest_edge": 224}, {"shortest_edge": 37},
             {"shortest_edge": 256, "longest_edge": 300}, {"shortest_edge": 40, "longest_edge": 41},
             {"shortest_edge": 224, "longest_edge": 1000},
             {"max_height": 50, "max_width": 45}, {"max_height": 700, "max_width": 300},
             {"height": 41, "width": 29}]
    table = []
    for h, w in shapes:
        for size in sizes:
            if "shortest_edge" in size and "longest_edge" in size:
                oh, ow = get_size_with_aspect_ratio((h, w), size["shortest_edge"], size["longest_edge"])
            elif "shortest_edge" in size:
                oh, ow = get_resize_output_image_size(
                    np.zeros((3, h, w), np.uint8), size=size["shortest_edge"], default_to_square=False,
                    input_data_format=ChannelDimension.FIRST,
                )
            elif "max_height" in size:
                oh, ow = get_image_size_for_max_height_width((h, w), size["max_height"], size["max_width"])
            else:
                oh, ow = size["height"], size["width"]
            table.append({"height": h, "width": w, "size": size, "expected": [int(oh), int(ow)]})
    return table


README = """# Preprocessing parity fixtures

Inputs and expected outputs of transformers {transformers} `BitImageProcessorPil` (Pillow {pillow}),
for the `dinov2-image` crate's tests (`crates/dinov2-image/tests/`). Generated by
`xtask/golden/make_preprocess.py`; do not edit by hand.

* `images/`: small test images of many kinds; `broken/`: files that must fail cleanly.
* `configs/`: `preprocessor_config.json` variants (`dinov2` is the facebook/dinov2-* file).
* `expected/<case>.safetensors`: `pixel_values` f32 [3,h,w]; `rgb` u8 [H,W,3] (Pillow decode +
  `convert("RGB")`) and `resized` u8 [h,w,3] (Pillow's resize) when at most {max_u8} bytes.
* `cases.json`: every case (image, config, decode options, Pillow mode, CRC-32 of the rgb and
  resized arrays, shapes), the broken files with Pillow's own outcome, the images Pillow opens but
  `dinov2-image` refuses as unsupported, and a table of resize output sizes computed by
  transformers.

## Regenerate

```sh
cargo xtask golden --python /opt/venvs/ref517/bin/python
# or only these fixtures:
/opt/venvs/ref517/bin/python xtask/golden/make_preprocess.py
```

The interpreter needs `xtask/golden/requirements-preprocess.txt` (the 5.17 environment plus Pillow
{pillow}). The sample photos in `assets/images/` are inputs too; `--assets` rewrites them from
scikit-image's data.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--assets", action="store_true", help="rewrite assets/images/ from scikit-image first")
    args = ap.parse_args()
    if args.assets:
        write_assets()
    out: Path = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    for sub in ("images", "broken", "configs", "expected"):
        (out / sub).mkdir(parents=True)

    images = build_images()
    for name, data in images.items():
        (out / "images" / name).write_bytes(data)
    broken = build_broken(images)
    for name, data in broken.items():
        (out / "broken" / name).write_bytes(data)
    for name, config in CONFIGS.items():
        (out / "configs" / f"{name}.json").write_text(json.dumps(config, indent=2) + "\n")

    define_cases(images)
    if out != DEFAULT_OUT.resolve():
        # cases that read the sample photos refer to them relative to the default location
        CASES[:] = [c for c in CASES if not c[1].startswith("..")]
    cases = [run_case(out, *case) for case in CASES]
    broken_list = []
    for name in broken:
        outcome = pillow_outcome(out / "broken" / name)
        if outcome == "ok":
            sys.exit(f"make_preprocess.py: Pillow opens broken/{name}; it is not broken")
        broken_list.append({"file": f"broken/{name}", "expected": BROKEN_EXPECT[name], "pillow": outcome})
    manifest = {
        "generator": "xtask/golden/make_preprocess.py",
        "versions": PINNED,
        "cases": cases,
        "broken": broken_list,
        "unsupported": [
            {"file": f"images/{name}", "what": what, "pillow": pillow_outcome(out / "images" / name)}
            for name, what in UNSUPPORTED.items()
        ],
        "output_sizes": output_size_table(),
    }
    (out / "cases.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "README.md").write_text(
        README.format(max_u8=MAX_STORED_U8, **PINNED)
    )
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(cases)} cases, {len(broken_list)} broken files to {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

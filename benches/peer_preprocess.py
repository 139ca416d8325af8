"""The peer of `dinov2 embed`'s decode + preprocess: Pillow with transformers'
BitImageProcessorPil (the facebook/dinov2-* settings) over the image files at the top level of a
folder, one thread: read, decode, convert to RGB, preprocess. Prints seconds and ms per image.
Compare with `dinov2 embed --workers 1 ... FOLDER`, whose summary gives its decode + preprocess
worker time.

    python benches/peer_preprocess.py FOLDER   # needs Pillow and transformers 5.17
"""
import os, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
from PIL import Image
from transformers.models.bit import BitImageProcessorPil
proc = BitImageProcessorPil(do_resize=True, size={"shortest_edge": 256}, resample=3,
                            do_center_crop=True, crop_size={"height": 224, "width": 224},
                            do_rescale=True, rescale_factor=1/255, do_normalize=True,
                            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                            do_convert_rgb=True)
folder = sys.argv[1]
# The extensions `dinov2 embed` takes from a folder.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
files = sorted(f for f in os.listdir(folder) if f.lower().endswith(EXTENSIONS))
t = time.perf_counter()
for f in files:
    with Image.open(os.path.join(folder, f)) as im:
        im = im.convert("RGB")
        out = proc(im, return_tensors="np")["pixel_values"]
dt = time.perf_counter() - t
print(f"{folder}: {len(files)} images, {dt:.2f} s, {dt / len(files) * 1e3:.2f} ms/image")

"""Tests of the `dinov2_rs` extension module, run by `tests/python.rs` (cargo test).

$DINOV2_EXPECTED names a JSON file with the model directory, the image paths and the Rust
library's vectors for them (`cls`, `patch`). The core checks need only the standard library
(memoryview reads the buffer); NumPy, pyarrow and Pillow checks run where those are installed.
"""

import json
import math
import os
import pathlib
import unittest

import dinov2_rs

EXPECTED = json.loads(pathlib.Path(os.environ["DINOV2_EXPECTED"]).read_text())
MODEL = EXPECTED["model"]
IMAGES = EXPECTED["images"]


def optional(name):
    try:
        return __import__(name)
    except ImportError:
        return None


np = optional("numpy")
pa = optional("pyarrow")
PIL = optional("PIL")
if PIL is not None:
    from PIL import Image


def flat(values):
    """A nested list of floats, flattened."""
    if isinstance(values, list):
        return [x for v in values for x in flat(v)]
    return [values]


def assert_close(case, got, want, what):
    got, want = flat(got), flat(want)
    case.assertEqual(len(got), len(want), what)
    scale = max(abs(w) for w in want)
    worst = max(abs(g - w) for g, w in zip(got, want))
    case.assertLessEqual(worst, 1e-6 * scale, f"{what}: off by {worst}")


class Core(unittest.TestCase):
    """What works with the standard library alone."""

    @classmethod
    def setUpClass(cls):
        cls.model = dinov2_rs.Embedder(MODEL)

    def test_paths_bytes_and_bytearrays_give_the_library_s_vectors(self):
        raw = [pathlib.Path(p).read_bytes() for p in IMAGES]
        for images in (IMAGES, [pathlib.Path(p) for p in IMAGES], raw, [bytearray(r) for r in raw]):
            out = self.model.embed(images)
            self.assertEqual(len(out), len(IMAGES))
            self.assertEqual(out.shape, (len(IMAGES), self.model.dim))
            view = memoryview(out)
            self.assertEqual((view.format, view.shape, view.readonly), ("f", out.shape, True))
            assert_close(self, view.tolist(), EXPECTED["cls"], "cls")

    def test_patch_grids_have_their_shape(self):
        model = dinov2_rs.Embedder(MODEL, pooling="patch")
        out = model.embed(IMAGES)
        self.assertEqual(out.shape, (len(IMAGES), 16, 16, model.dim))
        self.assertEqual(out.grids, [(16, 16)] * len(IMAGES))
        assert_close(self, memoryview(out).tolist(), EXPECTED["patch"], "patch")
        self.assertEqual(memoryview(out[1]).shape, (16, 16, model.dim))
        self.assertEqual(out.sizes, [(512, 512), (451, 300), (600, 400), (640, 427)])
        # 512 x 512 -> 256 x 256 -> the centre 224 x 224: pixels 32 to 480 of the photo.
        self.assertEqual(out.regions[0], (32.0, 32.0, 480.0, 480.0))
        # 451 x 300 -> 384 x 256 -> columns 80 to 304 and rows 16 to 240 of that.
        want = (80 * 451 / 384, 16 * 300 / 256, 304 * 451 / 384, 240 * 300 / 256)
        for got, w in zip(out.regions[1], want):
            self.assertAlmostEqual(got, w, places=9)
        assert_close(self, memoryview(out[-1]).tolist(), EXPECTED["patch"][-1], "row -1")

    def test_bad_images_raise_or_become_null_rows(self):
        images = [IMAGES[0], "/no/such/image.jpg", b"not an image", None]
        with self.assertRaisesRegex(ValueError, r"^image 1 failed .*cannot read /no/such/image\.jpg"):
            self.model.embed(images)
        out = self.model.embed(images, on_error="null")
        self.assertEqual(out.ok, [True, False, False, False])
        self.assertEqual((out.sizes[1], out.regions[1]), (None, None))
        self.assertEqual([row for row, _ in out.errors], [1, 2, 3])
        self.assertIn("image 2: expected a JPEG", out.errors[1][1])
        self.assertTrue(out.errors[0][1].startswith("image 1: cannot read"), out.errors)
        self.assertEqual((out[1].ok, out[1].size, out[1].region), (False, None, None))
        self.assertIn("cannot read", out[1].error)
        rows = memoryview(out).tolist()
        assert_close(self, rows[0], EXPECTED["cls"][0], "the good row")
        self.assertTrue(all(math.isnan(v) for row in rows[1:] for v in row))

    def test_wrong_arguments_name_themselves(self):
        for kwargs, message in [
            ({"device": "tpu"}, "device: unknown device"),
            ({"dtype": "f8"}, "dtype: unknown dtype"),
            ({"pooling": "max"}, "pooling: unknown pooling"),
            ({"pooling": "registers"}, "no register tokens"),
            ({"layers": [3]}, "layers: expected hidden states 0"),
            ({"crop": 5}, "smaller than one 14x14 patch"),
            ({"crop": (224, 224), "no_crop": True}, "crop: cannot be given"),
            ({"batch_size": 0}, "batch_size: expected at least 1"),
            ({"resize": 0}, "resize: expected at least 1"),
            ({"max_pixels": 0}, "max_pixels: expected at least 1"),
            ({"max_side": 0}, "max_side: expected at least 1"),
            ({"min_side": 0}, "min_side: expected at least 1"),
            ({"crop": True}, "found a bool"),
            ({"crop": "7x"}, "expected a size such as 224"),
            ({"dtype": "f16"}, "f16 runs on a GPU"),
            ({"layer_norm": False}, "layer_norm: applies to the hidden states"),
        ]:
            with self.assertRaisesRegex(ValueError, message):
                dinov2_rs.Embedder(MODEL, **kwargs)
        with self.assertRaisesRegex(ValueError, "no such directory or weights file"):
            dinov2_rs.Embedder("/no/such/model")
        for single in (IMAGES[0], pathlib.Path(IMAGES[0]), b"jpeg", bytearray(b"x"),
                       {"path": IMAGES[0]}):
            with self.assertRaisesRegex(TypeError, "single .*pass \\[image\\]"):
                self.model.embed(single)
        with self.assertRaisesRegex(TypeError, "image 1: expected encoded image bytes"):
            self.model.embed([IMAGES[0], 1.5])
        with self.assertRaisesRegex(ValueError, "on_error"):
            self.model.embed(IMAGES, on_error="skip")

    def test_no_images_is_an_empty_table(self):
        out = self.model.embed([])
        self.assertEqual((len(out), out.shape), (0, (0, self.model.dim)))
        # A patch grid under a fixed crop has its shape without any image.
        patch = dinov2_rs.Embedder(MODEL, pooling="patch")
        self.assertEqual(patch.embed([]).shape, (0, 16, 16, patch.dim))
        out = patch.embed([None], on_error="null")
        self.assertEqual(memoryview(out).shape, (1, 16, 16, patch.dim))

    def test_rows_and_slices_share_the_memory(self):
        out = self.model.embed(IMAGES)
        rows = list(out)
        self.assertEqual(len(rows), len(IMAGES))
        assert_close(self, memoryview(rows[2]).tolist(), EXPECTED["cls"][2], "row 2")
        self.assertEqual((rows[0].shape, rows[0].grid, rows[0].ok), ([self.model.dim], None, True))
        self.assertEqual(rows[0].size, (512, 512))
        middle = out[1:3]
        self.assertEqual((len(middle), middle.shape), (2, (2, self.model.dim)))
        assert_close(self, memoryview(middle).tolist(), EXPECTED["cls"][1:3], "rows 1:3")
        every_other = out[::-2]
        assert_close(self, memoryview(every_other).tolist(), EXPECTED["cls"][::-2], "rows ::-2")
        self.assertEqual(len(out[5:9]), 0)
        with self.assertRaises(IndexError):
            out[len(IMAGES)]
        with self.assertRaisesRegex(TypeError, "integer or a slice"):
            out["a"]

    def test_dicts_of_bytes_or_path_are_images(self):
        raw = pathlib.Path(IMAGES[0]).read_bytes()
        out = self.model.embed([{"bytes": raw, "path": None}, {"path": IMAGES[0]}, {"x": 1}],
                               on_error="null")
        self.assertEqual(out.ok, [True, True, False])
        rows = memoryview(out).tolist()
        assert_close(self, rows[0], EXPECTED["cls"][0], "dict bytes")
        assert_close(self, rows[1], EXPECTED["cls"][0], "dict path")

    def test_a_forked_child_embeds(self):
        self.model.embed(IMAGES[:2])  # the parent's threads exist now
        pid = os.fork()
        if pid == 0:  # the child: its own threads, or it would wait for the parent's forever
            try:
                ok = len(self.model.embed(IMAGES[:2])) == 2
            finally:
                os._exit(0 if ok else 1)
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self.assertEqual(os.waitstatus_to_exitcode(status), 0)
                return
            time.sleep(0.05)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        self.fail("the forked child hung in embed")

    def test_resolution_and_layers(self):
        wide = dinov2_rs.Embedder(MODEL, pooling="patch", crop="112x224")
        self.assertEqual(wide.crop_size, (112, 224))
        self.assertEqual(wide.embed(IMAGES[:1]).shape, (1, 8, 16, wide.dim))
        model = dinov2_rs.Embedder(MODEL, pooling="patch", resize=224, no_crop=True)
        out = model.embed(IMAGES)
        self.assertIsNone(out.shape)  # the aspect ratios differ
        self.assertEqual([s[:2] for s in out.shapes], [list(g) for g in out.grids])
        with self.assertRaises(BufferError):
            memoryview(out)
        self.assertEqual(memoryview(out[0]).shape, tuple(out.shapes[0]))
        model = dinov2_rs.Embedder(MODEL, layers=[1, 2], pooling="cls+mean", normalize=True)
        self.assertEqual(model.dim, 4 * model.hidden_size)
        row = memoryview(model.embed(IMAGES[:1])).tolist()[0]
        self.assertEqual(len(row), model.dim)
        self.assertAlmostEqual(sum(v * v for v in row), 1.0, places=5)


@unittest.skipIf(np is None, "NumPy is not installed")
class WithNumpy(unittest.TestCase):
    def test_arrays_share_the_memory_and_pixels_are_images(self):
        model = dinov2_rs.Embedder(MODEL)
        out = model.embed(IMAGES)
        array = np.asarray(out)
        self.assertEqual((array.dtype, array.shape), (np.float32, out.shape))
        self.assertFalse(array.flags.owndata)
        del out
        np.testing.assert_allclose(array, EXPECTED["cls"], rtol=0, atol=1e-6)
        if PIL is not None:
            image = Image.open(IMAGES[0])
            pixels = np.asarray(image.convert("RGB"))
            out = model.embed([image, pixels, pixels[::2, ::2]])
            np.testing.assert_allclose(np.asarray(out)[:2], [EXPECTED["cls"][0]] * 2, atol=1e-6)
            # A batch of N x H x W x 3 pixels (Ray Data's numpy batches): a row per image.
            out = model.embed(np.stack([pixels, pixels]))
            np.testing.assert_allclose(np.asarray(out), [EXPECTED["cls"][0]] * 2, atol=1e-6)
        with self.assertRaisesRegex(TypeError, "found numpy.ndarray of float32"):
            model.embed([np.zeros((4, 4, 3), np.float32)])
        with self.assertRaisesRegex(TypeError, r"single numpy.ndarray of shape \[8, 9, 3\]"):
            model.embed(np.zeros((8, 9, 3), np.uint8))
        if PIL is not None:
            with self.assertRaisesRegex(TypeError, "single PIL"):
                model.embed(Image.open(IMAGES[0]))
            # A truncated file fails when PIL loads it: that image's error.
            import io

            raw = pathlib.Path(IMAGES[0]).read_bytes()
            cut = Image.open(io.BytesIO(raw[: len(raw) // 2]))
            out = model.embed([cut, IMAGES[0]], on_error="null")
            self.assertEqual(out.ok, [False, True])
            self.assertIn("image 0:", out.errors[0][1])
        pandas = optional("pandas")
        if pandas is not None:
            pixels = np.zeros((30, 40, 3), np.uint8)
            out = model.embed(pandas.Series([pixels, pixels]))
            self.assertEqual(np.asarray(out).shape, (2, model.dim))
            out = model.embed(pandas.Series(IMAGES))
            np.testing.assert_allclose(np.asarray(out), EXPECTED["cls"], rtol=0, atol=1e-6)

    def test_ragged_rows_refuse_one_array(self):
        model = dinov2_rs.Embedder(MODEL, pooling="patch", resize=224, no_crop=True)
        with self.assertRaisesRegex(ValueError, "different shapes"):
            np.asarray(model.embed(IMAGES))


@unittest.skipIf(pa is None, "pyarrow is not installed")
class WithArrow(unittest.TestCase):
    def test_arrow_columns_in_and_out(self):
        model = dinov2_rs.Embedder(MODEL)
        raw = [pathlib.Path(p).read_bytes() for p in IMAGES]
        for column in (
            pa.array(raw),
            pa.array(raw, pa.large_binary()),
            pa.chunked_array([raw[:1], raw[1:]]),
            pa.array(IMAGES),
            pa.array([{"bytes": r, "path": None} for r in raw]),
        ):
            out = pa.array(model.embed(column))
            self.assertEqual(out.type, pa.list_(pa.float32(), model.dim))
            assert_close(self, out.to_pylist(), EXPECTED["cls"], str(column.type))
        out = pa.array(model.embed(pa.array([raw[0], None]), on_error="null"))
        self.assertEqual(out.null_count, 1)
        ragged = dinov2_rs.Embedder(MODEL, pooling="patch", resize=224, no_crop=True)
        self.assertEqual(pa.array(ragged.embed(IMAGES)).type, pa.large_list(pa.float32()))
        with self.assertRaisesRegex(TypeError, "struct column needs a `bytes` field"):
            model.embed(pa.array([{"x": 1, "y": 2}]))
        # Dictionary-encoded paths, a table of one column, a sliced array.
        for column in (
            pa.array(IMAGES).dictionary_encode(),
            pa.table({"image": raw}),
            pa.array([b"x"] + raw + [b"y"]).slice(1, len(raw)),
        ):
            out = model.embed(column)
            assert_close(self, np.asarray(out).tolist(), EXPECTED["cls"], str(column))
        # The list type a consumer asks for (Spark's array<float>, for one).
        out = model.embed(IMAGES)
        as_list = pa.array(out, type=pa.list_(pa.float32()))
        self.assertEqual(as_list.type, pa.list_(pa.float32()))
        assert_close(self, as_list.to_pylist(), EXPECTED["cls"], "list<float>")
        self.assertEqual(pa.array(out, type=pa.large_list(pa.float32())).type,
                         pa.large_list(pa.float32()))
        with self.assertRaisesRegex(ValueError, "fixed_size_list\\[3\\] asked"):
            pa.array(out, type=pa.list_(pa.float32(), 3))
        # Rows whose bytes break Arrow's rules are refused, not read.
        broken = pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(
            np.array([0, 2], np.int32).tobytes()), pa.py_buffer(b"\xff\xfe")])
        with self.assertRaisesRegex(ValueError, "Arrow"):
            model.embed(broken)


if __name__ == "__main__":
    unittest.main(verbosity=2)

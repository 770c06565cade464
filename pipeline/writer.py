"""Writer stage: hands the ordered results to the encoder, which writes the output file.

`process(result)` checks the order invariant (indices arrive contiguous from 0) and calls
the encoder's `write(planes, pts)`: `hw.av_encode.PyAVWriter` (CPU x264/x265/SVT-AV1 fed
yuv420p planes) or `hw.nvenc_writer.NvencFileWriter` (device NV12). `close(complete=)`
finalizes the file: the output is playable and holds every frame written; its audio is
copied whole only when every frame of the source went through, else cut at the last
video frame. Runs in a non-daemon thread that is always joined. `PictureWriter` takes its
place when the output is pictures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core.files import write_file_atomically
from hw.encoding import Encoder
from hw.pictures import encode_picture
from pipeline.messages import ResultItem
from pipeline.stats import RunStats

__all__ = ["Writer", "PictureWriter", "DiscardWriter"]


class Writer:
    """Stage: ordered results in, nothing out; the file is the product."""

    def __init__(self, encoder: Encoder, *, stats: RunStats) -> None:
        self.encoder = encoder
        self.stats = stats

    def process(self, item: ResultItem) -> list:
        _check_order(item, self.stats)
        self.encoder.write(item.planes, item.pts)
        self.stats.num_frames_written += 1
        return []

    def finish(self) -> list:
        return []

    def close(self, *, complete: bool) -> None:
        """Finalize. `complete`: end of stream reached this stage and the run was not stopped;
        the audio is copied whole only if, besides, the whole source was read (not
        --max-frames) and every decoded frame was written."""
        stats = self.stats
        whole = complete and stats.source_exhausted and stats.num_frames_written == stats.num_frames_decoded
        self.encoder.close(complete=whole)


class PictureWriter:
    """Stage in the writer's place for picture output: each result is one picture file, written
    atomically (temporary file, rename) under `name(index)` in `folder`. Results arrive in order
    (the collector's), but each picture stands alone: a stop leaves only whole pictures."""

    def __init__(self, folder: Path, name: Callable[[int], str], suffix: str, *, overwrite: bool,
                 stats: RunStats) -> None:
        self.folder = folder
        self.name = name
        self.suffix = suffix
        self.overwrite = overwrite
        self.stats = stats
        self.closed_cleanly = False

    def process(self, item: ResultItem) -> list:
        rgb = item.planes[0]
        alpha = item.planes[1] if len(item.planes) > 1 else None
        data = encode_picture(rgb, alpha, self.suffix)
        write_file_atomically(self.folder / self.name(item.index), data, overwrite=self.overwrite, flag="--output")
        self.stats.num_frames_written += 1
        return []

    def finish(self) -> list:
        return []

    def close(self, *, complete: bool) -> None:
        self.closed_cleanly = True


class DiscardWriter:
    """Stage in the writer's place for --output-mode none: checks the order and counts the
    results (the model's output was already dropped by the worker); writes nothing."""

    def __init__(self, *, stats: RunStats) -> None:
        self.stats = stats

    def process(self, item: ResultItem) -> list:
        _check_order(item, self.stats)
        self.stats.num_frames_written += 1
        return []

    def finish(self) -> list:
        return []

    def close(self, *, complete: bool) -> None:
        pass


def _check_order(item: ResultItem, stats: RunStats) -> None:
    """The writer's invariant: results arrive with contiguous indices from 0."""
    if item.index != stats.num_frames_written:
        raise RuntimeError(f"writer got frame {item.index}, expected {stats.num_frames_written}: order broken")

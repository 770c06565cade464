"""Writer stage: hands the ordered results to the encoder, which writes the output file.

`process(result)` checks the order invariant (indices arrive contiguous from 0) and calls
the encoder's `write(planes, pts)`: `hw.av_encode.PyAVWriter` (CPU x264/x265/SVT-AV1 fed
yuv420p planes) or `hw.nvenc_writer.NvencFileWriter` (device NV12). `close(complete=)`
finalizes the file: the output is playable and holds every frame written; its audio is
copied whole only when every frame of the source went through, else cut at the last
video frame. Runs in a non-daemon thread that is always joined.
"""

from __future__ import annotations

from hw.encoding import Encoder
from pipeline.messages import ResultItem
from pipeline.stats import RunStats

__all__ = ["Writer"]


class Writer:
    """Stage: ordered results in, nothing out; the file is the product."""

    def __init__(self, encoder: Encoder, *, stats: RunStats) -> None:
        self.encoder = encoder
        self.stats = stats

    def process(self, item: ResultItem) -> list:
        expected = self.stats.num_frames_written
        if item.index != expected:
            raise RuntimeError(f"writer got frame {item.index}, expected {expected}: order broken")
        self.encoder.write(item.planes, item.pts)
        self.stats.num_frames_written = expected + 1
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

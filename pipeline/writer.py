"""Writer stage: hands the ordered results to the encoder, which writes the output file.

`process(result)` checks the order invariant (indices arrive contiguous from 0) and calls
the encoder's `write(planes, pts)`: `hw.av_encode.PyAVWriter` (CPU x264/x265/SVT-AV1 fed
yuv420p planes) or `hw.nvenc_writer.NvencFileWriter` (device NV12). `close(complete=)`
finalizes the file: the output is playable and holds every frame written; its audio is
copied whole only when every frame of the source went through, else cut at the last
video frame. Runs in a non-daemon thread that is always joined. `PictureWriter` takes its
place when the output is pictures; it compresses several pictures at once on a small thread
pool of its own (`_PicturePool`), joined before it closes.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from core.errors import FramepipeError, one_line
from core.files import FreeSpaceGuard, disk_errors, write_file_atomically
from hw.encoding import Encoder
from hw.pictures import encode_picture, profile_fits, upright
from hw.scheduling import usable_cores
from pipeline.messages import ResultItem
from pipeline.stats import RunStats

__all__ = ["Writer", "PictureWriter", "DiscardWriter"]

log = logging.getLogger(__name__)

# Picture output: PNG/TIFF compression is the writer's whole cost (a 16K PNG takes seconds on one
# core) and OpenCV releases the GIL while compressing (hw.pictures.encode_picture), so pictures
# are compressed on up to this many threads at once...
PICTURE_THREADS = min(8, usable_cores())
# ...with at most this many bytes of pixels in flight (one picture is always let in): a thread
# also holds a BGR copy and the compressed bytes, and a 16K 16-bit RGB picture is 0.8 GB.
PICTURE_BYTES_IN_FLIGHT = 2 << 30


class Writer:
    """Stage: ordered results in, nothing out; the file is the product."""

    def __init__(self, encoder: Encoder, *, stats: RunStats) -> None:
        self.encoder = encoder
        self.stats = stats

    def process(self, item: ResultItem) -> list:
        _check_order(item, self.stats)
        for pts, planes in item.frames():
            self.encoder.write(planes, pts)
        self.stats.num_frames_written += 1
        self.stats.num_frames_made += len(item.extra)
        return []

    def finish(self) -> list:
        return []

    def close(self, *, complete: bool) -> None:
        """Finalize. `complete`: end of stream reached this stage and the run was not stopped;
        the audio is copied whole only if, besides, the whole source was read (not
        --max-frames) and every decoded frame was written."""
        stats = self.stats
        whole = complete and stats.source_exhausted and stats.num_frames_written == stats.num_frames_decoded
        # the last frame lasts as long as the source's does (a variable frame rate's last frame is not
        # the average one), where the source says and the frame is the source's last
        self.encoder.close(complete=whole, last_frame_seconds=stats.last_frame_seconds if whole else None)


class _PicturePool:
    """Runs picture jobs (compress + atomic write) on `num_threads` threads; their outcomes are
    taken in submission order, on the caller's thread.

    Invariant: at most `num_threads` jobs and `max_bytes` of pixels in flight, except that one
    job is always let in; `submit` blocks on the oldest job while the pool is full. A job's
    `done` runs (on the caller's thread) once it and every job before it succeeded. The first
    failure in submission order is raised once, by `submit` or `drain`; `close` joins the
    threads and raises nothing, so one failed picture is one error. A job handed in always runs:
    `close` waits for those not started too (a stop used to drop them, and with them pictures the
    run had made: seen as a flaky test under load, 2026-12-06)."""

    def __init__(self, *, num_threads: int, max_bytes: int) -> None:
        self.num_threads, self.max_bytes = max(1, num_threads), max_bytes
        self._executor = ThreadPoolExecutor(max_workers=self.num_threads, thread_name_prefix="writer-picture")
        self._in_flight: deque[tuple[Future, int, Callable[[], None] | None]] = deque()
        self._bytes_in_flight = 0

    def submit(self, job: Callable[[], None], *, num_bytes: int, done: Callable[[], None] | None = None) -> None:
        while self._in_flight and (len(self._in_flight) >= self.num_threads
                                   or self._bytes_in_flight + num_bytes > self.max_bytes):
            self._take_oldest()
        self._in_flight.append((self._executor.submit(job), num_bytes, done))
        self._bytes_in_flight += num_bytes
        while self._in_flight and self._in_flight[0][0].done():  # outcomes already there: no waiting
            self._take_oldest()

    def _take_oldest(self) -> None:
        future, num_bytes, done = self._in_flight.popleft()
        self._bytes_in_flight -= num_bytes
        future.result()  # the job's exception, if any
        if done is not None:
            done()

    @property
    def num_in_flight(self) -> int:
        """Jobs handed in and not yet taken (read from the pool's threads too: `len` of a deque)."""
        return len(self._in_flight)

    def drain(self) -> None:
        while self._in_flight:
            self._take_oldest()

    def close(self) -> None:
        """Wait for every job handed in, started or not: a picture made before a stop or an error is
        written whole, never dropped (at most `num_threads` jobs are ever in flight, so a stop
        waits for a few pictures at most)."""
        self._executor.shutdown(wait=True)
        while self._in_flight:
            future, _, done = self._in_flight.popleft()
            if future.cancelled():
                continue
            if future.exception() is None:
                if done is not None:
                    done()
            else:  # a stopped run: its first error was raised, or the stop had another cause
                log.debug("picture job failed while stopping: %s", future.exception())


class PictureWriter:
    """Stage in the writer's place for picture output: each result is one picture file, written
    atomically (temporary file, rename) under `name(index)` in `folder`. Results arrive in order
    (the collector's); pictures are compressed and written a few at a time (`_PicturePool`:
    bounded threads and bytes in flight), and pictures are counted in order as they land on
    disk: a source frame's own in `num_frames_written`, a made one (--interpolate) in
    `num_frames_made`. Each picture stands alone: a stop leaves only whole pictures (`--resume`
    then redoes the missing ones), and the first picture that fails is the one error the run
    reports, naming it. `kept`: the names of the pictures an earlier run left (--resume), not
    written again nor counted (a resumed run counts what it wrote): with --interpolate a source
    frame is redone when any of its pictures is missing (and the last one, which has no frames
    made after it, always is). `orientation`: how a rotated video's frames are turned upright
    (hw.pictures.orientation), since a picture file carries no rotation. `gray`: written gray.
    `free_space`: the guard a video's writer uses too (core.files.FreeSpaceGuard): a picture is
    written only while the folder's file system keeps room for it, the pictures still in flight
    and a reserve; short of that the run stops with `DiskFull` (a filled disk failed the writes of
    other programs, and of the run's own manifest). `profile(i)`: the ICC colour profile of
    picture `i`'s source picture (None: none), embedded where it describes the picture written;
    one that does not (a CMYK JPEG's, an RGB one for a picture written gray) is left out, said in
    one line at the end."""

    def __init__(self, folder: Path, name: Callable[[int], str], suffix: str, *, overwrite: bool,
                 stats: RunStats, frames_per_item: int = 1, kept: Collection[str] = (),
                 num_threads: int | None = None, max_bytes_in_flight: int = PICTURE_BYTES_IN_FLIGHT,
                 orientation: tuple[bool, bool, bool] = (False, False, False), gray: bool = False,
                 free_space: FreeSpaceGuard | None = None, profile: Callable[[int], bytes | None] | None = None) -> None:
        self.folder = folder
        self.profile = profile
        self.profiles_dropped: list[tuple[str, str]] = []  # (picture, the profile's colour space)
        self.orientation = orientation
        self.gray = gray  # a gray source: pictures without alpha are written gray (hw.pictures.is_gray)
        # --interpolate N: item i and the frames made after it are pictures i*N .. i*N+N-1
        self.frames_per_item = frames_per_item
        self.kept = kept
        self.name = name
        self.suffix = suffix
        self.overwrite = overwrite
        self.stats = stats
        self.closed_cleanly = False
        self._pool = _PicturePool(num_threads=num_threads or PICTURE_THREADS, max_bytes=max_bytes_in_flight)
        self._space = free_space if free_space is not None else FreeSpaceGuard(folder / "picture")
        self._space_lock = threading.Lock()  # the guard and its counts are shared by the pool's threads
        self._num_bytes_written = 0
        self._num_pictures_written = 0

    def _make_room(self, num_bytes: int) -> None:
        """Before a picture of `num_bytes` is written: DiskFull unless the file system keeps room
        for it and for the other pictures in flight (the guard counts each at twice the average)."""
        with self._space_lock:
            self._space.check(bytes_written=self._num_bytes_written + num_bytes,
                              frames_written=self._num_pictures_written + 1,
                              frames_pending=max(0, self._pool.num_in_flight - 1))
            self._num_bytes_written += num_bytes
            self._num_pictures_written += 1

    def _profile_for(self, index: int, name: str, *, gray: bool) -> bytes | None:
        icc = self.profile(index) if self.profile is not None else None
        if icc and not profile_fits(icc, gray=gray):
            with self._space_lock:
                self.profiles_dropped.append((name, icc[16:20].decode("latin-1").strip() or "unknown"))
            return None
        return icc

    def _write_picture(self, path: Path, rgb, alpha, index: int) -> None:
        """On a pool thread: compress, then write through a temporary file and a rename. A failure
        names its picture (framepipe's own errors name it already)."""
        try:
            gray = self.gray and alpha is None
            icc = self._profile_for(index, path.name, gray=gray)
            data = encode_picture(rgb, alpha, self.suffix, gray=gray, icc=icc)
            self._make_room(len(data))
            with disk_errors(path):  # a full disk: DiskFull, whose line the run's report completes
                write_file_atomically(path, data, overwrite=self.overwrite, flag="--output")
        except FramepipeError:
            raise
        except Exception as exc:
            raise RuntimeError(f"picture {path.name} was not written: {one_line(exc)}") from exc

    def _count(self, made: bool) -> None:
        if made:
            self.stats.num_frames_made += 1
        else:
            self.stats.num_frames_written += 1

    def process(self, item: ResultItem) -> list:
        for k, (_, planes) in enumerate(item.frames()):
            index = item.index * self.frames_per_item + k
            path = self.folder / self.name(index)
            if path.name in self.kept:
                continue
            rgb = upright(planes[0], self.orientation)
            alpha = upright(planes[1], self.orientation) if len(planes) > 1 else None
            self._pool.submit(lambda p=path, c=rgb, a=alpha, i=index: self._write_picture(p, c, a, i),
                              num_bytes=rgb.nbytes + (alpha.nbytes if alpha is not None else 0),
                              done=lambda made=k > 0: self._count(made))
        return []

    def finish(self) -> list:
        self._pool.drain()
        return []

    def close(self, *, complete: bool) -> None:
        self._pool.close()
        if self.profiles_dropped:
            name, space = min(self.profiles_dropped)
            self.stats.warn(f"output: {len(self.profiles_dropped)} picture(s) carry a colour profile that does not describe "
                            f"the pictures written (e.g. {name}, whose profile is for {space}); they were written without one")
        self.closed_cleanly = True


class DiscardWriter:
    """Stage in the writer's place for --output-mode none: checks the order and counts the
    results (the model's output was already dropped by the worker); writes nothing."""

    def __init__(self, *, stats: RunStats) -> None:
        self.stats = stats

    def process(self, item: ResultItem) -> list:
        _check_order(item, self.stats)
        self.stats.num_frames_written += 1
        self.stats.num_frames_made += len(item.extra)
        return []

    def finish(self) -> list:
        return []

    def close(self, *, complete: bool) -> None:
        pass


def _check_order(item: ResultItem, stats: RunStats) -> None:
    """The writer's invariant: results arrive with contiguous indices from 0."""
    if item.index != stats.num_frames_written:
        raise RuntimeError(f"writer got frame {item.index}, expected {stats.num_frames_written}: order broken")

"""Segmented output: the work folder beside the output, its manifest, and resuming from it.

A segmented run encodes contiguous ranges of frames ("segments") into closed files in
`<output>.parts/` (`segment-000003.mkv` holds frames [3*S, 4*S)), each started by a fresh
encoder (so each begins with an IDR frame), and joins them by stream copy at the end. The
manifest (`manifest.json`, written atomically after every finished segment) says which
source and which pixel-changing settings the parts belong to, and which segments are
finished, with their frame range and checksum. After any stop — Ctrl-C, a failure,
`kill -9`, a power cut — finished segments are complete files on disk and `--resume`
redoes only the rest.

Rules of the work folder (the same as for every file a run writes, `core.files`): a run
creates it, or takes it over with `--resume` (when the manifest matches) or `--overwrite`
(it is removed first); otherwise an existing one is an error naming both choices. It is
removed after a successful join unless `--keep-parts`.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InvalidOption, OutputExists, OutputNotWritable, UnsafeOutput
from core.files import file_identity, file_sha256, partial_names, refuse_if_busy, work_folder, write_file_atomically

__all__ = ["SegmentLayout", "Manifest", "PartsFolder", "recorded_taper", "source_fingerprint", "check_picture_manifest", "pictures_done", "PICTURE_MANIFEST",
           "MANIFEST_VERSION"]

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


TAPER_RATIO = 4.0  # frames arrive this many times faster than one encoder takes them (the shape of the taper)


@dataclass(frozen=True)
class SegmentLayout:
    """Which frames each segment holds: [k*S, (k+1)*S), cut at `end`. Frames are numbered as the
    reader passes them on (from 0 at --start: core.cut renumbers them).

    `taper_end` (the frame count the plan expects, or None): the last segments before it are
    shorter, smallest last, so that the pool's encoders end together. With segments of one
    length, the encoder handed the last one is still encoding it seconds after the last frame
    (x264 takes a segment's frames faster than it encodes them) while the others wait: on an
    H100 host ~1.3 s at the end of a 10 s model-bound run. The tapered segments (`taper_sizes`)
    start at a multiple of S; frames past `taper_end` (the estimate was short) go on in segments
    of S. The taper depends only on S and `taper_end`, which the manifest records, so a resumed
    run lays the segments out as the run it finishes did."""

    segment_frames: int
    end: int | None = None  # one past the last frame (--max-frames); None: to the source's (or the cut's) end
    taper_end: int | None = None

    def __post_init__(self) -> None:
        if self.segment_frames < 1:
            raise ValueError(f"segment_frames must be >= 1, got {self.segment_frames}")
        if self.taper_end is not None and self.taper_end < 1:
            raise ValueError(f"taper_end must be >= 1, got {self.taper_end}")

    @property
    def _taper(self) -> tuple[int, tuple[int, ...]]:
        """(first frame of the taper, the tapered segments' first frames); (_, ()) where there is none."""
        if self.taper_end is None:
            return 0, ()
        return _taper_starts(self.segment_frames, self.taper_end)

    def sizes_at_end(self) -> tuple[int, ...]:
        """The tapered segments' lengths, in order (empty: none)."""
        _, starts = self._taper
        return tuple(b - a for a, b in zip(starts, (*starts[1:], self.taper_end)))

    def segment_of(self, index: int) -> int:
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        s = self.segment_frames
        begin, starts = self._taper
        if not starts or index < begin:
            return index // s
        if index < self.taper_end:
            return begin // s + bisect.bisect_right(starts, index) - 1
        return begin // s + len(starts) + (index - self.taper_end) // s

    def start_of(self, segment: int) -> int:
        s = self.segment_frames
        begin, starts = self._taper
        if not starts or segment < begin // s:
            return segment * s
        k = segment - begin // s
        if k < len(starts):
            return starts[k]
        return self.taper_end + (k - len(starts)) * s

    def stop_of(self, segment: int) -> int:
        stop = self.start_of(segment + 1)
        return stop if self.end is None else min(stop, self.end)

    def length_of(self, segment: int) -> int:
        """Frames segment `segment` holds when the video goes on past it (before the cut at `end`)."""
        return self.start_of(segment + 1) - self.start_of(segment)

    def is_last_of_segment(self, index: int) -> bool:
        return index + 1 == self.stop_of(self.segment_of(index))


def taper_sizes(segment_frames: int) -> tuple[int, ...]:
    """The tapered segments' lengths, last first: the last one 1/8 of S (at least 2 frames),
    each earlier one as long as the one after it plus the frames after it over TAPER_RATIO - 1,
    up to S. Where frames arrive TAPER_RATIO times as fast as one encoder takes them, and each
    segment's encoder is free when it arrives, they all end when the last one does."""
    first = max(2, -(-segment_frames // 8))
    if first >= segment_frames:
        return ()
    sizes: list[int] = []
    after = 0
    while True:
        size = round(first + after / (TAPER_RATIO - 1))
        if size >= segment_frames:
            return tuple(sizes)
        sizes.append(size)
        after += size


@functools.lru_cache(maxsize=64)
def _taper_starts(segment_frames: int, taper_end: int) -> tuple[int, tuple[int, ...]]:
    sizes = taper_sizes(segment_frames)
    if not sizes:
        return taper_end, ()
    begin = max(0, (taper_end - sum(sizes)) // segment_frames * segment_frames)  # a multiple of S, before the taper
    # The taper's frames, from the end: the sizes in turn; what is left before them (under S) joins the first.
    lengths: list[int] = []
    left = taper_end - begin
    for size in sizes:
        if left < size:
            break
        lengths.append(size)
        left -= size
    if left > 0:  # the frames before the taper, under S: with its first segment, as one or two segments
        if lengths and left + lengths[-1] > segment_frames:
            both = left + lengths.pop()
            lengths += [both // 2, both - both // 2]
        elif lengths:
            lengths[-1] += left
        else:
            lengths.append(left)
    starts, at = [], begin
    for n in reversed(lengths):
        starts.append(at)
        at += n
    return begin, tuple(starts)


def source_fingerprint(path: Path) -> dict[str, object]:
    """Enough to tell "the same source file" from another: size, and a hash of its first
    and last MiB (a re-encoded or edited file differs there; modification times are not
    trusted: copies and backups change them)."""
    st = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        if st.st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
        digest.update(f.read(1 << 20))  # the last MiB, or all the rest of a file of 1-2 MiB
    return {"size": st.st_size, "sha256_head_tail": digest.hexdigest()}


@dataclass
class Manifest:
    """What the parts in a work folder are: source, settings, finished segments."""

    source: dict[str, object]
    settings: dict[str, object]
    segments: dict[int, dict[str, object]] = field(default_factory=dict)  # k -> {first, stop, file, sha256, pts_offset}
    partials: dict[int, int] = field(default_factory=dict)  # k -> pts_offset of partial-<k> (a stopped run's)
    partial_output: dict[str, int] | None = None  # the joined output a stopped run left at the output name
    temp_output: str | None = None  # the hidden temporary output of the run using the folder (a kill -9 leaves it)
    version: int = MANIFEST_VERSION
    written_since: float | None = None  # pictures: when the run that wrote the manifest started (`pictures_done`)

    def to_json(self) -> bytes:
        data = {"version": self.version, "source": self.source, "settings": self.settings,
                "segments": {str(k): v for k, v in sorted(self.segments.items())},
                "partials": {str(k): v for k, v in sorted(self.partials.items())},
                "partial_output": self.partial_output, "temp_output": self.temp_output}
        if self.written_since is not None:
            data["written_since"] = self.written_since
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Manifest":
        """Raises ValueError (or KeyError, TypeError) for a file that is not a whole manifest: a
        damaged or hand-edited one is refused in one line, never half-trusted."""
        raw = json.loads(data)
        if not isinstance(raw, dict) or not all(isinstance(raw.get(key, {}), dict)
                                                for key in ("source", "settings", "segments", "partials")) \
                or not all(key in raw for key in ("source", "settings")):  # written into every manifest
            raise ValueError("not a framepipe manifest")
        segments = {int(k): v for k, v in raw.get("segments", {}).items()}
        for k, entry in segments.items():
            if not (isinstance(entry, dict) and all(type(entry.get(key)) is int for key in ("first", "stop", "pts_offset"))
                    and all(isinstance(entry.get(key), str) for key in ("file", "sha256"))):
                raise ValueError(f"segment {k}'s entry is incomplete")
        partial_output = raw.get("partial_output")
        if partial_output is not None and not isinstance(partial_output, dict):
            raise ValueError("partial_output is not a table")
        temp_output = raw.get("temp_output")
        since = raw.get("written_since")
        return cls(source=raw["source"], settings=raw["settings"], segments=segments,
                   partials={int(k): int(v) for k, v in raw.get("partials", {}).items()},
                   partial_output=partial_output, temp_output=temp_output if isinstance(temp_output, str) else None,
                   version=int(raw["version"]),
                   written_since=float(since) if isinstance(since, (int, float)) and not isinstance(since, bool) else None)

    def differences(self, *, source: dict[str, object], settings: dict[str, object]) -> list[str]:
        """What differs between this manifest and a new run's source and settings (names only)."""
        out = []
        if self.version != MANIFEST_VERSION:
            out.append(f"manifest version {self.version} (this framepipe writes {MANIFEST_VERSION})")
        if self.source != source:
            out.append(_source_difference(self.source, source))
        for key in sorted(set(self.settings) | set(settings)):
            if self.settings.get(key) != settings.get(key):
                out.append(f"{key} ({self.settings.get(key)!r} then, {settings.get(key)!r} now)")
        return out


def _source_difference(then: dict[str, object], now: dict[str, object]) -> str:
    """What differs between two sources' fingerprints (`source_fingerprint` of a video file, or
    `hw.pictures.PictureSequence.fingerprint` of pictures: they hold "first"), named as what they are:
    a picture folder or pattern was called "the source file"."""
    pictures_then, pictures_now = "first" in then, "first" in now
    if not pictures_then and not pictures_now:
        return "the source file"
    if pictures_then != pictures_now:
        return f"the source ({'pictures' if pictures_then else 'a video file'} then, " \
               f"{'pictures' if pictures_now else 'a video file'} now)"
    if then.keys() != now.keys():  # recorded for another kind of output (by name, or by position)
        return "the source pictures"
    for key, what in (("pictures", "the number of source pictures"), ("first", "the first source picture"),
                      ("last", "the last source picture"), ("template", "the source pictures' numbering")):
        if then.get(key) != now.get(key):
            return f"{what} ({then.get(key)!r} then, {now.get(key)!r} now)"
    return f"the source pictures (the content of the first{'' if 'sha256_first' in now else ' or last'} picture)"


def recorded_taper(settings: dict[str, object]) -> int | None:
    """The `segment_taper` a run's settings record (`SegmentLayout.taper_end`); None: none (a run
    made before segments tapered, or one not tapered), or not a valid one."""
    taper = settings.get("segment_taper")
    return taper if type(taper) is int and taper >= 1 else None


def _recorded_layout(settings: dict[str, object]) -> SegmentLayout | None:
    """The segment layout the settings of a run record (None: not a segmented run's)."""
    segment_frames = settings.get("segment_frames")
    if type(segment_frames) is not int or segment_frames < 1:
        return None
    return SegmentLayout(segment_frames, taper_end=recorded_taper(settings))


PICTURE_MANIFEST = ".framepipe-run.json"
# What a run writes in its work folder: a work folder without a manifest holding only these is
# one a run was killed in right after creating it (resumed); anything else is not framepipe's.
_FRAMEPIPE_NAME = re.compile(r"(segment|partial)-\d{6}\.mp4|\.(segment|partial)-\d{6}\.part\.mp4|\.manifest\..*|"
                             r"\.probe\.mp4")


def check_picture_manifest(folder: Path, *, resume: bool, overwrite: bool = False, source: dict[str, object],
                           settings: dict[str, object]) -> None:
    """Picture output: with --resume, the folder's manifest must name this source and these
    settings (one line naming what differs; with --overwrite too, the run starts again instead);
    otherwise it is written for a later --resume, with the time this run started
    (`written_since`): a --resume counts as done only the pictures written since then
    (`pictures_done`), never those an --overwrite run had not replaced yet when it stopped."""
    path = folder / PICTURE_MANIFEST
    if resume and path.is_file():
        try:
            manifest = Manifest.from_json(path.read_bytes())
        except (ValueError, KeyError, TypeError) as exc:
            if not overwrite:
                raise InvalidOption(f"Cannot resume: {str(path)!r} is damaged ({exc}). Pass --overwrite to start "
                                    "again.") from None
        else:
            differs = manifest.differences(source=source, settings=settings)
            if not differs:
                return
            if not overwrite:
                raise InvalidOption(f"Cannot resume: the pictures in {str(folder)!r} do not match this run "
                                    f"({'; '.join(differs)}). Run with the same source and settings, or pass "
                                    "--overwrite to replace them.")
    elif resume and not overwrite and any(p.name != PICTURE_MANIFEST for p in folder.iterdir()):
        raise InvalidOption(f"Cannot resume: {str(folder)!r} has no {PICTURE_MANIFEST} (its pictures were not made by "
                            "framepipe, or by a version that did not record how). Pass --overwrite to replace them.")
    write_file_atomically(path, Manifest(source=source, settings=settings, written_since=time.time()).to_json(),
                          overwrite=True, flag="manifest")


def pictures_done(folder: Path) -> set[str]:
    """The names of the pictures in `folder` a --resume keeps: those written since the run that
    wrote its manifest started (all of them where the manifest does not say when)."""
    if not folder.is_dir():
        return set()
    try:
        since = Manifest.from_json((folder / PICTURE_MANIFEST).read_bytes()).written_since
    except (OSError, ValueError, KeyError, TypeError):
        since = None
    done = set()
    with os.scandir(folder) as listing:
        for entry in listing:
            try:
                if since is None or entry.stat().st_mtime >= since:
                    done.add(entry.name)
            except OSError:
                continue
    return done


class PartsFolder:
    """The work folder `<output>.parts/` of one output: segments, manifest, temporaries."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.path = work_folder(self.output)
        self.manifest_path = self.path / "manifest.json"
        self.manifest: Manifest | None = None
        self.taken_over = False  # opened with --resume from an earlier run's manifest
        self._lock = threading.Lock()  # encoders finish segments from several threads

    def segment_path(self, segment: int) -> Path:
        """Segments are MP4 files whose timestamps start at 0: the offset to the source's
        timestamps (`pts_offset`, in the output's time base: the source's, divided by N with --interpolate N) is kept in the manifest and added
        back by the join. Stored at its real start instead, an MP4 places a segment with an
        edit list in the movie's 1/1000 timescale (off by up to a millisecond, seen with
        1-frame segments); Matroska rounds every timestamp to a millisecond; NUT gives the
        first packets no DTS."""
        return self.path / f"segment-{segment:06d}.mp4"

    def partial_path(self, segment: int) -> Path:
        return self.path / f"partial-{segment:06d}.mp4"

    def finished(self) -> dict[int, dict[str, object]]:
        assert self.manifest is not None
        with self._lock:
            return dict(self.manifest.segments)

    def check(self, *, resume: bool, overwrite: bool, inputs: Sequence[tuple[str, Path]] = ()) -> None:
        """Before any work: refuse a folder the run may not use (one line naming the choices).
        `inputs` ((flag, path)): files the run reads or writes beside the output (--stats-json),
        which must not lie inside the folder (a run empties it; a --stats-json named manifest.json
        replaced the manifest, and the stopped run could not be resumed), whether it exists yet or not."""
        for flag, path in inputs:
            resolved = Path(path).resolve()
            if resolved == self.path.resolve() or self.path.resolve() in resolved.parents:
                raise UnsafeOutput(f"{flag} {str(path)!r} is inside the work folder {str(self.path)!r}, which the run "
                                   "empties. Move it, or choose another --output.")
        if not os.path.lexists(self.path):
            return
        if not self.path.is_dir() or self.path.is_symlink():
            what = "a link: the work folder is never one" if self.path.is_symlink() else "not a folder"
            raise OutputNotWritable(f"{str(self.path)!r} is in the way of the work folder ({what}). Move it.")
        if not resume and not overwrite:
            refuse_if_busy(self.output)  # not an earlier run's: one writing now
            raise OutputExists(
                f"Work folder {str(self.path)!r} exists (parts of an earlier run of this output). Pass --resume to "
                "finish that run, or --overwrite to start again."
            )
        foreign = sorted(p.name for p in self.path.iterdir() if not self._is_own(p))
        if foreign:  # framepipe removes only what it made: a file of the user's in there is never lost
            shown = ", ".join(repr(name) for name in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputExists(f"Work folder {str(self.path)!r} holds {len(foreign)} file(s) framepipe did not make "
                               f"({shown}), and a run empties that folder. Move them out of it, or choose another "
                               "--output.")
        if self.manifest_path.is_file():  # names alone do not make a folder framepipe's: its manifest does
            try:
                Manifest.from_json(self.manifest_path.read_bytes())
            except (ValueError, KeyError, TypeError, OSError) as exc:
                raise OutputExists(f"Work folder {str(self.path)!r} holds a manifest.json framepipe cannot read ({exc}): "
                                   "the folder may not be framepipe's, and a run empties it. Move it away, or choose "
                                   "another --output.") from None

    def open(self, *, resume: bool, overwrite: bool, source: dict[str, object], settings: dict[str, object],
             temp_output: Path | None = None) -> Manifest:
        """Create (or take over) the folder; returns the manifest to fill. Finished segments of a
        matching manifest are kept (their files checked); everything else in the folder goes, and
        so does the hidden temporary output an earlier run of it left (killed before renaming it).
        `temp_output`: this run's, recorded for the next one."""
        if os.path.lexists(self.path):  # checked before, but the folder may have appeared or changed since
            self.check(resume=resume, overwrite=overwrite)
        manifest = None
        if resume and self.manifest_path.is_file():
            try:
                manifest = Manifest.from_json(self.manifest_path.read_bytes())
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidOption(f"Cannot resume: {str(self.manifest_path)!r} is damaged ({exc}). Move the work "
                                    "folder away to start again.") from None
            differs = manifest.differences(source=source, settings=settings)
            if differs and overwrite:  # --resume --overwrite: resume what matches, else start again
                log.warning("the parts in %s do not match this run (%s): starting again (--overwrite)", self.path,
                            "; ".join(differs))
                manifest = None
            elif differs:
                raise InvalidOption(
                    f"Cannot resume: the parts in {str(self.path)!r} do not match this run ({'; '.join(differs)}). "
                    "Run with the same source and settings, or pass --overwrite to start again."
                )
        if os.path.lexists(self.path) and manifest is None:
            self._remove_temp_output(self._recorded_temp_output(), temp_output)
            self._empty()
        try:
            self.path.mkdir(exist_ok=True)
        except OSError as exc:
            raise OutputNotWritable(f"Cannot create the work folder {str(self.path)!r}: {exc.strerror or exc}.") from None
        self.taken_over = manifest is not None
        if manifest is None:
            manifest = Manifest(source=source, settings=settings)
        else:
            self._remove_temp_output(manifest.temp_output, temp_output)
        layout = _recorded_layout(settings)
        kept = {k: v for k, v in manifest.segments.items() if layout is not None and self._intact(k, v, layout)}
        if len(kept) != len(manifest.segments):
            log.warning("%d finished segment(s) in %s were missing or damaged: they are made again",
                        len(manifest.segments) - len(kept), self.path)
        manifest.segments = kept
        manifest.partials = {}  # a new run makes its own partial segments
        manifest.temp_output = temp_output.name if temp_output is not None else None
        self._empty(keep={"manifest.json", *(v["file"] for v in kept.values())})  # a killed run's unfinished parts
        self.manifest = manifest
        self.save()
        return manifest

    @staticmethod
    def _is_own(path: Path) -> bool:
        """A name framepipe gives what it writes in a work folder (files only: it makes no folders)."""
        return ((path.name == "manifest.json" or bool(_FRAMEPIPE_NAME.fullmatch(path.name)))
                and (path.is_symlink() or not path.is_dir()))

    def _empty(self, keep: Collection[str] = ()) -> None:
        """Removes what framepipe made in the folder (but `keep`); anything else stays (`check`
        refused a folder holding it; one that appeared during the run is the user's)."""
        for entry in self.path.iterdir():
            if entry.name not in keep and self._is_own(entry):
                entry.unlink(missing_ok=True)

    def _intact(self, segment: int, entry: dict[str, object], layout: SegmentLayout) -> bool:
        """The entry is this segment's (its own file, a range inside the segment) and its file
        is unchanged since it was finished."""
        first, stop = entry["first"], entry["stop"]
        if (segment < 0 or entry["file"] != self.segment_path(segment).name or first != layout.start_of(segment)
                or not first < stop <= layout.start_of(segment + 1)):
            return False
        path = self.segment_path(segment)
        return path.is_file() and file_sha256(path) == entry["sha256"]

    def recorded_settings(self) -> dict[str, object] | None:
        """The settings the manifest in this folder records (None: no readable manifest)."""
        manifest = self._recorded_manifest()
        return manifest.settings if manifest is not None else None

    def _recorded_temp_output(self) -> str | None:
        manifest = self._recorded_manifest()
        return manifest.temp_output if manifest is not None else None

    def _recorded_manifest(self) -> Manifest | None:
        """The manifest in this folder; None where there is none or it cannot be read."""
        try:
            return Manifest.from_json(self.manifest_path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _remove_temp_output(self, name: str | None, current: Path | None) -> None:
        """The hidden temporary output `name` an earlier run of this output left (killed before it
        renamed it) is removed: the output's lock is held, so no run writes it any more."""
        if not name or os.sep in name or not (name.startswith(f".{self.output.stem}.")
                                              and name.endswith(f".part{self.output.suffix}")):
            return
        stale = self.output.with_name(name)
        if (current is None or name != current.name) and stale.is_file() and not stale.is_symlink():
            stale.unlink()

    def save(self) -> None:
        assert self.manifest is not None
        write_file_atomically(self.manifest_path, self.manifest.to_json(), overwrite=True, flag="manifest")

    def record(self, segment: int, *, first: int, stop: int, path: Path, pts_offset: int) -> None:
        """A segment is finished and closed at `path` (inside the folder): note it, atomically."""
        assert self.manifest is not None
        entry = {"first": first, "stop": stop, "file": path.name, "sha256": file_sha256(path), "pts_offset": pts_offset}
        with self._lock:
            self.manifest.segments[segment] = entry
            self.save()

    def record_partial(self, segment: int, *, pts_offset: int) -> None:
        """A stopped encoder's partial segment (not finished: a resume makes it again)."""
        assert self.manifest is not None
        with self._lock:
            self.manifest.partials[segment] = pts_offset
            self.save()

    def record_partial_output(self, path: Path | None) -> None:
        """The joined output, noted (size, time, inode: a rename keeps them) before it is renamed to
        the output name, so the `--resume` that finishes the job may replace that file, and only it,
        even after a stop between the rename and this folder's removal. None: forget it (a finished
        job whose parts are kept: its output is replaced only with --overwrite)."""
        assert self.manifest is not None
        identity = file_identity(path) if path is not None else None
        with self._lock:
            self.manifest.partial_output = identity
            self.save()

    @staticmethod
    def partial_output_of(output: Path) -> Path | None:
        """Where the partial output a stopped run of `output` left is, unchanged since (its work
        folder's manifest notes it): at the output name, or beside it as `<stem>.partial<suffix>`
        (`<stem>.partial-N<suffix>`) where an earlier output was kept. None: there is none."""
        manifest_path = work_folder(output) / "manifest.json"
        try:
            recorded = Manifest.from_json(manifest_path.read_bytes()).partial_output
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not recorded:
            return None
        names = partial_names(output)
        try:
            beside = sorted(p for p in output.parent.iterdir() if names.fullmatch(p.name))
        except OSError:
            beside = []
        for path in [output, *beside]:
            if not path.is_symlink() and file_identity(path) == recorded:
                return path
        return None

    @staticmethod
    def holds_partial_output_of(output: Path) -> bool:
        """Whether `output` is exactly the partial output a stopped run of it left."""
        return PartsFolder.partial_output_of(output) == output

    def remove(self) -> None:
        """The job is done (or left nothing to resume): framepipe's files go, and the folder with
        them unless something else was put in it during the run (then it stays, with a warning)."""
        try:
            self._empty()
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:  # ENOTEMPTY: someone put a file in it
            log.warning("The work folder %s was left in place (%s); framepipe removed only its own files from it",
                        self.path, exc.strerror or exc)

    def remove_if_empty(self) -> None:
        """A run that ends with no finished segment leaves no work folder behind (nothing in
        it to resume from), unless it resumed an earlier run: that run's folder records the
        partial output it left, which the next --resume replaces (removed, a --resume stopped
        before its first frame left the job impossible to finish: "already exists")."""
        if self.manifest is not None and not self.resumable:
            self.remove()

    @property
    def resumable(self) -> bool:
        """Whether the folder stays for a --resume: it holds finished segments, or an earlier
        run's record (`remove_if_empty`)."""
        return self.manifest is not None and (bool(self.finished()) or self.taken_over)

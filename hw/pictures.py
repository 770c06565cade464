"""Image sequences: a folder, a glob or a printf pattern of pictures in; pictures out.

    --source scans/                  every picture in the folder, in number order
    --source 'shots/*.tif'           a glob
    --source scan_%06d.png           a printf pattern (numbers from the files that exist)
    --output up/                     pictures out (a folder: the source's names, or
    --output up/frame_%06d.png       a pattern: the source's numbers)

Reading goes through PyAV, i.e. FFmpeg's own image decoders (PNG, TIFF, JPEG, BMP, WebP,
DPX), the library framepipe already uses for video: 8- and 16-bit, gray, RGB, RGBA and
palette pictures all decode to one RGB form (deeper than 8 bits, float TIFF included: at 16).
Writing goes through OpenCV (libpng, libtiff): 8/16-bit RGB(A) PNG and TIFF (Pillow writes
no 16-bit RGB), and, unlike PyAV's encoder (measured: 2 threads encoding 1080p 16-bit PNGs
took as long as 1), it releases the GIL while it compresses, so the picture writer
compresses several pictures at once on threads (pipeline/writer.py). OpenEXR is refused: it
holds scene-linear light above 1.0, and the models here are trained on display-referred
pictures in 0..1; clipping it would silently lose highlights.

- Order and numbering: a pattern says where the number is; in a folder or a glob it is the
  last run of digits in which every name follows one template (`render_#_1080p.png`), and
  pictures sort by number (names without any digits: by name).
  Gaps are allowed and reported once (missing numbers); two pictures with one number are
  refused. Timing: picture k is shown at k/fps (`--fps`, default 24).
- Alpha: the colour channels go through the model; the alpha channel is upscaled with
  bicubic (a model trained on colour would invent edges in a matte) and written to RGBA
  pictures. Video output has no alpha: it is dropped, with a note.
- Gray: gray pictures (and a gray video's frames) go through the model as RGB and are written
  gray (`is_gray`), as Real-ESRGAN's script does; video output is always colour.
- Sizes: written as pictures, each picture keeps its own size (as Real-ESRGAN's script does:
  the workers batch pictures of one size, pipeline.worker); into a video, or through a
  temporal model, a picture of another size than the first is scaled to the first's (bicubic),
  with one warning, as a video whose size changes is.
- Orientation: a picture is read as it is shown: its EXIF/TIFF orientation (FFmpeg's display
  matrix) turns its pixels, since the pictures written carry none; so do a rotated video's
  frames written as pictures (PictureWriter).
- One picture: `--source photo.jpg` is a sequence of one (an animated PNG or GIF is a video); it may
  go to one named .png/.tif/.tiff file (`PictureTarget.file_name`).
- Animated pictures among pictures (an animated WebP, an APNG or a GIF named as a picture) are not
  taken, said as such (`AnimatedPicture`): FFmpeg's WebP decoder takes no animation ("Invalid
  data"), and an APNG or GIF gave its first picture alone.
- Writing: each picture through a temporary file and a rename (`core.files`), so a picture
  on disk is always whole; `--resume` leaves every existing picture and processes the rest.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from core.choices import CONTAINER_SUFFIXES, PICTURE_FORMATS
from core.errors import AnimatedPicture, DamagedPicture, InvalidOption, InvalidSource
from core.files import ffmpeg_path
from core.frame import Frame
from hw.av_source import SIDE_DATA_UNSAFE_CODECS, display_matrix, png_has_profile

__all__ = ["PICTURE_SUFFIXES", "PictureSequence", "PictureSource", "PictureTarget", "encode_picture",
           "find_pictures", "icc_profile", "profile_fits", "orientation", "picture_target", "parse_fps", "upright",
           "unusable_pictures", "describe_unusable"]

log = logging.getLogger(__name__)

PICTURE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".webp", ".dpx")
_REFUSED = {".exr": "OpenEXR holds scene-linear light above 1.0, which these models (trained on display-referred "
                    "pictures) would clip; convert it to 16-bit TIFF or PNG with your colour pipeline first"}
_SYSTEM_FILES = ("thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r")  # Windows' and macOS's own, never shown
_PATTERN = re.compile(r"%(0?\d*)d")
_ALPHA_FORMATS = ("rgba", "bgra", "argb", "abgr", "ya8", "ya16", "rgba64", "bgra64", "gbrap", "yuva")


def parse_fps(text: str | None) -> Fraction | None:
    """'24', '23.976', '24000/1001' -> Fraction; InvalidOption on anything else (None: None)."""
    if text is None:
        return None
    try:
        fps = Fraction(str(text).strip())
    except (ValueError, ZeroDivisionError):
        fps = None
    if fps is None or not 0 < fps <= 1000:
        raise InvalidOption(f"Invalid --fps ({text!r}): give frames per second, e.g. 24, 23.976 or 24000/1001.")
    if fps.denominator > 1001:  # a decimal such as 23.976: the rational broadcast rate it stands for
        fps = fps.limit_denominator(1001)
    if fps < Fraction(1, 1000):
        raise InvalidOption(f"Invalid --fps ({text!r}): at least 0.001 frames per second (one picture every 1000 s).")
    return fps


@dataclass(frozen=True)
class PictureSequence:
    """The pictures of a sequence in order, each with its number (None when names have none)."""

    spec: str
    paths: tuple[Path, ...]
    numbers: tuple[int | None, ...]
    template: str  # e.g. "scan_#.png"
    # Files of a folder source that are not pictures read here (notes.txt, anim.gif, a video, an
    # OpenEXR), in name order; hidden files (.DS_Store) and a file manager's own (Thumbs.db) are not named
    left_out: tuple[str, ...] = ()

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """Missing number ranges (first, last) between the first and last picture."""
        nums = [n for n in self.numbers if n is not None]
        return [(a + 1, b - 1) for a, b in zip(nums, nums[1:]) if b - a > 1]

    def describe_gaps(self, limit: int = 5) -> str:
        gaps = self.gaps
        missing = sum(b - a + 1 for a, b in gaps)
        shown = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in gaps[:limit])
        more = f" and {len(gaps) - limit} more gap(s)" if len(gaps) > limit else ""
        return f"{missing} number(s) missing: {shown}{more}"

    def describe_left_out(self, limit: int = 3) -> str:
        """'2 file(s) in the folder are not pictures and were left out: anim.gif, notes.txt'."""
        shown = ", ".join(self.left_out[:limit])
        more = f" and {len(self.left_out) - limit} more" if len(self.left_out) > limit else ""
        return (f"{len(self.left_out)} file(s) in the folder are not pictures framepipe reads "
                f"({', '.join(s[1:] for s in PICTURE_SUFFIXES)}) and were left out: {shown}{more}")

    def fingerprint(self, *, by_name: bool = False) -> dict[str, object]:
        """Enough to tell this sequence from another for --resume: count, names, and a hash of
        the first and last pictures' bytes. `by_name`: output pictures are named after their own
        source pictures, so only the first picture (name and hash) and the numbering count:
        pictures may have been taken out (a damaged one) or put in since."""
        if by_name:
            return {"first": self.paths[0].name, "template": self.template,
                    "sha256_first": hashlib.sha256(self.paths[0].read_bytes()).hexdigest()}
        digest = hashlib.sha256()
        for path in (self.paths[0], self.paths[-1]):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        return {"pictures": len(self.paths), "first": self.paths[0].name, "last": self.paths[-1].name,
                "sha256_first_last": digest.hexdigest()}


def _is_pattern(spec: str) -> bool:
    return bool(_PATTERN.search(os.path.basename(spec)))


def find_pictures(spec: str | os.PathLike) -> PictureSequence | None:
    """The picture sequence `spec` names (a folder, a glob, a printf pattern), or None when it
    names something else (a video file). InvalidSource, one line, when it names no pictures.

    An existing file is always that file (a video may have `%d` or `[x]` in its name): one
    still picture is a sequence of one (read as pictures are: its depth, alpha and name kept),
    anything else a video (an animated PNG too). Only a name with a picture suffix is read as
    a pattern or a glob: a missing video is then reported as missing, not as an empty glob."""
    text = os.fspath(spec)
    suffix = Path(text).suffix.lower()
    if os.path.isfile(text):
        if suffix in _REFUSED:
            raise InvalidSource(f"Source {text!r}: {_REFUSED[suffix]}.")
        if suffix in PICTURE_SUFFIXES and _is_still_picture(Path(text)):
            return _ordered(text, [Path(text)])
        return None
    if os.path.isdir(text):
        # Listed once, not recursed into: an entry is a picture when it is (or links to) a
        # regular file; a link to a folder, a link loop or an entry that cannot be read is left out.
        with os.scandir(text) as listing:
            entries = [(Path(e.path), _is_regular_file(e)) for e in listing]
        candidates = [p for p, regular in entries
                      if regular and p.suffix.lower() in PICTURE_SUFFIXES and not p.name.startswith(".")]
        refused = [p for p, _ in entries if p.suffix.lower() in _REFUSED]
        if not candidates:
            why = f" ({_REFUSED[refused[0].suffix.lower()]})" if refused else ""
            raise InvalidSource(f"Source folder {text!r} holds no pictures ({', '.join(s[1:] for s in PICTURE_SUFFIXES)}){why} "
                                "and no videos.")
        # The other files are named, once, by the plan (they were left out without a word): hidden
        # ones and a file manager's own are not, as `ls` and a file browser do not show them
        others = sorted((p.name for p, regular in entries if regular and p.suffix.lower() not in PICTURE_SUFFIXES
                         and not p.name.startswith(".") and p.name.casefold() not in _SYSTEM_FILES), key=natural_key)
        return replace(_ordered(text, candidates), left_out=tuple(others))
    if suffix in _REFUSED and (_is_pattern(text) or glob.has_magic(text)):
        raise InvalidSource(f"Source {text!r}: {_REFUSED[suffix]}.")
    if suffix not in PICTURE_SUFFIXES:
        return None
    if _is_pattern(text):
        folder = Path(os.path.dirname(text) or ".")
        name = os.path.basename(text)
        match = _PATTERN.search(name)
        width = match.group(1)
        digits = rf"\d{{{int(width)}}}" if width.startswith("0") and width[1:] else r"\d+"
        regex = re.compile(re.escape(name[: match.start()]) + f"({digits})" + re.escape(name[match.end():]) + "$")
        found = []
        for path in (folder.iterdir() if folder.is_dir() else ()):
            hit = regex.match(path.name)
            if hit and path.is_file():
                found.append((path, int(hit.group(1))))  # the pattern says where the number is
        if not found:
            raise InvalidSource(f"Source pattern {text!r}: no file in {str(folder)!r} matches it.")
        template = name[: match.start()] + "#" + name[match.end():]
        return _sequence(text, [(n, p.name, p) for p, n in found], template)
    if glob.has_magic(text):
        found = [Path(p) for p in glob.glob(text) if Path(p).suffix.lower() in PICTURE_SUFFIXES and os.path.isfile(p)]
        if not found:
            raise InvalidSource(f"Source {text!r}: no picture ({', '.join(s[1:] for s in PICTURE_SUFFIXES)}) matches it.")
        return _ordered(text, found)
    return None


def _is_still_picture(path: Path) -> bool:
    """Whether FFmpeg reads the file with an image demuxer (one picture), not as a video (an
    animated PNG or WebP); a file it cannot open counts as a picture, so that the picture
    reader names what is wrong with it."""
    import av

    try:
        with av.open(ffmpeg_path(path)) as container:
            return container.format.name.endswith("_pipe") or container.format.name == "image2"
    except (av.error.FFmpegError, OSError):
        return True


def _is_regular_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()  # follows a link; False for a folder, a loop or a dangling link
    except OSError:  # e.g. a link into a folder this user may not read
        return False


def _numbering(names: list[str]) -> tuple[int, str] | None:
    """Which run of digits numbers the pictures: counted from the end of the name (0 = the
    last run), the first position at which every name follows one template; None if none."""
    runs = [list(re.finditer(r"\d+", name)) for name in names]
    for k in range(max((len(r) for r in runs), default=0)):
        templates = set()
        for name, found in zip(names, runs):
            if len(found) <= k:
                break
            m = found[-1 - k]
            templates.add(name[: m.start()] + "#" + name[m.end():])
        else:
            if len(templates) == 1:
                return k, templates.pop()
    return None


def _ordered(spec: str, paths: list[Path]) -> PictureSequence:
    names = [p.name for p in paths]
    if not any(re.search(r"\d", name) for name in names):  # no numbers at all: by name
        return _sequence(spec, [(None, p.name, p) for p in paths], "(by name)")
    numbering = _numbering(names)
    if numbering is None:  # no one run of digits numbers them all (IMG_20230101_101500.jpg, DSC_0001.JPG and
        # DSC_0002.jpg): a camera's or phone's folder, taken in natural name order, its names kept
        return _sequence(spec, [(None, p.name, p) for p in paths], "(by name)")
    k, template = numbering
    keyed = [(int(list(re.finditer(r"\d+", p.name))[-1 - k].group()), p.name, p) for p in paths]
    return _sequence(spec, keyed, template)


def natural_key(name: str) -> tuple:
    """A sort key that orders the numbers in a name by value (shot_9 before shot_10), letters
    without regard to case."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.casefold()) for part in re.split(r"(\d+)", name))


def _sequence(spec: str, keyed: list[tuple[int | None, str, Path]], template: str) -> PictureSequence:
    keyed.sort(key=lambda item: (item[0] if item[0] is not None else -1, natural_key(item[1])))
    numbers = [n for n, _, _ in keyed]
    twice = sorted({n for n in numbers if n is not None and numbers.count(n) > 1})
    if twice:
        names = [name for n, name, _ in keyed if n == twice[0]]
        raise InvalidSource(f"Source {spec!r}: {' and '.join(names)} have the same number ({twice[0]}); "
                            "rename one of them.")
    return PictureSequence(spec=spec, paths=tuple(p for _, _, p in keyed), numbers=tuple(numbers), template=template)


@dataclass(frozen=True)
class PictureInfo:
    width: int
    height: int
    codec: str
    pix_fmt: str
    bit_depth: int  # 8 or 16: what the pictures are decoded to
    has_alpha: bool
    gray: bool = False  # gray without alpha: written gray (`is_gray`)


def _animated_message(path: Path, kind: str) -> str:
    if kind == "WebP" and _is_still_picture(path):  # FFmpeg before 8 takes no WebP animation: "Invalid data"
        how = f"FFmpeg cannot decode animated WebP; ImageMagick can: magick {path.name} -coalesce {path.stem}_%03d.png"
    else:  # an APNG or GIF, or a WebP FFmpeg 8 (PyAV 19) reads as a video
        how = f"alone, --source {path.name} reads it as a video"
    return (f"Picture {str(path)!r} is an animated {kind}: animated pictures are not taken. Convert it to single "
            f"pictures or a video first ({how}).")


def _animated_webp(path: Path) -> bool:
    """Whether a WebP file says it is animated: the VP8X chunk's animation flag, or an ANIM chunk
    (the WebP container specification)."""
    try:
        with open(path, "rb") as f:
            head = f.read(21)
            if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
                return False
            return head[12:16] == b"VP8X" and len(head) == 21 and bool(head[20] & 0x02) or head[12:16] == b"ANIM"
    except OSError:
        return False


def _decode_one(path: Path):
    """The first picture of `path` and its codec's name. InvalidSource, one line, where it cannot
    be read; AnimatedPicture where it holds several (FFmpeg reads an APNG or a GIF as a video and
    gave its first picture alone; an animated WebP it failed as "Invalid data")."""
    import av

    if _animated_webp(path):
        raise AnimatedPicture(_animated_message(path, "WebP"), "WebP")
    try:
        with av.open(ffmpeg_path(path)) as container:
            animated = {"apng": "PNG (APNG)", "gif": "GIF"}.get(container.format.name)
            frames = container.decode(video=0)
            for frame in frames:
                if animated is not None and next(frames, None) is not None:
                    raise AnimatedPicture(_animated_message(path, animated), animated)
                return frame, container.streams.video[0].codec_context.name
    except (av.error.FFmpegError, OSError, IndexError) as exc:
        raise InvalidSource(f"Picture {str(path)!r} cannot be read: {getattr(exc, 'strerror', None) or exc}.") from None
    raise InvalidSource(f"Picture {str(path)!r} holds no picture FFmpeg can decode.")


def unusable_pictures(seq: PictureSequence) -> list[tuple[Path, str]]:
    """The pictures of `seq` found unusable without decoding them all, each with why ("is empty (0
    bytes)", "is an animated WebP", "is cut short ..."): their headers are read (a few small reads
    each), and only a suspect is decoded, so a picture FFmpeg reads is never refused. Found one per
    run before, as the reader met each (walkthrough defect 3)."""
    found = []
    for path in seq.paths:
        why = _header_problem(path)
        if why is None or why.startswith("is empty"):
            if why is not None:
                found.append((path, why))
            continue
        try:
            _decode_one(path)
        except AnimatedPicture as exc:
            found.append((path, f"is an animated {exc.kind}"))
        except InvalidSource:
            found.append((path, why))
    return found


def describe_unusable(spec: str, found: list[tuple[Path, str]], num_pictures: int, limit: int = 5) -> str:
    """One line for `unusable_pictures`' findings."""
    if len(found) == 1 and found[0][1].startswith("is an animated"):
        path, why = found[0]
        return _animated_message(path, why.removeprefix("is an animated "))
    shown = "; ".join(f"{path.name} {why}" for path, why in found[:limit])
    more = f"; and {len(found) - limit} more" if len(found) > limit else ""
    animated = " (animated pictures are not taken: convert them to single pictures or a video)" if any(
        why.startswith("is an animated") for _, why in found) else ""
    return (f"Source {spec!r}: {len(found)} of {num_pictures} picture(s) cannot be used: {shown}{more}. Move or "
            f"repair them first{animated}; nothing was processed.")


_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\0": "TIFF", b"MM\0*": "TIFF",
               b"II+\0": "TIFF", b"MM\0+": "TIFF", b"BM": "BMP", b"SDPX": "DPX", b"XPDS": "DPX", b"GIF87a": "GIF",
               b"GIF89a": "GIF"}


def _header_problem(path: Path) -> str | None:
    """Why `path` looks unusable from its size and headers alone (None: it looks whole). Suspects
    only: `unusable_pictures` decodes each before it is named."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "is empty (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(64)
            kind = next((k for sig, k in _SIGNATURES.items() if head.startswith(sig)), None)
            if kind is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                kind = "WebP"
            if kind is None:
                return "is no picture (its first bytes are no PNG, JPEG, TIFF, BMP, WebP or DPX header)"
            if kind == "PNG":
                return _png_problem(f, size)
            if kind == "JPEG":
                return _jpeg_problem(f)
            if kind == "TIFF" and head[2:4] in (b"*\0", b"\0*"):
                order = "<" if head[:2] == b"II" else ">"
                if len(head) < 8 or struct.unpack(order + "I", head[4:8])[0] + 2 > size:
                    return "is cut short (its TIFF directory is past its end)"
            if kind == "BMP" and (len(head) < 14 or struct.unpack("<I", head[10:14])[0] > size):
                return "is cut short (its BMP pixels start past its end)"
            if kind == "DPX" and (len(head) < 8 or struct.unpack("<I" if head[:4] == b"XPDS" else ">I", head[4:8])[0] > size):
                return "is cut short (its DPX pixels start past its end)"
            if kind == "WebP" and _animated_webp(path):
                return "is an animated WebP"
            if kind == "GIF":
                return "is a GIF that cannot be read"  # (named as a picture: animated or not, a decode tells)
    except (OSError, struct.error) as exc:
        return f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    return None


def _png_chunks(f) -> Iterator[tuple[bytes, int, int]]:
    """A PNG's chunks walked by their lengths (8 bytes read per chunk): (type, its data's length,
    where its data starts), in order, until the file ends; `f` is at the data when each is given."""
    at = 8
    while len(header := _read_at(f, at, 8)) == 8:
        length, kind = struct.unpack(">I4s", header)
        yield kind, length, at + 8
        at += 12 + length


def _read_at(f, at: int, size: int) -> bytes:
    f.seek(at)
    return f.read(size)


def _png_problem(f, size: int) -> str | None:
    """A PNG's chunks: IHDR first, every chunk within the file, an acTL of more than one frame (an APNG)."""
    first = True
    for kind, length, data_at in _png_chunks(f):
        if first and kind != b"IHDR":
            return "is damaged (no PNG header, IHDR)"
        first = False
        if data_at + length + 4 > size:
            return f"is cut short (its PNG {kind.decode('latin-1')} data runs past its end)"
        if kind == b"acTL" and length >= 4 and struct.unpack(">I", f.read(4))[0] > 1:
            return "is an animated PNG (APNG)"
        if kind == b"IEND":
            return None
    return "is damaged (no PNG header, IHDR)" if first else "is cut short (no PNG end, IEND)"


_JPEG_ENDED, _JPEG_BROKEN = -1, -2  # `_jpeg_segments`: the file ended, a marker is broken


def _jpeg_segments(f) -> Iterator[tuple[int, int]]:
    """A JPEG's marker segments up to its first scan (4 bytes read per segment), fill bytes passed
    over: (marker, its body's length), `f` at the body when each is given; the last is the scan
    (0xDA) or the end (0xD9) where the headers are whole, else _JPEG_ENDED or _JPEG_BROKEN."""
    at = 2
    for _ in range(10000):
        marker = _read_at(f, at, 4)
        if len(marker) < 4:
            yield _JPEG_ENDED, 0
            return
        if marker[0] != 0xFF:
            yield _JPEG_BROKEN, 0
            return
        if marker[1] == 0xFF:  # a fill byte
            at += 1
            continue
        length = struct.unpack(">H", marker[2:])[0]
        yield marker[1], length - 2
        if marker[1] in (0xDA, 0xD9):
            return
        at += 2 + length


def _jpeg_problem(f) -> str | None:
    """A JPEG's headers (`_jpeg_segments`): a frame header (SOF) before its first scan, the file not
    ending before it."""
    seen_frame = False
    for kind, _ in _jpeg_segments(f):
        if kind == _JPEG_ENDED:
            return "is cut short (it ends before its JPEG picture data)"
        if kind == _JPEG_BROKEN:
            return "is damaged (its JPEG headers are broken)"
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
            seen_frame = True
        if kind == 0xDA:
            return None if seen_frame else "is damaged (no JPEG frame header before its data)"
        if kind == 0xD9:
            return "is damaged (it ends before its JPEG picture data)"
    return None


def _truncated_jpeg(path: Path) -> bool:
    """Whether a JPEG file lacks its end marker (FF D9) in its last bytes: cut short (a copy that
    stopped, a disk that filled), which FFmpeg decodes without an error, the rest of the picture
    made up (PIL refuses it: "image file is truncated")."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            return b"\xff\xd9" not in f.read()
    except OSError:
        return False


def is_gray(pix_fmt: str) -> bool:
    """A gray picture format without alpha (gray, gray16le, gray10le, grayf32le, monob...): such
    pictures are written gray, as Real-ESRGAN's script writes a gray input (a scanned page, a
    manga): the model sees RGB, its output is turned back to one channel (ITU-R BT.601 weights,
    OpenCV's). Gray with alpha (ya8, ya16) is written RGBA: OpenCV writes no gray+alpha."""
    return pix_fmt.startswith(("gray", "mono"))


def _picture_kind(frame, codec: str) -> tuple[int, bool, bool]:
    """(bit depth 8/16, has alpha, gray) of a decoded picture. 16 bits for any component deeper
    than 8 (10/12/14/16-bit, half and single float; a 16-bit Bayer format says 4/8/4 bits: its
    name tells). A palette picture has alpha when one of its pixels is not opaque (PNG's tRNS),
    and so has a WebP (FFmpeg decodes every lossless WebP to ARGB, transparent or not); a JPEG
    never has (FFmpeg decodes a CMYK JPEG to RGB with an opaque fourth plane)."""
    fmt = frame.format
    deep = max(c.bits for c in fmt.components) > 8 or (fmt.is_bayer and "16" in fmt.name)
    alpha = fmt.name.startswith(_ALPHA_FORMATS) and codec != "mjpeg"
    if fmt.name == "pal8" or (alpha and codec == "webp"):
        alpha = bool((frame.reformat(format="rgba").to_ndarray()[..., 3] < 255).any())
    return (16 if deep else 8), alpha, is_gray(fmt.name)


def orientation(matrix: tuple[int, ...] | None) -> tuple[bool, bool, bool]:
    """(transpose, flip left-right, flip up-down), in that order, that show a picture upright
    by its display matrix (None: as it is). FFmpeg turns EXIF/TIFF orientation into one, a
    phone video has one; viewers, browsers and ffmpeg itself apply it, and pictures written
    without it must be turned in their pixels. The signs of the matrix's 2x2 part name the
    eight orientations (checked against Pillow's exif_transpose); other angles are left."""
    a, b, _, c, d = matrix[:5] if matrix is not None else (1, 0, 0, 0, 1)
    if a == 0 and d == 0:
        return True, c < 0, b < 0
    if b == 0 and c == 0:
        return False, a < 0, d < 0
    return False, False, False


def upright(array: np.ndarray, turn: tuple[bool, bool, bool]) -> np.ndarray:
    """`array` (H, W[, C]) turned by `turn` (`orientation`'s); a view."""
    transpose, flip_lr, flip_ud = turn
    if transpose:
        array = array.swapaxes(0, 1)
    if flip_lr:
        array = array[:, ::-1]
    if flip_ud:
        array = array[::-1]
    return array


def _matrix(frame, codec: str, path: Path) -> tuple[int, ...] | None:
    """The picture's orientation as a display matrix; for a PNG with an ICC profile, from its
    rotation only (hw.av_source.SIDE_DATA_UNSAFE_CODECS: PyAV 18 crashes reading its side data)."""
    return display_matrix(frame, safe=codec not in SIDE_DATA_UNSAFE_CODECS or not png_has_profile(path))


def probe_pictures(seq: PictureSequence) -> PictureInfo:
    """What the first picture is; its size as it is shown (turned by its orientation)."""
    frame, codec = _decode_one(seq.paths[0])
    depth, alpha, gray = _picture_kind(frame, codec)
    width, height = (frame.height, frame.width) if orientation(_matrix(frame, codec, seq.paths[0]))[0] else (frame.width, frame.height)
    return PictureInfo(width=width, height=height, codec=codec, pix_fmt=frame.format.name, bit_depth=depth,
                       has_alpha=alpha, gray=gray)


class PictureSource:
    """Frame source over a picture sequence: `Frame`s of fmt rgb24 (8-bit) or rgb48 (16-bit),
    planes (rgb,) or (rgb, alpha), picture k at pts k (time base 1/fps)."""

    num_corrupt_packets = 0
    stopped_early_reason: str | None = None
    failure: Exception | None = None  # a picture after the first that could not be read: the sequence ended there

    def __init__(self, seq: PictureSequence, info: PictureInfo, *, warn: Callable[[str], None],
                 keep_sizes: bool = False) -> None:
        """`keep_sizes`: each picture at its own size (pictures out, each model call on pictures of
        one size: pipeline.worker); else each scaled to the first's (video out, a temporal model)."""
        self.seq = seq
        self.info = info
        self.warn = warn
        self.keep_sizes = keep_sizes
        self.num_resized = 0
        self.alpha_dropped: list[str] = []  # pictures with transparency in a sequence read without alpha
        self.depth_reduced: list[str] = []  # 16-bit pictures in a sequence read at 8 bits
        self.colour_dropped: list[str] = []  # colour pictures in a sequence written gray (its first is gray)

    def __iter__(self) -> Iterator[Frame]:
        info = self.info
        dtype = np.uint16 if info.bit_depth == 16 else np.uint8
        target = {(8, False): "rgb24", (8, True): "rgba", (16, False): "rgb48le", (16, True): "rgba64le"}[
            (info.bit_depth, info.has_alpha)]
        for index, path in enumerate(self.seq.paths):
            try:
                frame, codec = _decode_one(path)
            except InvalidSource as exc:  # the first was read by the plan: a later one, after pictures were made
                if index == 0:
                    raise
                # The sequence ends here; the pictures before it go through the pipeline (raised, the
                # failure dropped those in flight: on a GPU, a whole batch), then the run fails with it.
                # An animated picture is not damaged: its line says what to do instead.
                self.failure = DamagedPicture(str(exc) if isinstance(exc, AnimatedPicture) else
                                              f"{str(exc).rstrip('.')}: move or repair it first.")
                return
            if codec == "mjpeg" and _truncated_jpeg(path):
                self.warn(f"source: picture {path.name} is truncated (no JPEG end marker): decoded as far as it goes, "
                          "the rest made up")
            turn = orientation(_matrix(frame, codec, path))
            width, height = (info.height, info.width) if turn[0] else (info.width, info.height)
            if self.keep_sizes:
                width, height = frame.width, frame.height
            elif (frame.width, frame.height) != (width, height):
                self.num_resized += 1
            depth, alpha, gray = _picture_kind(frame, codec)
            if alpha and not info.has_alpha:
                self.alpha_dropped.append(path.name)
            if info.gray and not gray:
                self.colour_dropped.append(path.name)
            if depth > info.bit_depth:
                self.depth_reduced.append(path.name)
            # Alpha from a picture without it is opaque; one with alpha in a sequence without is flattened.
            array = frame.reformat(format=target, width=width, height=height,
                                   interpolation="BICUBIC").to_ndarray().astype(dtype, copy=False)
            array = upright(array, turn)
            planes = (np.ascontiguousarray(array[..., :3]), np.ascontiguousarray(array[..., 3])) if info.has_alpha \
                else (np.ascontiguousarray(array),)
            yield Frame(index=index, pts=index, fmt="rgb48" if info.bit_depth == 16 else "rgb24", planes=planes,
                        bit_depth=info.bit_depth)
        if self.alpha_dropped:
            self.warn(f"source: {len(self.alpha_dropped)} picture(s) have transparency the first picture has not "
                      f"(e.g. {self.alpha_dropped[0]}); the sequence is read as the first one is, so their alpha was "
                      "dropped. Process them apart to keep it")
        if self.colour_dropped:
            self.warn(f"source: {len(self.colour_dropped)} picture(s) are in colour in a sequence whose first picture is "
                      f"gray (e.g. {self.colour_dropped[0]}); the sequence is written as the first one is, so they were "
                      "written gray. Process them apart to keep their colour")
        if self.depth_reduced:
            self.warn(f"source: {len(self.depth_reduced)} picture(s) are 16-bit in a sequence whose first picture is 8-bit "
                      f"(e.g. {self.depth_reduced[0]}); they were read at 8 bits")
        if self.num_resized:
            self.warn(f"source: {self.num_resized} picture(s) differ in size from the first ({info.width}x{info.height}); "
                      "they were scaled to it (bicubic) before the model")

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class PictureTarget:
    """Where output pictures go: `folder` and a name for each frame."""

    folder: Path
    pattern: str | None  # "frame_%06d.png" (numbers from the source), or None: the source's names
    suffix: str  # ".png" / ".tif"
    bit_depth: int  # 8 or 16
    file_name: str | None = None  # one picture to one named file (--source photo.jpg --output photo4x.png)

    def name(self, index: int, seq: PictureSequence | None, video_stem: str) -> str:
        """The file name of output frame `index` (the source's k-th picture or video frame)."""
        if self.file_name is not None:
            return self.file_name
        number = index
        known = seq is not None and index < len(seq.paths)  # (a caller may ask past the end: no such picture)
        if known and seq.numbers[index] is not None:
            number = seq.numbers[index]
        if self.pattern is not None:
            return self.pattern % number
        if known:
            return Path(seq.paths[index].name).with_suffix(self.suffix).name
        return f"{video_stem}_{number:06d}{self.suffix}"


def picture_target(output: Path, *, picture_format: str | None, bit_depth: int,
                   one_picture: bool = False) -> PictureTarget | None:
    """The picture output `output` names (a folder: existing, or a name without a suffix; or a
    printf pattern; or, for `one_picture` in, one .png/.tif/.tiff file), or None for a video file."""
    text = os.fspath(output)
    suffix = Path(text).suffix.lower()
    if suffix in CONTAINER_SUFFIXES and not os.path.isdir(text):
        return None  # a video file, whatever its name holds ("take 100%d.mp4")
    if not suffix and os.path.exists(text) and not os.path.isdir(text):  # /dev/null, a FIFO, a file named "out"
        raise InvalidOption(f"Invalid --output ({text!r}): it is neither a folder for pictures nor a video file "
                            "(.mp4, .mkv, .mov). To run the model and keep nothing, use --output-mode none.")
    if _is_pattern(text):
        if suffix not in (".png", ".tif", ".tiff"):
            raise InvalidOption(f"Invalid --output ({text!r}): a picture pattern must end in .png, .tif or .tiff.")
        if picture_format is not None and PICTURE_FORMATS[picture_format] != (".tif" if suffix == ".tiff" else suffix):
            raise InvalidOption(f"--picture-format {picture_format} does not match --output {text!r}. Drop one of them.")
        try:
            _ = os.path.basename(text) % 1
        except (TypeError, ValueError):
            raise InvalidOption(f"Invalid --output ({text!r}): one %d (e.g. %06d) for the number, nothing else with %.") from None
        return PictureTarget(folder=Path(os.path.dirname(text) or "."), pattern=os.path.basename(text), suffix=suffix,
                             bit_depth=bit_depth)
    if (os.path.isdir(text) and suffix not in CONTAINER_SUFFIXES) or not suffix:  # a folder "x.mp4" is a mistake
        return PictureTarget(folder=Path(text), pattern=None, suffix=PICTURE_FORMATS[picture_format or "png"],
                             bit_depth=bit_depth)
    if suffix in PICTURE_SUFFIXES:
        written = suffix if suffix in (".png", ".tif", ".tiff") else ".png"
        why = "" if written == suffix else f"; pictures are written as PNG or TIFF, not {suffix[1:].upper()}"
        if one_picture:  # one picture in, one named picture out
            if written != suffix:
                raise InvalidOption(f"Invalid --output ({text!r}): pictures are written as PNG or TIFF, not "
                                    f"{suffix[1:].upper()}. Use e.g. --output {Path(text).with_suffix('.png')}.")
            if picture_format is not None and PICTURE_FORMATS[picture_format] != (".tif" if suffix == ".tiff" else suffix):
                raise InvalidOption(f"--picture-format {picture_format} does not match --output {text!r}. Drop one of them.")
            return PictureTarget(folder=Path(os.path.dirname(text) or "."), pattern=None, suffix=suffix,
                                 bit_depth=bit_depth, file_name=os.path.basename(text))
        # The pattern suggested must be one this function takes: a .jpg/.webp one is refused above
        # (the line suggested "x_%06d.jpg", which the next run refused)
        raise InvalidOption(f"Invalid --output ({text!r}): for pictures give a folder (e.g. {Path(text).stem}/) or a "
                            f"pattern (e.g. {Path(text).stem}_%06d{written}){why}; a named picture file takes one "
                            "picture file in.")
    return None


def encode_picture(rgb: np.ndarray, alpha: np.ndarray | None, suffix: str, *, gray: bool = False,
                   icc: bytes | None = None) -> bytes:
    """One picture file's bytes: PNG or TIFF (`suffix`), 8-bit (uint8 planes) or 16-bit (uint16),
    RGB or RGBA, or with `gray` (and no alpha) one gray channel (`is_gray`), through OpenCV's
    encoders, which release the GIL while compressing. `icc`: an ICC profile to embed (one that
    `profile_fits` the picture), as PNG's iCCP chunk or TIFF's InterColorProfile tag: OpenCV
    writes none, so it is put into the bytes OpenCV made.

    PNG at zlib level 6 and TIFF with Adobe Deflate: the sizes FFmpeg's encoders wrote before
    (within 0.2 %, 2048x2048 8/16-bit photographs), at the same single-thread speed."""
    import cv2

    if rgb.dtype not in (np.uint8, np.uint16) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise TypeError(f"encode_picture takes (H, W, 3) uint8 or uint16 RGB, got {rgb.dtype} {rgb.shape}")
    if alpha is None and gray:
        bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    elif alpha is None:
        bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    else:
        bgr = cv2.cvtColor(np.ascontiguousarray(np.concatenate([rgb, alpha[..., None]], axis=2)), cv2.COLOR_RGBA2BGRA)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 6] if suffix == ".png" else [cv2.IMWRITE_TIFF_COMPRESSION, 8]  # 8: deflate
    ok, data = cv2.imencode(".png" if suffix == ".png" else ".tif", bgr, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {rgb.shape[1]}x{rgb.shape[0]} {rgb.dtype} picture as {suffix}")
    data = data.tobytes()
    if suffix == ".png":
        return _png_with_profile(data, icc) if icc else data
    tags: dict[int, tuple[int, tuple[int, ...] | bytes]] = {}
    if alpha is not None:
        # OpenCV's TIFF has 4 samples and no ExtraSamples tag: libtiff then warns and calls the
        # fourth "unspecified", and programs that go by the tag (Photoshop, GIMP, ImageMagick)
        # drop or premultiply it. Say what it is: unassociated (straight) alpha, as made here.
        tags[_TIFF_EXTRA_SAMPLES] = (_TIFF_SHORT, (_UNASSOCIATED_ALPHA,))
    if icc:
        tags[_TIFF_ICC_PROFILE] = (_TIFF_UNDEFINED, icc)
    return _tiff_with_tags(data, tags) if tags else data


def profile_fits(icc: bytes, *, gray: bool) -> bool:
    """Whether an ICC profile describes the pictures written: its data colour space (header bytes
    16-19) is RGB for RGB(A) pictures, GRAY for gray ones. A CMYK JPEG's profile does not describe
    the RGB FFmpeg decodes it to, nor an RGB profile a picture written gray."""
    return len(icc) >= 128 and icc[16:20] == (b"GRAY" if gray else b"RGB ")


def _png_with_profile(data: bytes, icc: bytes) -> bytes:
    """PNG bytes with an iCCP chunk (the profile deflated) right after IHDR, where PNG wants it:
    before the pixels. OpenCV writes no sRGB or gAMA chunk that it would contradict."""
    import zlib

    body = b"ICC Profile\0\0" + zlib.compress(icc)
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    end_of_ihdr = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4  # signature, then IHDR's length, type, data, CRC
    return data[:end_of_ihdr] + chunk + data[end_of_ihdr:]


def icc_profile(path: Path) -> bytes | None:
    """The ICC colour profile a PNG (iCCP), JPEG (APP2 ICC_PROFILE segments), TIFF (tag 34675) or
    WebP (ICCP chunk) file carries, read from its own bytes (PyAV 18 crashes reading a PNG's, see
    hw.av_source.png_has_profile); None where it has none or it cannot be read. A profile is
    small (a few kB, rarely over a MB), and only the headers before it are read."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            f.seek(0)
            if head.startswith(b"\x89PNG\r\n\x1a\n"):
                return _png_profile(f)
            if head.startswith(b"\xff\xd8"):
                return _jpeg_profile(f)
            if head[:4] in (b"II*\0", b"MM\0*"):
                return _tiff_profile(f)
            if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                return _webp_profile(f)
    except (OSError, ValueError, struct.error, IndexError) as exc:
        log.debug("no colour profile read from %s: %s", path, exc)
    return None


def _png_profile(f) -> bytes | None:
    import zlib

    for kind, length, _ in _png_chunks(f):
        if kind == b"iCCP":
            body = f.read(length)
            compressed = body[body.index(b"\0") + 2:]  # name, its NUL, the compression method (0: deflate)
            return zlib.decompress(compressed)
        if kind in (b"IDAT", b"IEND"):
            return None
    return None


def _jpeg_profile(f) -> bytes | None:
    """The APP2 "ICC_PROFILE" segments, joined in their sequence numbers' order."""
    parts: dict[int, bytes] = {}
    for kind, length in _jpeg_segments(f):
        if kind == 0xE2:
            body = f.read(length)
            if body.startswith(b"ICC_PROFILE\0"):
                parts[body[12]] = body[14:]
    return b"".join(parts[k] for k in sorted(parts)) or None


def _tiff_profile(f) -> bytes | None:
    """The first IFD's InterColorProfile: the header, the IFD's entries and the profile are read
    (the whole file was read before, a 16-bit scan's hundreds of MB for a profile of a few kB)."""
    head = _read_at(f, 0, 8)
    order = "<" if head[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", head[4:8])
    (num_entries,) = struct.unpack(order + "H", _read_at(f, ifd, 2))
    entries = _read_at(f, ifd + 2, 12 * num_entries)
    for at in range(0, 12 * num_entries, 12):
        tag, _, count, offset = struct.unpack(order + "HHII", entries[at:at + 12])
        if tag == _TIFF_ICC_PROFILE:
            return _read_at(f, offset, count) if count > 4 else entries[at + 8:at + 8 + count]
    return None


def _webp_profile(f) -> bytes | None:
    f.seek(12)
    while len(header := f.read(8)) == 8:
        kind, length = struct.unpack("<4sI", header)
        if kind == b"ICCP":
            return f.read(length)
        if kind in (b"VP8 ", b"VP8L", b"ANMF"):  # the pixels: a profile comes before them
            return None
        f.seek(length + (length & 1), os.SEEK_CUR)
    return None


_TIFF_SHORT, _TIFF_UNDEFINED = 3, 7  # TIFF 6.0 field types
_TIFF_EXTRA_SAMPLES = 338
_TIFF_ICC_PROFILE = 34675  # InterColorProfile
_UNASSOCIATED_ALPHA = 2  # ExtraSamples value: straight alpha (1 would be premultiplied)


def _tiff_with_tags(data: bytes, tags: dict[int, tuple[int, tuple[int, ...] | bytes]]) -> bytes:
    """A classic TIFF's bytes with `tags` (tag -> (field type, SHORT values or UNDEFINED bytes)) set
    in its first IFD: a new IFD, the old entries and these sorted by tag as TIFF requires, is
    appended with the values that do not fit in an entry, and the header points at it; the old
    IFD stays behind unreferenced (a few dozen bytes), and every offset in the file still holds."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or struct.unpack(order + "H", data[2:4])[0] != 42:
        raise RuntimeError("OpenCV wrote a TIFF this writer cannot tag (not a classic TIFF)")
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (num_entries,) = struct.unpack(order + "H", data[ifd:ifd + 2])
    entries = {struct.unpack(order + "H", data[at:at + 2])[0]: data[at:at + 12]
               for at in range(ifd + 2, ifd + 2 + 12 * num_entries, 12)}
    next_ifd = data[ifd + 2 + 12 * num_entries:ifd + 6 + 12 * num_entries]
    out = bytearray(data)
    for tag, (kind, values) in tags.items():
        value = struct.pack(order + "H" * len(values), *values) if kind == _TIFF_SHORT else bytes(values)
        count = len(values)
        if len(value) <= 4:
            field = value.ljust(4, b"\0")
        else:
            out += b"\0" * (len(out) % 2)  # values start on a word boundary
            field = struct.pack(order + "I", len(out))
            out += value
        entries[tag] = struct.pack(order + "HHI", tag, kind, count) + field
    out += b"\0" * (len(out) % 2)
    new_ifd = len(out)
    out += struct.pack(order + "H", len(entries)) + b"".join(entries[tag] for tag in sorted(entries)) + next_ifd
    out[4:8] = struct.pack(order + "I", new_ifd)
    return bytes(out)

"""Every file a run writes, and the rules it follows (README, "Your files are safe").

1. **A path is a plain file.** FFmpeg is given absolute paths (`ffmpeg_path`), so
   `file:clip.mp4`, `pipe:1` or `concat:a|b` are file names in the current folder, never
   FFmpeg protocols that would reach another file.
2. **A file the run did not create is never opened for writing unless `--overwrite`
   names it**, and even then it is replaced only by renaming a finished temporary file
   over it (`OutputFile`): until the new output is finalized the old one is untouched.
3. **The source is never written through any alias.** Paths are compared as files
   (device and inode), not as strings: a hard link, a symlink or another spelling of the
   source (or of another file of the same run) is refused, with or without
   `--overwrite` (`check_output_paths`).
4. **Temporary files are created exclusively** (`O_CREAT | O_EXCL`) under hidden names
   in the target folder, so a temporary name can never clobber an existing file.
5. **One run per output at a time**: an advisory `flock` on a hidden lock file beside the
   output. The kernel releases it when the process dies (even by `kill -9`), so a crashed
   run never leaves a lock that blocks the next one.

No threads, no queues, nothing from `pipeline/`, `hw/` or `models/`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from core.errors import DiskFull, OutputBusy, OutputExists, OutputNotWritable, UnsafeOutput

__all__ = [
    "ffmpeg_path",
    "file_sha256",
    "same_file",
    "file_key",
    "file_identity",
    "temporary_names",
    "partial_names",
    "work_folder",
    "check_output_paths",
    "OutputFile",
    "OutputFolder",
    "NoOutput",
    "OnePicture",
    "write_file_atomically",
    "create_exclusive",
    "describe_file_kind",
    "FreeSpaceGuard",
    "disk_full_error",
    "disk_errors",
]

log = logging.getLogger(__name__)

try:  # POSIX advisory locks; on other systems outputs are not locked (said in the log)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_LOCK_SUFFIX = ".framepipe-lock"


def ffmpeg_path(path: str | os.PathLike) -> str:
    """`path` as FFmpeg must see it: absolute, so no prefix is ever read as a protocol."""
    return os.path.abspath(os.fspath(path))


def _canonical(path: Path) -> str:
    return os.path.normcase(os.path.realpath(path))


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when `a` and `b` are one file: same inode where both exist (hard links,
    symlinks), else the same resolved path (two spellings of a file yet to be made)."""
    return file_key(a) == file_key(b)


def file_key(path: str | os.PathLike) -> tuple:
    """What `same_file` compares, as a key for sets: the inode where the file exists (through
    symlinks; hard links share it), else its resolved path. Many paths against many (thousands of
    pictures in and out) at one stat each."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", _canonical(Path(path)))
    return ("inode", st.st_dev, st.st_ino)


def file_identity(path: str | os.PathLike) -> dict[str, int] | None:
    """Size, modification time and inode of `path` (a rename keeps them): noted, they say later
    whether it is still the same, unchanged file. None where it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


_TEMP_HEX = 8  # hex digits of the random part of a temporary file's name (`create_exclusive`)


def temporary_names(output: Path) -> re.Pattern:
    """The names of `output`'s hidden temporary files, `.<stem>.<8 hex digits>.part<suffix>`
    (`OutputFile.begin`, through `create_exclusive`)."""
    return re.compile(rf"\.{re.escape(output.stem)}\.[0-9a-f]{{{_TEMP_HEX}}}\.part{re.escape(output.suffix)}")


def partial_names(output: Path) -> re.Pattern:
    """The names of `output`'s partial outputs kept beside an earlier output, `<stem>.partial<suffix>`
    or `<stem>.partial-N<suffix>` (`OutputFile._keep_as_partial`)."""
    return re.compile(rf"{re.escape(output.stem)}\.partial(-\d+)?{re.escape(output.suffix)}")


def work_folder(output: Path) -> Path:
    """`<output>.parts/`: the work folder a segmented run of `output` keeps its segments and
    manifest in (`pipeline.segments.PartsFolder`)."""
    return output.with_name(output.name + ".parts")


def describe_file_kind(mode: int) -> str:
    """'a directory', 'a FIFO (named pipe)', ... for an `os.stat` mode that is not a regular file."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    for test, text in kinds:
        if test(mode):
            return text
    return "not a regular file"


def _refuse_special(flag: str, path: Path) -> None:
    """A device, FIFO or socket at `path` is never replaced, with or without --overwrite (a rename
    over /dev/null would put a regular file in its place)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing, or a dangling symlink: replacing it writes nothing through it
        return
    if not stat.S_ISREG(mode):
        raise OutputNotWritable(
            f"{flag} {str(path)!r} is {describe_file_kind(mode)}, not a regular file: framepipe never writes to it. "
            "Give the path of a new file."
        )


# The longest name framepipe puts beside an output, past the output's own: its lock,
# `.<name>.framepipe-lock` (the temporary `.<stem>.<8 hex digits>.part<suffix>` takes 15).
_SIDE_NAME_BYTES = 17


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder if str(folder) else ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _check_one(flag: str, path: Path, *, overwrite: bool) -> None:
    shown = str(path)
    limit = _name_max(path.parent) - _SIDE_NAME_BYTES
    if len(os.fsencode(path.name)) > limit:
        raise OutputNotWritable(
            f"{flag} {shown[:60]!r}...: its name is {len(os.fsencode(path.name))} bytes long; framepipe writes a lock "
            f"and a temporary file beside it whose names are up to {_SIDE_NAME_BYTES} bytes longer, and the file "
            f"system takes {limit + _SIDE_NAME_BYTES}. Give a name of at most {limit} bytes."
        )
    if os.path.isdir(path):
        raise OutputNotWritable(f"{flag} {shown!r} is a directory. Give a file name, e.g. {flag} {path / 'out'}.")
    if os.path.lexists(path):
        _refuse_special(flag, path)
        if not overwrite:
            raise OutputExists(f"{flag} {shown!r} already exists. Pass --overwrite to replace it, or choose another name.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputNotWritable(f"Cannot write {flag} {shown!r}: folder {str(parent)!r} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputNotWritable(f"Cannot write {flag} {shown!r}: folder {str(parent)!r} is not writable (permission denied).")


def check_output_paths(
    outputs: Sequence[tuple[str, Path]],
    *,
    inputs: Sequence[tuple[str, Path]] = (),
    overwrite: bool,
    owned: Iterable[Path] = (),
) -> None:
    """Refuse, before any work, every path the run must not write.

    `outputs`: (flag, path) the run will write, e.g. ("--output", out), ("--stats-json", p).
    `inputs`: (flag, path) the run reads and must never write (the source, a model file).
    `owned`: outputs that are framepipe's own files (caches): replaced without
    `--overwrite`, but still never an alias of an input or of another output.
    Raises `OutputExists`, `OutputNotWritable` or `UnsafeOutput` with one line.
    """
    owned_set = {_canonical(Path(p)) for p in owned}
    read = {}
    for in_flag, in_path in inputs:  # one stat per input: a picture sequence may have thousands
        read.setdefault(file_key(in_path), (in_flag, in_path))
    for flag, path in outputs:
        path = Path(path)
        hit = read.get(file_key(path))
        if hit is not None:
            in_flag, in_path = hit
            raise UnsafeOutput(
                f"{flag} {str(path)!r} is the same file as {in_flag} {str(in_path)!r}"
                f"{_alias_kind(path, Path(in_path))}: framepipe never writes its input, with or without "
                "--overwrite. Choose another name."
            )
    for flag, path in outputs:  # a run removes what a killed run of its output left under these names
        temporaries, folder = temporary_names(Path(path)), _canonical(Path(path).parent)
        for in_flag, in_path in inputs:
            if temporaries.fullmatch(Path(in_path).name) and _canonical(Path(in_path).parent) == folder:
                raise UnsafeOutput(
                    f"{in_flag} {str(in_path)!r} is named as the hidden temporary file of {flag} {str(path)!r}, which "
                    "a run removes as a killed run's leftover: rename it, or choose another output name."
                )
    for i, (flag_a, path_a) in enumerate(outputs):
        for flag_b, path_b in outputs[i + 1 :]:
            if same_file(path_a, path_b):
                raise UnsafeOutput(
                    f"{flag_a} {str(path_a)!r} and {flag_b} {str(path_b)!r} are the same file: one would overwrite "
                    "the other. Choose different names."
                )
    for flag, path in outputs:
        _check_one(flag, Path(path), overwrite=overwrite or _canonical(Path(path)) in owned_set)


def _alias_kind(path: Path, other: Path) -> str:
    if os.path.islink(path):
        return " (a symbolic link to it)"
    try:
        if os.path.samefile(path, other) and _canonical(path) != _canonical(other):
            return " (a hard link to it)"
    except OSError:
        pass
    return ""


def create_exclusive(folder: Path, *, prefix: str, suffix: str, mode: int = 0o666) -> Path:
    """Create a new empty file in `folder` under a fresh hidden name; never an existing one."""
    for _ in range(100):
        path = folder / f".{prefix}.{secrets.token_hex(_TEMP_HEX // 2)}{suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise OutputNotWritable(f"Cannot create a temporary file in {str(folder)!r}: too many name collisions.")


def refuse_if_busy(target: Path) -> None:
    """OutputBusy when another framepipe run holds `target`'s lock now (its lock file is never
    made here): checked first where an earlier run's leftovers would otherwise be named."""
    if fcntl is None:  # pragma: no cover
        return
    lock = _OutputLock(Path(target))
    try:
        fd = os.open(lock.path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputBusy(lock.busy_message()) from None
    finally:
        os.close(fd)  # closing releases a lock taken here


class _OutputLock:
    """An exclusive `flock` on `.<name>.framepipe-lock` beside the output.

    The lock file is opened read-only (`flock` does not need write access), so an
    existing file of that name is never written; it is removed at release only when this
    run created it or it is an empty leftover of a crashed run.
    """

    def __init__(self, target: Path) -> None:
        self.path = target.parent / f".{target.name}{_LOCK_SUFFIX}"
        self.target = target
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover
            log.info("no file locking on this system: %s is not protected against a second run", self.target)
            return
        for _ in range(20):
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputBusy(self.busy_message()) from None
                raise
            try:  # the file we locked must still be the one at that name (a releasing run unlinks it)
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    self._fd = fd
                    return
            except FileNotFoundError:
                pass
            os.close(fd)
        raise OutputBusy(f"Could not lock {str(self.target)!r}: its lock file keeps changing. Is another run starting?")

    def busy_message(self) -> str:
        return (f"{str(self.target)!r} is being written by another framepipe run right now (lock {self.path.name}). "
                "Wait for it to finish, or choose another --output.")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            st = os.stat(self.path)
            if stat.S_ISREG(st.st_mode) and st.st_size == 0 and st.st_ino == os.fstat(self._fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None


class OutputFile:
    """One output file written as a transaction: lock, temporary file, then rename.

        out = OutputFile(Path("clip.x4.mp4"), overwrite=False)
        tmp = out.begin()          # locks the name, creates a hidden temporary file beside it
        ... write tmp ...
        final = out.commit(complete=True)   # or out.discard() when nothing worth keeping was made

    `commit(complete=True)` puts the result at the output name (replacing an existing
    file only when `overwrite` was given, by `os.replace`). `commit(complete=False)` — a
    stopped or failed run's finalized partial file — goes to the output name when there
    was no file there, else beside it as `<stem>.partial<suffix>`, so a previous output
    is never replaced by a partial one.

    `earlier_partial`: the partial output an earlier, stopped run of the same job left (the output
    name itself, or a `<stem>.partial<suffix>` beside it; a resumed segmented run knows it from its
    work folder). This run's partial output replaces it, and its complete output removes it, so
    stopping and resuming a job again and again leaves one partial file at one name. Only if it is
    unchanged since `begin()`.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool, flag: str = "--output",
                 earlier_partial: Path | None = None) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.flag = flag
        self.temp: Path | None = None
        self._lock = _OutputLock(self.path)
        self._existed = False
        self._mode: int | None = None
        self._earlier = Path(earlier_partial) if earlier_partial is not None else None
        self._earlier_identity: dict[str, int] | None = None  # noted in begin(): replaced only if unchanged since

    def begin(self) -> Path:
        """Lock the output name and create the temporary file; returns its path."""
        self._lock.acquire()
        try:
            self._existed = os.path.lexists(self.path)
            if self._existed and not self.overwrite:
                raise OutputExists(
                    f"{self.flag} {str(self.path)!r} already exists. Pass --overwrite to replace it, or choose another name."
                )
            _refuse_special(self.flag, self.path)
            if self._existed and os.path.isfile(self.path):
                self._mode = stat.S_IMODE(os.stat(self.path).st_mode)
            if self._earlier is not None:
                self._earlier_identity = file_identity(self._earlier)
            parent = self.path.parent if str(self.path.parent) else Path(".")
            self._remove_stale_temporaries(parent)
            try:
                self.temp = create_exclusive(parent, prefix=self.path.stem, suffix=f".part{self.path.suffix}")
            except OSError as exc:
                raise OutputNotWritable(f"Cannot write {self.flag} {str(self.path)!r}: {exc.strerror or exc}.") from exc
        except BaseException:
            self._lock.release()
            raise
        return self.temp

    def _remove_stale_temporaries(self, parent: Path) -> None:
        """Hidden temporary files of this output name that a killed run left (`kill -9`, a power
        cut: it never renamed them). Under the output's lock no other run writes them: they go.
        Only framepipe's exact temporary names (`.<stem>.<8 hex digits>.part<suffix>`)."""
        pattern = temporary_names(self.path)
        try:
            names = [entry.name for entry in os.scandir(parent) if pattern.fullmatch(entry.name)]
        except OSError:
            return
        for name in names:
            stale = parent / name
            if stale.is_file() and not stale.is_symlink():
                try:
                    stale.unlink()
                    log.info("removed %s, the temporary file of a run of %s that was killed", stale, self.path)
                except OSError:
                    pass

    def _earlier_if_unchanged(self) -> Path | None:
        if self._earlier is None or self._earlier_identity is None or os.path.islink(self._earlier):
            return None
        return self._earlier if file_identity(self._earlier) == self._earlier_identity else None

    def commit(self, *, complete: bool) -> Path:
        """Move the finished temporary file into place; returns where the result is."""
        if self.temp is None:
            raise ValueError("OutputFile.commit() before begin()")
        temp, self.temp = self.temp, None
        try:
            if self._mode is not None:
                try:
                    os.chmod(temp, self._mode)
                except OSError:
                    pass
            earlier = self._earlier_if_unchanged()
            if not complete and earlier is not None:  # a newer partial output of the same job
                os.replace(temp, earlier)
                return earlier
            if self._existed and self.overwrite and complete:
                os.replace(temp, self.path)
            elif self._existed or not _link_exclusive(temp, self.path):
                return self._keep_as_partial(temp)
            if complete and earlier is not None and earlier != self.path:
                earlier.unlink(missing_ok=True)  # the job is done: its stopped run's partial output goes
            return self.path
        finally:
            self._lock.release()

    def _keep_as_partial(self, temp: Path) -> Path:
        for n in range(1000):
            name = f"{self.path.stem}.partial{'' if n == 0 else f'-{n}'}{self.path.suffix}"
            if _link_exclusive(temp, self.path.with_name(name)):
                return self.path.with_name(name)
        return temp  # pragma: no cover - a thousand partial files: keep the temporary name

    def discard(self) -> None:
        """Remove the temporary file (nothing worth keeping was made) and unlock."""
        temp, self.temp = self.temp, None
        try:
            if temp is not None:
                temp.unlink(missing_ok=True)
        finally:
            self._lock.release()


class OutputFolder:
    """A folder of output pictures: locked against a second run like an output file (the lock
    beside it), created when missing, and removed again when the run wrote nothing into it.
    Each picture in it is written by `write_file_atomically`."""

    def __init__(self, path: str | os.PathLike, *, keep: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.keep = set(keep)  # names of framepipe's own files in it (a manifest): not "something written"
        self._lock = _OutputLock(self.path)
        self._created = False

    def begin(self) -> Path:
        self._lock.acquire()
        try:
            if not self.path.is_dir():
                self.path.mkdir()
                self._created = True
        except OSError as exc:
            self._lock.release()
            raise OutputNotWritable(f"Cannot create the output folder {str(self.path)!r}: {exc.strerror or exc}.") from None
        return self.path

    def commit(self, *, complete: bool) -> Path:
        self._lock.release()
        return self.path

    def discard(self) -> None:
        """Nothing worth keeping was written: a folder this run created goes again."""
        try:
            if self._created and self.path.is_dir() and all(p.name in self.keep for p in self.path.iterdir()):
                for name in self.keep:
                    (self.path / name).unlink(missing_ok=True)
                self.path.rmdir()
        except OSError:
            pass
        finally:
            self._lock.release()


class OnePicture:
    """The output of a run that writes one named picture file (--source photo.jpg --output
    photo4x.png): its writer writes it by `write_file_atomically` (its own lock, a temporary file,
    a rename, --overwrite's rule), so there is nothing to lock, make or remove here."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def begin(self) -> Path:
        return self.path

    def commit(self, *, complete: bool) -> Path:
        return self.path

    def discard(self) -> None:
        pass


class NoOutput:
    """The output of a run that writes nothing (--output-mode none): no path, no lock."""

    path = None

    def begin(self) -> None:
        return None

    def commit(self, *, complete: bool) -> None:
        return None

    def discard(self) -> None:
        pass


def _link_exclusive(src: Path, dst: Path) -> bool:
    """Rename `src` to `dst` only if `dst` does not exist (never replaces a file)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system (FAT, some network mounts)
        if os.path.lexists(dst):
            return False
        os.rename(src, dst)
        return True
    os.unlink(src)
    return True


def write_file_atomically(path: str | os.PathLike, data: bytes, *, overwrite: bool, flag: str) -> None:
    """Write `data` to `path` through an exclusive temporary file and a rename."""
    out = OutputFile(path, overwrite=overwrite, flag=flag)
    temp = out.begin()
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        out.discard()
        raise
    out.commit(complete=True)


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


class FreeSpaceGuard:
    """Stops a writer while its file system still has room to finish the file.

    A full disk found by a failed write is found too late for an MP4: its index (the
    `moov` box) is written last, so a file that cannot be finalized does not play. The
    writer asks `check()` after every frame; it raises `DiskFull` once free space drops
    below what finishing needs: a fixed 8 MiB, plus twice the average encoded frame for
    every frame still inside the encoder (its look-ahead is flushed at the end), plus 64
    bytes per frame for the index. The run then stops and finalizes normally.
    """

    MIN_RESERVE_BYTES = 8 << 20
    CHECK_EVERY_BYTES = 1 << 20  # statvfs can be slow on network file systems: ask at most per MiB
    CHECK_EVERY_SECONDS = 0.5  # ... or per half second

    def __init__(self, path: Path, *, free_bytes=None) -> None:
        self.folder = Path(path).parent if str(Path(path).parent) else Path(".")
        self._free = free_bytes or (lambda: _free_bytes(self.folder))
        self._last_bytes: int | None = None
        self._last_time = 0.0

    def reserve_bytes(self, *, bytes_written: int, frames_written: int, frames_pending: int,
                      frames_buffered: int = 0) -> int:
        """Bytes that finishing needs. `frames_buffered`: frames a muxer may hold in memory
        (a Matroska cluster), written out later."""
        average = bytes_written / frames_written if frames_written else 0.0
        held = frames_pending + frames_buffered + 2
        return self.MIN_RESERVE_BYTES + int(2 * average * held) + 64 * frames_written

    def check(self, *, bytes_written: int, frames_written: int, frames_pending: int, frames_buffered: int = 0) -> None:
        import time

        now = time.monotonic()
        if (self._last_bytes is not None and bytes_written - self._last_bytes < self.CHECK_EVERY_BYTES
                and now - self._last_time < self.CHECK_EVERY_SECONDS):
            return
        self._last_bytes, self._last_time = bytes_written, now
        free = self._free()
        if free is None:
            return
        need = self.reserve_bytes(bytes_written=bytes_written, frames_written=frames_written,
                                  frames_pending=frames_pending, frames_buffered=frames_buffered)
        if free < need:
            raise DiskFull(
                f"Disk almost full: {free / 2**20:.1f} MiB left on the file system of {str(self.folder)!r}, and "
                f"finishing the output safely needs about {need / 2**20:.1f} MiB; stopped there. Free some space "
                "and run again"  # how many frames the output holds: the run's own line says (a segment counts its own)
            )


def disk_full_error(exc: OSError, path: Path) -> DiskFull | None:
    """A `DiskFull` for a write that failed because the disk or a size limit is full, else None."""
    if getattr(exc, "errno", None) not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return None
    reason = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "the file is too large for this file "
              "system or a size limit", errno.EDQUOT: "the disk quota is used up"}[exc.errno]
    return DiskFull(f"Writing the output in {str(Path(path).parent)!r} failed: {reason}. Free some space and run again")


@contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """Turn a write the file system refuses (no space, a size limit, a quota) into `DiskFull`."""
    try:
        yield
    except OSError as exc:
        full = disk_full_error(exc, path)
        if full is not None:
            raise full from exc
        raise


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

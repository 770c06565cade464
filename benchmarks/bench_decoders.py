#!/usr/bin/env python3
"""Decode never the wall (issue 12): one decoder vs several on consecutive parts of one video.

On a 1080p clip made here (panned photographs, x264 veryfast crf 18, B-frames, a keyframe every
--gop frames), for PyAV and for NVDEC (--nvdec; skipped where NVDEC is not available), with
--decoders 1, 0 (auto) and 4:
  decode alone   the run's own source (pipeline/build.py open_source from the plan), iterated
                 and counted, nothing else running
  NVDEC alone    PyNvVideoCodec's own loop (its demuxer; frames counted, or copied out), framepipe's
                 NvDecoder over the whole file, and N threads of the own loop at once (the engines)
  end to end     python main.py --model bicubic --scale 1 --output-mode none --parallel
                 --decoders N [--nvdec] --stats-json OUT/...: fps over the whole run and
                 "steady" fps after the first frame (start-up left out)
Issue 12's target: >= 1,200 fps end to end at 1080p with a trivial model and no encoder (H100).

    python benchmarks/bench_decoders.py --frames 960 --out $OUT/decoders
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._steps import Steps, steady_fps  # noqa: E402


def make_clip(path: Path, *, width: int, height: int, num_frames: int, gop: int, encode_at_most: int = 960) -> Path:
    """Panned photographs (60 rendered, looped), x264 with B-frames and a keyframe every `gop`.

    At most `encode_at_most` frames are encoded (and the rest of a division): a longer clip repeats
    them by remuxing the packets with shifted timestamps, each repetition a whole stream that starts
    at an IDR frame. Encoding 4,800 frames of 1080p in this loop took minutes on the H100 host."""
    from hw.clips import render_photo_frames

    if path.is_file():
        return path
    base = min(num_frames, max(gop, encode_at_most - encode_at_most % gop))
    frames = render_photo_frames(width, height, min(base, 60))
    tmp = path.with_suffix(".part.mp4")
    if base == num_frames:
        _encode(tmp, frames, base, gop)
    else:
        pieces = [(path.with_suffix(".once.mp4"), base), (path.with_suffix(".rest.mp4"), num_frames % base)]
        for piece, n in pieces:
            if n:
                _encode(piece, frames, n, gop)
        _concat(tmp, [pieces[0]] * (num_frames // base) + [pieces[1]] * bool(num_frames % base))
        for piece, _ in pieces:
            piece.unlink(missing_ok=True)
    tmp.replace(path)
    return path


def _encode(path: Path, frames: list, num_frames: int, gop: int) -> None:
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = {"preset": "veryfast", "crf": "18", "bf": "3", "g": str(gop)}
        for i in range(num_frames):
            f = av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24").reformat(format="yuv420p")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)


def _concat(dst: Path, pieces: list[tuple[Path, int]]) -> None:
    """`dst`: the pieces one after the other (packets copied, timestamps shifted by the frames before)."""
    import av

    with av.open(str(dst), "w") as out:
        target, before = None, 0
        for src, n in pieces:
            with av.open(str(src)) as inp:
                stream = inp.streams.video[0]
                target = target or out.add_stream_from_template(stream)
                packets = [p for p in inp.demux(stream) if p.size]
                ticks = sorted(p.pts for p in packets)
                shift = before * (ticks[1] - ticks[0])
                for p in packets:
                    p.pts += shift
                    p.dts += shift
                    p.stream = target
                    out.mux(p)
            before += n
def decode_alone(src: Path, *, decoders: int, nvdec: bool) -> dict:
    """The source a run with these flags would read, read alone."""
    from pipeline import RunConfig, plan_run
    from pipeline.build import open_source

    plan = plan_run(RunConfig(source=src, model="bicubic", scale=1, output_mode="none", parallel=True,
                              decoders=decoders, nvdec=nvdec))
    if nvdec and not plan.use_nvdec:
        return {"skipped": "; ".join(plan.notes) or "NVDEC not used"}
    warnings: list[str] = []
    source = open_source(plan, warnings.append)
    t0 = time.perf_counter()
    try:
        n = sum(1 for _ in source)
    finally:
        seconds = time.perf_counter() - t0
        source.close()
    d = plan.decoding
    return {"frames": n, "seconds": round(seconds, 3), "fps": round(n / seconds, 1),
            "decoders": d.num_decoders if d else 1, "spans": len(d.spans) if d else 1,
            "line": d.line if d else "one decoder", "notes": list(plan.notes), "warnings": warnings}


def nvdec_own_loop(src: Path, *, copy: bool) -> dict:
    """PyNvVideoCodec's own loop, as its samples/advanced/decode_perf.py writes it: its demuxer,
    one decoder, every frame counted (`copy`: and copied into a torch tensor the caller owns, as
    any consumer of a reused output surface must; on torch's context and a torch stream)."""
    import torch

    from hw import nv_runtime as rt

    nvc = rt.nvcodec_import()
    dmx = nvc.CreateDemuxer(filename=str(src))
    stream = torch.cuda.Stream()
    kwargs = dict(gpuid=0, codec=dmx.GetNvCodecId(), usedevicememory=True)
    if copy:
        kwargs.update(cudacontext=rt.torch_context(0), cudastream=int(stream.cuda_stream))
    t0 = time.perf_counter()
    with rt.keep_current_context():
        dec = nvc.CreateDecoder(**kwargs)
    created = time.perf_counter() - t0
    n = 0
    t1 = time.perf_counter()
    with torch.cuda.stream(stream):
        for packet in dmx:
            for frame in dec.Decode(packet):
                if copy:
                    torch.from_dlpack(frame).clone()
                n += 1
    stream.synchronize()
    seconds = time.perf_counter() - t1
    return {"frames": n, "seconds": round(seconds, 3), "fps": round(n / seconds, 1),
            "create_seconds": round(created, 4)}


def nvdec_whole(src: Path) -> dict:
    """framepipe's NvDecoder over the whole file (PyAV's demuxer, a copy of each frame)."""
    from hw.nvdec import NvDecoder

    t0 = time.perf_counter()
    dec = NvDecoder(src, gpu=0)
    opened = time.perf_counter() - t0
    t1 = time.perf_counter()
    with dec:
        n = sum(1 for _ in dec)
    seconds = time.perf_counter() - t1
    return {"frames": n, "seconds": round(seconds, 3), "fps": round(n / seconds, 1), "open_seconds": round(opened, 4)}


def nvdec_breakdown(src: Path) -> dict:
    """Where NvDecoder's time goes against PyNvVideoCodec's own loop, each part alone (seconds or
    fps for the whole file):
      own_demuxer_alone            its C++ demuxer iterated, nothing decoded (and the flags and
                                   timestamps its first packets carry)
      pyav_demux_and_filter_alone  NvDecoder's packets: PyAV's demuxer + the Annex-B filter
      premade_clone                NVDEC fed NvDecoder's packets (made beforehand), each frame
                                   cloned, one wait at the end: none of NvDecoder's book-keeping
      premade_end_of_picture       the same with ENDOFPICTURE set on every packet (one picture each)
      premade_copy_and_wait        the same packets with NvDecoder's own copy (`_copy_frames`:
                                   an owned tensor per frame, one wait per Decode call)"""
    import torch

    from hw import nv_runtime as rt
    from hw.nvdec import NvDecoder

    nvc = rt.nvcodec_import()
    out: dict = {}
    t0 = time.perf_counter()
    firsts, n = [], 0
    for packet in nvc.CreateDemuxer(filename=str(src)):
        if n < 3:
            firsts.append({a: str(getattr(packet, a, "?")) for a in ("decode_flag", "pts", "dts", "bsl")})
        n += 1
    out["own_demuxer_alone"] = {"packets": n, "seconds": round(time.perf_counter() - t0, 3), "first_packets": firsts}
    dec = NvDecoder(src, gpu=0)
    try:
        t0 = time.perf_counter()
        packets = list(dec._annexb_packets())
        out["pyav_demux_and_filter_alone"] = {"packets": len(packets), "seconds": round(time.perf_counter() - t0, 3)}
    finally:
        dec.close()
    flags = getattr(nvc, "VideoPacketFlag", None)

    def fed(mode: str) -> dict:
        dec = NvDecoder(src, gpu=0)
        try:
            if mode == "end_of_picture":
                try:
                    dec._timestamp_flag = int(flags.TIMESTAMP) | int(flags.ENDOFPICTURE)
                except Exception as exc:  # noqa: BLE001 - reported, not fatal to the other rows
                    return {"skipped": f"flags: {exc}"}
            stream = dec._copy_stream
            frames = 0
            t0 = time.perf_counter()
            with torch.cuda.stream(stream):
                items = [dec._packet_data(payload, k) for k, (payload, _, _) in enumerate(packets)]
                items.append((dec._end_of_stream_packet(), None))  # (packet, the buffer it points at)
                prepared = time.perf_counter() - t0
                t0 = time.perf_counter()
                for packet, _buffer in items:
                    got = list(dec._decoder.Decode(packet))
                    if mode == "copy_and_wait":
                        if got:
                            dec._copy_frames(got)
                    else:
                        for frame in got:
                            torch.from_dlpack(frame).clone()
                    frames += len(got)
            stream.synchronize()
            seconds = time.perf_counter() - t0
            return {"frames": frames, "seconds": round(seconds, 3), "fps": round(frames / seconds, 1),
                    "packets_prepared_seconds": round(prepared, 3), "flag": str(dec._timestamp_flag)}
        finally:
            dec.close()

    for mode in ("clone", "end_of_picture", "copy_and_wait"):
        out[f"premade_{mode}"] = fed(mode)
    return out


def nvdec_ablation(src: Path) -> dict:
    """NvDecoder whole, one difference from its own loop at a time (fps): as it is; iterated with
    its copy stream current (as PyNvVideoCodec's loop runs); its packets demuxed beforehand and
    fed through its own loop."""
    import torch

    from hw.nvdec import NvDecoder

    def one(mode: str) -> float:
        dec = NvDecoder(src, gpu=0)
        with dec:
            if mode == "premade":
                packets = list(dec._annexb_packets())
                dec._annexb_packets = lambda: iter(packets)
            t0 = time.perf_counter()
            if mode == "stream_current":
                with torch.cuda.stream(dec._copy_stream):
                    n = sum(1 for _ in dec)
            else:
                n = sum(1 for _ in dec)
            return round(n / (time.perf_counter() - t0), 1)

    return {f"{k + 1}:{mode}": one(mode) for k, mode in enumerate(("as_is", "stream_current", "premade", "as_is"))}


def nvdec_threads(src: Path, num: int) -> dict:
    """`num` threads, each PyNvVideoCodec's own loop over the whole file (frames copied): what the
    GPU's NVDEC engines give together."""
    import threading

    results: list = [None] * num

    def one(k: int) -> None:
        try:
            results[k] = nvdec_own_loop(src, copy=True)
        except Exception as exc:  # noqa: BLE001
            results[k] = {"error": repr(exc)}

    threads = [threading.Thread(target=one, args=(k,)) for k in range(num)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    frames = sum(r.get("frames", 0) for r in results)
    return {"threads": num, "frames": frames, "seconds": round(seconds, 3), "fps_together": round(frames / seconds, 1),
            "create_seconds": [r.get("create_seconds") for r in results], "errors": [r["error"] for r in results if "error" in r]}


def end_to_end(src: Path, out: Path, *, decoders: int, nvdec: bool, extra: list[str]) -> dict:
    stats_path = out / f"e2e-{'nvdec' if nvdec else 'pyav'}-decoders{decoders}.json"
    cmd = [sys.executable, str(ROOT / "main.py"), "--source", str(src), "--model", "bicubic", "--scale", "1",
           "--output-mode", "none", "--parallel", "--decoders", str(decoders), "--stats-json", str(stats_path),
           *(["--nvdec"] if nvdec else []), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    command_seconds = time.perf_counter() - t0
    (out / f"{stats_path.stem}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not stats_path.is_file():
        return {"error": f"exit {proc.returncode}", "tail": (proc.stdout + proc.stderr)[-800:]}
    s = json.loads(stats_path.read_text())
    frames, wall, first = s["frames_written"], s["wall_seconds"], s.get("first_frame_seconds")
    steady = steady_fps(s)
    steady = round(steady, 1) if steady is not None else None
    return {"fps": s["fps"], "steady_fps": steady, "frames": frames, "wall_seconds": wall,
            "first_frame_seconds": first, "command_seconds": round(command_seconds, 2),
            "decoder": s.get("decoder"), "decoders": s.get("decoders", "one decoder"),
            "batch_sizes": [w.get("batch_sizes") for w in s.get("workers", [])],
            "stages_busy_s": {k: v["busy_seconds"] for k, v in s.get("stages", {}).items()},
            "warnings": s.get("warnings"), "notes": s.get("fallbacks")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1920x1080")
    p.add_argument("--frames", type=int, default=960)
    p.add_argument("--gop", type=int, default=48, help="a keyframe every N frames (x264 -g)")
    p.add_argument("--settings", default="1,0,4", help="--decoders values to compare (0 = auto)")
    p.add_argument("--no-nvdec", action="store_true", help="PyAV only")
    p.add_argument("--nvdec-settings", default="2,7", help="more --decoders values for NVDEC")
    p.add_argument("--nvdec-threads", default="1,2,4,7", help="threads of PyNvVideoCodec's own loop at once")
    p.add_argument("--extra", default="", help="more main.py flags for the end-to-end runs, e.g. '--batch-size 16'")
    p.add_argument("--out", type=Path, default=Path("bench-out/decoders"))
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-decoders"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    import av
    import torch

    w, h = map(int, args.size.split("x"))
    results: dict = {"date": time.strftime("%Y-%m-%d"),
                     "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
                     "cpu_count": os.cpu_count(), "torch": torch.__version__, "pyav": av.__version__,
                     "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    step = Steps(results, args.out / "bench-decoders.json", preview_chars=400)
    src = args.work / f"decoders-{w}x{h}-{args.frames}-g{args.gop}.mp4"
    step("make_clip", lambda: {"path": str(make_clip(src, width=w, height=h, num_frames=args.frames, gop=args.gop)),
                               "bytes": src.stat().st_size})
    settings = [int(x) for x in args.settings.split(",")]
    kinds = [False] if args.no_nvdec or not torch.cuda.is_available() else [False, True]
    extra = args.extra.split()
    # warm-up (not counted): imports from disk, the batch-size probe remembered for the runs below
    step("warmup", lambda: end_to_end(src, args.work, decoders=1, nvdec=False, extra=[*extra, "--max-frames", "240"]))
    if True in kinds:  # NVDEC side by side: PyNvVideoCodec's own loop, framepipe's NvDecoder, engines together
        step("nvdec_own_loop", lambda: nvdec_own_loop(src, copy=False))
        step("nvdec_own_loop_copy", lambda: nvdec_own_loop(src, copy=True))
        step("nvdec_decoder_whole", lambda: nvdec_whole(src))
        step("nvdec_breakdown", lambda: nvdec_breakdown(src))
        for n in [int(x) for x in args.nvdec_threads.split(",") if x]:
            step(f"nvdec_threads:{n}", lambda: nvdec_threads(src, n))
    for nvdec in kinds:
        for n in settings if not nvdec else settings + [int(x) for x in args.nvdec_settings.split(",") if x]:
            step(f"decode_alone:{'nvdec' if nvdec else 'pyav'}:decoders={n}", lambda: decode_alone(src, decoders=n, nvdec=nvdec))
    for nvdec in kinds:
        for n in settings if not nvdec else settings + [int(x) for x in args.nvdec_settings.split(",") if x]:
            step(f"end_to_end:{'nvdec' if nvdec else 'pyav'}:decoders={n}",
                 lambda: end_to_end(src, args.out, decoders=n, nvdec=nvdec, extra=extra))
    if True in kinds:
        own, ours = results.get("nvdec_own_loop_copy", {}), results.get("nvdec_decoder_whole", {})
        if own.get("fps") and ours.get("fps"):
            print(f"\nNvDecoder / PyNvVideoCodec's own loop (frames copied): {ours['fps']} / {own['fps']} = "
                  f"{ours['fps'] / own['fps']:.2f} (without the copy: {results.get('nvdec_own_loop', {}).get('fps')})")
    print("\nfps (decode alone | end to end, steady)")
    for nvdec in kinds:
        for n in settings if not nvdec else settings + [int(x) for x in args.nvdec_settings.split(",") if x]:
            kind = "nvdec" if nvdec else "pyav"
            a, e = results.get(f"decode_alone:{kind}:decoders={n}", {}), results.get(f"end_to_end:{kind}:decoders={n}", {})
            print(f"  {kind:5s} --decoders {n}: {a.get('fps', a.get('error') or a.get('skipped'))} "
                  f"({a.get('decoders', '?')} decoders, {a.get('spans', '?')} spans) | "
                  f"{e.get('fps', e.get('error'))}, steady {e.get('steady_fps')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

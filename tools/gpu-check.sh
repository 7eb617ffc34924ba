#!/usr/bin/env bash
# The device check for a GPU machine without a package registry (recipe: ../shared/docs/GPU-BUILD.md).
#   here:   tools/gpu-check.sh fetch        Debian packages the build needs, into .deps/debs, and the
#                                           ML-1M file into .deps/data (both git-ignored; data never committed)
#   there:  tools/gpu-check.sh run OUT [STAGE...]
#                                           unpack them, build with the machine's PyTorch, then the stages
#                                           (default: build tests kernels train-bench stream-bench dist;
#                                           also: tests-all, ml1m, distill); logs to OUT
# Through the device tool: carry [".deps"], and write OUT outside $OUT, then pack it (the tool brings back
# at most 8 files): `bash tools/gpu-check.sh run /tmp/gc; tar czf $OUT/gc.tgz -C /tmp gc`. Without `dist`
# the default took about 6.5 minutes on an H200 (the build 90 s); `distill` needs about 25 on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
DEBS=(libyaml-cpp-dev libyaml-cpp0.7 libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libgtest-dev libgmock-dev
  googletest libcli11-dev nlohmann-json3-dev libjemalloc-dev libjemalloc2 zlib1g-dev librdkafka-dev librdkafka1
  librdkafka++1 libgloo-dev)

case "${1:-}" in
  fetch)
    rm -rf .deps/debs && mkdir -p .deps/debs
    (cd .deps/debs && apt-get download "${DEBS[@]}")
    echo "fetched $(ls .deps/debs | wc -l) packages into .deps/debs ($(du -sh .deps/debs | cut -f1))"
    if [[ -f ../shared/data/ml-1m-sasrec/ml-1m.txt ]]; then
      mkdir -p .deps/data && cp ../shared/data/ml-1m-sasrec/ml-1m.txt .deps/data/
    else
      echo "../shared/data/ml-1m-sasrec/ml-1m.txt not found: the ML-1M run will be skipped"
    fi
    ;;
  run)
    out=${2:?usage: $0 run OUT_DIR [STAGE...]}
    shift 2
    # Stages, in order: build tests tests-all kernels train-bench stream-bench dist ml1m distill
    stages=" ${*:-build tests kernels train-bench stream-bench dist} "
    has() { [[ "$stages" == *" $1 "* ]]; }
    mkdir -p "$out"
    prefix=/tmp/freshrec-deps
    for f in .deps/debs/*.deb; do dpkg-deb -x "$f" "$prefix"; done
    export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
    # The packages' .pc files say prefix=/usr: let pkg-config (librdkafka) look under the unpacked tree.
    export PKG_CONFIG_PATH="$prefix/usr/lib/x86_64-linux-gnu/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$prefix"
    torch_cmake=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
    { nvidia-smi; python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; nvcc --version; } \
      >"$out/machine.txt" 2>&1 || true
    status=0
    B=./build-gpu/freshrec
    run_stage() {  # name, time limit in seconds, command...; output to $out/name.txt
      local name=$1 limit=$2; shift 2
      local begun=$(date +%s)
      timeout "$limit" "$@" >"$out/$name.txt" 2>&1 || { echo "stage $name failed or timed out ($?)" | tee -a "$out/$name.txt"; status=1; }
      echo "$name: $(( $(date +%s) - begun )) s" | tee -a "$out/stages.txt"
    }
    if has build; then
      start=$(date +%s)
      cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix/usr;$torch_cmake" \
        -DFRESHREC_CUDA=ON >"$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
      cmake --build build-gpu -j "$(nproc)" >"$out/build.log" 2>&1 || { grep -m 20 -E "error|FAILED" "$out/build.log"; exit 1; }
      echo "build: $(( $(date +%s) - start )) s" | tee -a "$out/stages.txt"
      # Which library the binaries' std::filesystem calls bind to (the wheel's libtorch.so exports a copy).
      { readelf -d build-gpu/test_torch | grep -m3 NEEDED
        LD_BIND_NOW=1 LD_DEBUG=bindings ./build-gpu/test_torch --gtest_list_tests 2>&1 | grep -m6 "St10filesystem"
      } >>"$out/machine.txt" 2>&1 || true
    fi
    # The tests that use the GPU when one is present (the rest run in CI on the CPU); `tests-all` runs
    # every test of the torch binary as well.
    gpu_tests='SparseEmbedding*:RowwiseAdam.*:FusedBackwardAdam.*:GpuTraining.*:Stream.MicroBatchesNeverWaitForTheDeviceOnAGpu'
    if has tests; then
      run_stage tests 180 ./build-gpu/test_torch --gtest_filter="$gpu_tests"
      # A test that died of a signal (gtest printed no result for it): again under cuda-gdb, printing
      # where each C++ exception was thrown, then the crash's backtrace and the return address on the
      # stack (the frame that made the call, where the backtrace itself cannot unwind).
      died=$(awk '/^\[ RUN      \]/{t=$4} /^\[       OK \]|^\[  FAILED  \]/{t=""} END{print t}' "$out/tests.txt")
      if [[ -n "$died" ]] && command -v cuda-gdb >/dev/null; then
        # At the crash: the faulting address, the words on the stack, the caller's return address; then,
        # as after a call through a null pointer, that address popped into the pc for a fuller backtrace.
        printf '%s\n' 'set pagination off' 'set print thread-events off' 'catch throw' 'commands' 'bt 12' \
          'continue' 'end' 'run' 'bt 20' 'p $_siginfo._sifields._sigfault.si_addr' 'x/8a $sp' \
          'info symbol *(void**)$sp' 'thread apply all bt 8' 'set $pc = *(void**)$sp' 'set $sp = $sp + 8' 'bt 20' \
          >/tmp/crash.gdb
        run_stage tests-gdb 150 cuda-gdb -q -batch -x /tmp/crash.gdb --args ./build-gpu/test_torch --gtest_filter="$died"
      fi
    fi
    has tests-all && run_stage tests-all 540 ./build-gpu/test_torch
    has kernels && run_stage bench-kernels 120 $B bench kernels --device cuda
    if has train-bench; then  # ours beside the PyTorch-eager reference, same precision, one run each
      run_stage bench-train-h64-tf32 60 $B bench train --device cuda --precision tf32 --steps 50 --python python3
      run_stage bench-train-h256-tf32 60 $B bench train --device cuda --hidden 256 --blocks 4 --heads 4 --precision tf32 --steps 50 --python python3
      run_stage bench-train-h256-bf16 60 $B bench train --device cuda --hidden 256 --blocks 4 --heads 4 --precision bf16 --steps 50 --python python3
      run_stage bench-train-100k-bf16 90 $B bench train --device cuda --items 100000 --hidden 256 --blocks 4 --heads 4 \
        --batch 64 --precision bf16 --steps 30 --python python3
    fi
    if has stream-bench; then  # events/s and latency on the GPU, with the reference's step
      gen="data.format=generated generator.users=20000 generator.items=3416 generator.events_per_user=60 model.maxlen=200"
      # bench stream streams twice (the reference is timed between the two passes).
      run_stage bench-stream-3416 300 $B bench stream -c configs/demo.yaml $gen train.device=cuda train.ce_chunk=8192 \
        train.precision=bf16 stream.batch_size=1024 stream.max_wait_ms=100000 train.epochs=3 --python python3
      # A large catalogue (the generated log names items by a flat popularity law: about 600,000 rows at
      # the cut, past a million once the stream has grown the table): sparse embeddings and sampled
      # softmax, the teacher alone, no publication, one checkpoint at the end (one of the table and its
      # moments takes seconds; every 10,000 events it would be most of the run).
      big="data.format=generated generator.users=25000 generator.items=3000000 generator.popularity_exponent=0.3 \
        generator.events_per_user=60 model.maxlen=200 train.loss=sampled train.sparse_embeddings=true stream.loss=sampled"
      run_stage bench-stream-large 260 $B bench stream -c configs/demo.yaml $big train.device=cuda train.precision=bf16 \
        stream.batch_size=1024 stream.max_wait_ms=100000 train.epochs=1 student.hidden=0 stream.publish_every=0 \
        stream.publish_seconds=0 stream.checkpoint_every=0 --python python3
    fi
    if has dist; then  # two ranks on this machine's GPUs (both on one where there is one): Gloo, then NCCL
      d="train -c configs/demo.yaml train.device=cuda train.epochs=3"
      run_stage dist-one 120 $B $d train.output_dir=/tmp/dist-one
      run_stage dist-gloo 120 python3 -m torch.distributed.run --no-python --standalone --nproc-per-node=2 $B $d \
        dist.backend=gloo train.output_dir=/tmp/dist-gloo
      run_stage dist-nccl 120 python3 -m torch.distributed.run --no-python --standalone --nproc-per-node=2 $B $d \
        dist.backend=nccl train.output_dir=/tmp/dist-nccl
      # The item table sharded by rows (sampled softmax): all-to-all over NCCL, and one process's row-wise table.
      run_stage dist-rows-one 120 $B $d train.loss=sampled train.sparse_embeddings=true train.output_dir=/tmp/dist-rows-one
      run_stage dist-rows-nccl 120 python3 -m torch.distributed.run --no-python --standalone --nproc-per-node=2 $B $d \
        train.loss=sampled dist.item_table=row_sharded dist.backend=nccl train.output_dir=/tmp/dist-rows-nccl
      # The stream as one process and as two ranks over NCCL, from dist-one's teacher: the same metrics.
      st="stream -c configs/demo.yaml train.device=cuda --teacher /tmp/dist-one/best.pt student.hidden=0"
      run_stage dist-stream-one 120 $B $st stream.output_dir=/tmp/dist-stream-one
      run_stage dist-stream-nccl 120 python3 -m torch.distributed.run --no-python --standalone --nproc-per-node=2 $B \
        $st dist.backend=nccl stream.output_dir=/tmp/dist-stream-nccl
    fi
    if has ml1m && [[ -f .deps/data/ml-1m.txt ]]; then
      # The same 30-epoch run as on the CPU (docs/RESULTS.md), compared by its validation
      # NDCG@10 per epoch; bigger CE chunks on the GPU (few, large matmuls), the same arithmetic.
      run_stage ml1m-train 240 $B train -c configs/ml1m-sasrec.yaml train.device=cuda data.path=.deps/data/ml-1m.txt \
        train.epochs=30 train.ce_chunk=8192 train.output_dir=/tmp/freshrec-ml1m train.log_every_seconds=30
      cp /tmp/freshrec-ml1m/history.jsonl "$out/ml1m-history.jsonl" 2>/dev/null || true
      run_stage ml1m-eval 60 $B eval --checkpoint /tmp/freshrec-ml1m/best.pt data.path=.deps/data/ml-1m.txt \
        --json "$out/ml1m-eval.json"
    fi
    if has distill && [[ -f .deps/data/ml-1m.txt ]]; then  # large teacher, student with and without it
      d="data.path=.deps/data/ml-1m.txt train.device=cuda train.precision=tf32 train.ce_chunk=8192 train.log_every_seconds=60"
      run_stage distill-teacher 420 $B train -c configs/ml1m-teacher-large.yaml $d train.output_dir=/tmp/kd/teacher
      run_stage distill-student 300 $B distill --teacher /tmp/kd/teacher/best.pt -c configs/ml1m-student.yaml $d \
        train.output_dir=/tmp/kd/student
      run_stage distill-alone 300 $B train -c configs/ml1m-student.yaml $d train.output_dir=/tmp/kd/alone
      for m in teacher student alone; do
        run_stage eval-$m 60 $B eval --checkpoint /tmp/kd/$m/best.pt data.path=.deps/data/ml-1m.txt --json "$out/kd-$m.json"
        $B export --checkpoint /tmp/kd/$m/best.pt -o /tmp/kd/$m.ts >/dev/null 2>&1 &&
          run_stage serve-$m 120 $B bench serve --model /tmp/kd/$m.ts --requests 1000 --history 200 && cp /tmp/kd/$m.ts "$out/"
      done
    fi
    echo "== stages"; cat "$out/stages.txt"
    for f in "$out"/tests.txt "$out"/tests-gdb.txt "$out"/dist-*.txt "$out"/bench-*.txt "$out"/ml1m-*.txt "$out"/eval-*.txt "$out"/serve-*.txt; do
      [[ -f "$f" ]] && { echo "== $f"; grep -v "^\[.*\] \[info\]" "$f" | tail -n 14; }
    done
    exit $status
    ;;
  *)
    echo "usage: $0 fetch | run OUT_DIR" >&2; exit 2 ;;
esac

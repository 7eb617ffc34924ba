#!/usr/bin/env bash
# Host work per stream event against history length. Two generated logs of the same size and
# catalogue: 21,000 users with 10 events each, and 21 users with 10,000 each, both interleaved in
# time. The first 95% of each trains a small teacher and fills the histories; the last 5% (10,500
# events) streams through `freshrec stream`, which prints the host's microseconds per event (reading,
# batching, readout: everything but the model's and the device's work). Prints both and their ratio,
# and as the baseline the long histories once more with stream.history_keep=20000 (every item kept as
# well, but a bounded store builds each event's excluded items on the host by walking its history).
#   bash tools/bench/history-length.sh [WORK_DIR]     (default runs/history-length)
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${FRESHREC_BUILD_DIR:-build}"
python="${PYTHON:-.venv/bin/python}"
[[ -x "$python" ]] || python=python3
work="${1:-runs/history-length}"
mkdir -p "$work"
"$python" - "$work" <<'PY'
import random, sys
work = sys.argv[1]
def write(path, users, per_user, items):
    rng = random.Random(7)
    with open(path, "w") as f:
        f.write("user,item,timestamp\n")
        t = 0
        for k in range(per_user):          # event k of every user before event k + 1 of any
            for u in range(users):
                f.write(f"u{u},{rng.randrange(1, items + 1)},{t}\n")
                t += 1
write(f"{work}/short.csv", 21000, 10, 20000)
write(f"{work}/long.csv", 21, 10000, 20000)
PY
declare -A host
for run in short long long-walk; do
  log="${run%-walk}"
  keep=0
  [[ "$run" == *-walk ]] && keep=20000
  out="$("$build/freshrec" --log-level warn stream -c configs/demo.yaml data.format=csv data.path="$work/$log.csv" \
        data.csv.time=timestamp model.hidden=32 model.blocks=1 model.heads=1 model.maxlen=50 train.epochs=1 \
        student.hidden=0 stream.publish_every=0 stream.pretrain_fraction=0.95 stream.history_keep=$keep \
        stream.output_dir="$work/$run")"
  host[$run]="$(sed -n 's/^host work (source, batching, readout): \([0-9.]*\) us an event$/\1/p' <<<"$out")"
  echo "== $run (stream.history_keep=$keep)"
  grep -E "^continual |  (source|batching|excluded|ranking) |host work" <<<"$out"
done
"$python" -c "import sys; s, l, w = map(float, sys.argv[1:]); print(f'host us/event: 10-item histories {s:.1f}, 10,000-item histories {l:.1f} (ratio {l / s:.2f}); walking the 10,000-item histories on the host {w:.1f} (ratio {w / s:.2f})')" \
  "${host[short]}" "${host[long]}" "${host[long-walk]}"

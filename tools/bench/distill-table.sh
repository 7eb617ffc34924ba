#!/usr/bin/env bash
# The MovieLens-1M distillation table of docs/RESULTS.md: a teacher (configs/ml1m-kd-teacher.yaml),
# a student a quarter of its width trained alone and distilled from it (configs/ml1m-kd-student.yaml,
# three seeds each), the distillation options of the literature one at a time on seed 1, and the
# serving cost of the exported teacher and student, each row a real run of the command it names.
#   bash tools/bench/distill-table.sh [OUT_DIR] [ROW ...]
# Rows: teacher, alone-s1..3, distilled-s1..3, temperature-4, alpha-0.2, top-k-targets, ranking,
# init-from-teacher, the size curve alone-h16, distilled-h16, alone-h64, distilled-h64 (students of
# width 16 and 64 beside the width-32 rows, seed 1), serve. With no ROW, all of them, in that order
# (the distilled rows need the teacher). THREADS=N runs the rows at N threads (train.threads=N) instead
# of the configs' 2, so that two rows can share a 2-core machine; walls.txt records it. Prints the
# table (markdown) from the runs' test.json files, walls.txt and serve.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/kd}
shift || true
bin=${FRESHREC_BIN:-./build/freshrec}
data=../shared/data/ml-1m-sasrec/ml-1m.txt
[[ -f "$data" ]] || { echo "distill-table: $data is missing (see ../shared/data/README.md)" >&2; exit 1; }
teacher_config=configs/ml1m-kd-teacher.yaml
student_config=configs/ml1m-kd-student.yaml
teacher=$out/teacher/best.pt
mkdir -p "$out"

declare -A commands=(
  [teacher]="train -c $teacher_config"
  [alone-s1]="train -c $student_config train.seed=1"
  [alone-s2]="train -c $student_config train.seed=2"
  [alone-s3]="train -c $student_config train.seed=3"
  [distilled-s1]="distill --teacher $teacher -c $student_config train.seed=1"
  [distilled-s2]="distill --teacher $teacher -c $student_config train.seed=2"
  [distilled-s3]="distill --teacher $teacher -c $student_config train.seed=3"
  [temperature-4]="distill --teacher $teacher -c $student_config train.seed=1 distill.temperature=4"
  [alpha-0.2]="distill --teacher $teacher -c $student_config train.seed=1 distill.alpha=0.2"
  [top-k-targets]="distill --teacher $teacher -c $student_config train.seed=1 distill.soft_targets=top_k distill.top_k=50"
  [ranking]="distill --teacher $teacher -c $student_config train.seed=1 distill.ranking_k=10 distill.ranking_weight=1"
  [init-from-teacher]="distill --teacher $teacher -c $student_config train.seed=1 distill.init_items=teacher"
  [alone-h16]="train -c $student_config train.seed=1 model.hidden=16"
  [distilled-h16]="distill --teacher $teacher -c $student_config train.seed=1 model.hidden=16"
  [alone-h64]="train -c $student_config train.seed=1 model.hidden=64"
  [distilled-h64]="distill --teacher $teacher -c $student_config train.seed=1 model.hidden=64"
)
order=(teacher alone-s1 alone-s2 alone-s3 distilled-s1 distilled-s2 distilled-s3 temperature-4 alpha-0.2 top-k-targets
       ranking init-from-teacher alone-h16 distilled-h16 alone-h64 distilled-h64 serve)
threads=()
[[ -z "${THREADS:-}" ]] || threads=("train.threads=$THREADS")
rows=("$@")
[[ ${#rows[@]} -gt 0 ]] || rows=("${order[@]}")
for row in "${rows[@]}"; do
  began=$(date +%s)
  if [[ $row == serve ]]; then
    # Serving cost of the exported teacher and students: per call at histories of 50 and 200,
    # one history a call and 64 a call, 2 threads (a model's latency depends on its shapes alone).
    : >"$out/serve.txt"
    # A model's serving cost is its shape's: any run of a width stands for it.
    for model in teacher distilled-s1 alone-h16 alone-h64; do
      [[ -f "$out/$model/best.pt" ]] || continue
      "$bin" --log-level warn export --checkpoint "$out/$model/best.pt" --out "$out/$model.ts" >/dev/null
      for history in 50 200; do
        for batch in 1 64; do
          requests=$(( batch == 1 ? 1000 : 64 * 40 ))
          echo "== $model history=$history batch=$batch" >>"$out/serve.txt"
          "$bin" --log-level warn bench serve --model "$out/$model.ts" --history "$history" --batch "$batch" \
            --requests "$requests" >>"$out/serve.txt" 2>&1
        done
      done
    done
  else
    [[ -n "${commands[$row]:-}" ]] || { echo "distill-table: unknown row $row" >&2; exit 1; }
    rm -rf "${out:?}/$row"
    # shellcheck disable=SC2086  # the command's words
    "$bin" --log-level warn ${commands[$row]} "${threads[@]}" "train.output_dir=$out/$row" >"$out/$row.log" 2>&1 ||
      { echo "distill-table: $row failed, see $out/$row.log" >&2; exit 1; }
  fi
  echo "$row $(( $(date +%s) - began )) ${THREADS:-}" >>"$out/walls.txt"
  echo "distill-table: $row done in $(( $(date +%s) - began )) s" >&2
done

python3 - "$out" <<'EOF'
import json, os, re, statistics, sys
out = sys.argv[1]
walls = {}
if os.path.exists(f"{out}/walls.txt"):
    for line in open(f"{out}/walls.txt"):
        name, seconds, *threads = line.split()
        walls[name] = f"{seconds} s" + (f" ({threads[0]} thread{'s' if threads[0] != '1' else ''})" if threads else "")
def load(row):
    path = f"{out}/{row}/test.json"
    return json.load(open(path)) if os.path.exists(path) else None
def cell(values):
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ({min(values):.4f} to {max(values):.4f})"
metrics = ["HR@10", "NDCG@10", "MRR"]
print("| row | command | parameters | best epochs | " + " | ".join(f"test {m}" for m in metrics) + " | wall |")
print("|---|---|---|---|" + "---|" * len(metrics) + "---|")
first = load("teacher") or load("alone-s1")
if first:
    pop = first["popularity_test"]
    print("| popularity | | 0 | | " + " | ".join(f"{pop[m]:.4f}" for m in metrics) + " | |")
groups = [("teacher", ["teacher"], "train -c configs/ml1m-kd-teacher.yaml"),
          ("student alone", ["alone-s1", "alone-s2", "alone-s3"], "train -c configs/ml1m-kd-student.yaml train.seed=S"),
          ("student distilled", ["distilled-s1", "distilled-s2", "distilled-s3"],
           "distill --teacher TEACHER -c configs/ml1m-kd-student.yaml train.seed=S"),
          ("distilled, temperature 4", ["temperature-4"], "... train.seed=1 distill.temperature=4"),
          ("distilled, alpha 0.2", ["alpha-0.2"], "... train.seed=1 distill.alpha=0.2"),
          ("distilled, soft targets over the teacher's top 50", ["top-k-targets"], "... train.seed=1 distill.soft_targets=top_k distill.top_k=50"),
          ("distilled, with ranking distillation (top 10, weight 1)", ["ranking"], "... train.seed=1 distill.ranking_k=10 distill.ranking_weight=1"),
          ("distilled, item table from the teacher's", ["init-from-teacher"], "... train.seed=1 distill.init_items=teacher"),
          ("student of width 16 alone", ["alone-h16"], "train -c configs/ml1m-kd-student.yaml train.seed=1 model.hidden=16"),
          ("student of width 16 distilled", ["distilled-h16"], "distill ... train.seed=1 model.hidden=16"),
          ("student of width 64 alone", ["alone-h64"], "train -c configs/ml1m-kd-student.yaml train.seed=1 model.hidden=64"),
          ("student of width 64 distilled", ["distilled-h64"], "distill ... train.seed=1 model.hidden=64")]
for label, names, command in groups:
    runs = [r for r in (load(n) for n in names) if r]
    if not runs:
        continue
    label += f", {len(runs)} seeds" if len(runs) > 1 else (", seed 1" if len(names) > 1 else "")
    epochs = ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in runs)
    wall = "; ".join(walls[n] for n in names if n in walls)
    print(f"| {label} | `{command}` | {runs[0]['parameters']:,} | {epochs} | "
          + " | ".join(cell([r['test'][m] for r in runs]) for m in metrics) + f" | {wall} |")
serve = f"{out}/serve.txt"
if os.path.exists(serve):
    print()
    print("| exported model | history | histories a call | direct p50 / p99 ms | direct requests/s | HTTP p50 / p99 ms | HTTP requests/s |")
    print("|---|---|---|---|---|---|---|")
    names = {"teacher": "teacher", "distilled-s1": "student (width 32)", "alone-h16": "student of width 16",
             "alone-h64": "student of width 64"}
    model = history = batch = None
    row = {}
    def flush():
        if row:
            print(f"| {model} | {history} | {batch} | {row['direct'][0]} / {row['direct'][1]} | {row['direct'][2]} | "
                  f"{row.get('http', ('', '', ''))[0]} / {row.get('http', ('', '', ''))[1]} | {row.get('http', ('', '', ''))[2]} |")
    for line in open(serve):
        m = re.match(r"== (\S+) history=(\d+) batch=(\d+)", line)
        if m:
            flush()
            model, history, batch = m.groups()
            model = names.get(model, model)
            row = {}
            continue
        numbers = re.findall(r"[0-9]+\.[0-9]+", line)
        if line.startswith("TorchScript call") and len(numbers) == 3:
            row["direct"] = numbers
        elif line.startswith("HTTP POST") and len(numbers) == 3:
            row["http"] = numbers
    flush()
EOF

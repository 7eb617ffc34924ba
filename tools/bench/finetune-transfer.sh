#!/usr/bin/env bash
# The transfer table of docs/FINETUNING.md: a SASRec pre-trained on MovieLens-1M with timestamps
# (configs/ml1m-pretrain.yaml) fine-tuned on ml-latest-small (configs/mlsmall-finetune.yaml), beside
# the same model trained there from scratch, each row a real run of the command it names.
#   bash tools/bench/finetune-transfer.sh [OUT_DIR] [ROW ...]
# Rows: scratch-s1..3 and full-s1..3 (the headline pair, three seeds each), full-s42 (the seed of the
# single rows that follow), lora (rank-3 adapters and the new items' rows alone), lora-item-r8 and
# lora-item-r32 (the same with an item adapter of rank 8 or 32 moving the frozen rows), lora-rows-trained,
# top-block, embeddings, frozen-known-rows, new-items-random, new-items-content (genres),
# same-item-lr. With no ROW, all of them. The pre-trained model must exist
# (SOURCE, default runs/ml1m-pretrain/best.pt: `freshrec train -c configs/ml1m-pretrain.yaml`).
# Prints the table (markdown) from the runs' test.json and source_test.json files.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/transfer}
shift || true
bin=${FRESHREC_BIN:-./build/freshrec}
source=${SOURCE:-runs/ml1m-pretrain/best.pt}
config=configs/mlsmall-finetune.yaml
data=../shared/data/ml-latest-small/ratings.csv
[[ -f "$data" ]] || { echo "finetune-transfer: $data is missing (see ../shared/data/README.md)" >&2; exit 1; }
[[ -f "$source" ]] || { echo "finetune-transfer: no pre-trained model at $source: run $bin train -c configs/ml1m-pretrain.yaml" >&2; exit 1; }
mkdir -p "$out"

declare -A commands=(
  [scratch-s1]="train -c $config train.seed=1"
  [scratch-s2]="train -c $config train.seed=2"
  [scratch-s3]="train -c $config train.seed=3"
  [full-s1]="finetune --from $source -c $config train.seed=1"
  [full-s2]="finetune --from $source -c $config train.seed=2"
  [full-s3]="finetune --from $source -c $config train.seed=3"
  [full-s42]="finetune --from $source -c $config"
  [top-block]="finetune --from $source -c $config finetune.train=top_blocks finetune.top_blocks=1"
  [embeddings]="finetune --from $source -c $config finetune.train=embeddings"
  [frozen-known-rows]="finetune --from $source -c $config finetune.known_rows=freeze"
  [new-items-random]="finetune --from $source -c $config finetune.new_items=random"
  [same-item-lr]="finetune --from $source -c $config finetune.item_lr=0"
  [new-items-content]="finetune --from $source -c $config finetune.new_items=content finetune.item_features=../shared/data/ml-latest-small/movies.csv"
  [lora-rows-trained]="finetune --from $source -c $config finetune.train=adapters finetune.lora_rank=3"
  [lora]="finetune --from $source -c $config finetune.train=adapters finetune.lora_rank=3 finetune.known_rows=freeze"
  [lora-item-r8]="finetune --from $source -c $config finetune.train=adapters finetune.lora_rank=3 finetune.known_rows=freeze finetune.item_lora_rank=8"
  [lora-item-r32]="finetune --from $source -c $config finetune.train=adapters finetune.lora_rank=3 finetune.known_rows=freeze finetune.item_lora_rank=32"
)
order=(scratch-s1 scratch-s2 scratch-s3 full-s1 full-s2 full-s3 full-s42 lora lora-item-r8 lora-item-r32 lora-rows-trained top-block embeddings frozen-known-rows
       new-items-random new-items-content same-item-lr)
rows=("$@")
[[ ${#rows[@]} -gt 0 ]] || rows=("${order[@]}")
for row in "${rows[@]}"; do
  [[ -n "${commands[$row]:-}" ]] || { echo "finetune-transfer: unknown row $row" >&2; exit 1; }
  rm -rf "${out:?}/$row"
  began=$(date +%s)
  # shellcheck disable=SC2086  # the command's words
  "$bin" --log-level warn ${commands[$row]} "train.output_dir=$out/$row" >"$out/$row.log" 2>&1 ||
    { echo "finetune-transfer: $row failed, see $out/$row.log" >&2; exit 1; }
  echo "$row $(( $(date +%s) - began ))" >>"$out/walls.txt"
  echo "finetune-transfer: $row done in $(( $(date +%s) - began )) s" >&2
done

python3 - "$out" "$source" <<'EOF'
import json, os, statistics, sys
out, source = sys.argv[1], sys.argv[2]
walls = {}
if os.path.exists(f"{out}/walls.txt"):
    for line in open(f"{out}/walls.txt"):
        name, seconds = line.split()
        walls[name] = int(seconds)
def load(row, name="test.json"):
    path = f"{out}/{row}/{name}"
    return json.load(open(path)) if os.path.exists(path) else None
def cell(values):
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} (min {min(values):.4f}, max {max(values):.4f})"
print("| row | what it runs | trained parameters | test HR@10 | test NDCG@10 | wall |")
print("|---|---|---|---|---|---|")
first = load("scratch-s1") or load("full-s1")
if first:
    pop = first["popularity_test"]
    print(f"| popularity | | 0 | {pop['HR@10']:.4f} | {pop['NDCG@10']:.4f} | |")
src = load("full-s1", "source_test.json")
if src:
    print(f"| pre-trained model as it is (its {src['test']['users']} users' test items it knows; {src['events_left_out']} events of unknown items left out) "
          f"| printed by each `finetune` (its own split: see below) | 0 | {src['test']['HR@10']:.4f} | {src['test']['NDCG@10']:.4f} | |")
groups = [("from scratch", ["scratch-s1", "scratch-s2", "scratch-s3"], "train -c configs/mlsmall-finetune.yaml train.seed=S"),
          ("full fine-tune", ["full-s1", "full-s2", "full-s3"], f"finetune --from {source} -c configs/mlsmall-finetune.yaml train.seed=S"),
          ("full fine-tune, train.seed=42 (the seed of every row below)", ["full-s42"], f"finetune --from {source} -c configs/mlsmall-finetune.yaml"),
          ("LoRA adapters (rank 3) and new items' rows only", ["lora"], "... finetune.train=adapters finetune.lora_rank=3 finetune.known_rows=freeze"),
          ("LoRA adapters (rank 3), new items' rows and an item adapter of rank 8 (known rows frozen)", ["lora-item-r8"],
           "... finetune.train=adapters finetune.lora_rank=3 finetune.known_rows=freeze finetune.item_lora_rank=8"),
          ("the same with an item adapter of rank 32", ["lora-item-r32"], "... finetune.item_lora_rank=32"),
          ("LoRA adapters (rank 3) and the whole item table", ["lora-rows-trained"], "... finetune.train=adapters finetune.lora_rank=3"),
          ("top block only", ["top-block"], "... finetune.train=top_blocks finetune.top_blocks=1"),
          ("embeddings only", ["embeddings"], "... finetune.train=embeddings"),
          ("known rows frozen", ["frozen-known-rows"], "... finetune.known_rows=freeze"),
          ("new rows random", ["new-items-random"], "... finetune.new_items=random"),
          ("new rows from genres", ["new-items-content"], "... finetune.new_items=content finetune.item_features=.../movies.csv"),
          ("item table at the transformer's rate", ["same-item-lr"], "... finetune.item_lr=0")]
for label, names, command in groups:
    runs = [load(n) for n in names]
    runs = [r for r in runs if r]
    if not runs:
        continue
    seeds = f", {len(runs)} seeds" if len(runs) > 1 else ""
    wall = "; ".join(f"{walls[n]} s" for n in names if n in walls)
    print(f"| {label}{seeds} | `{command}` | {runs[0].get('trained_parameters', runs[0]['parameters']):,} "
          f"| {cell([r['test']['HR@10'] for r in runs])} | {cell([r['test']['NDCG@10'] for r in runs])} | {wall} |")
EOF

#!/usr/bin/env bash
# Two-rank DDP training speed of the main job with find_unused_parameters on and off.
#
#   bash benchmarks/bench_ddp.sh [pairs]        # default 3 pairs, about 4 minutes on 2 CPU cores
#
# Needs the main job's teacher (run `accelerate launch examples/distill_vit.py` once first).
# Each run: `accelerate launch --multi_gpu --num_processes 2 examples/distill_vit.py --use_cpu`
# for 60 steps without evaluation, one torch thread per rank; the two settings alternate
# their order pair by pair. Prints one line per run: setting, pair, train_steps_per_second,
# train_runtime (s) and how many find_unused_parameters warnings the run logged.
set -euo pipefail
cd "$(dirname "$0")/.."
teacher=outputs/distill_vit/teacher
[ -d "$teacher" ] || { echo "no teacher in $teacher: run accelerate launch examples/distill_vit.py first" >&2; exit 1; }
pairs=${1:-3}
work=$(mktemp -d)
for pair in $(seq 1 "$pairs"); do
  if [ $((pair % 2)) -eq 1 ]; then order="true false"; else order="false true"; fi
  for setting in $order; do
    run="$work/${setting}_${pair}"
    OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 examples/distill_vit.py \
      --use_cpu --teacher_model_name_or_path "$teacher" --output_dir "$run" --max_steps 60 \
      --eval_strategy no --logging_steps 60 --disable_tqdm true \
      --ddp_find_unused_parameters "$setting" > "$run.log" 2>&1
    warnings=$(grep -c "find_unused_parameters=True" "$run.log" || true)
    python -c "import json, sys; m = json.load(open(sys.argv[1])); print(sys.argv[2], sys.argv[3], m['train_steps_per_second'], m['train_runtime'], 'warnings', sys.argv[4])" \
      "$run/all_results.json" "$setting" "$pair" "$warnings"
  done
done
rm -rf "$work"

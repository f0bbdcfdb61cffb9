#!/usr/bin/env bash
# The Fashion-MNIST lottery-ticket study (docs/results-fashion-mnist.md): every command, in order.
# Resumable: rerun it, or one part of it, after any interruption; a finished step only says so.
#
#   bash results/fashion-mnist/run.sh          every part, one after another
#   bash results/fashion-mnist/run.sh PART     one part: knee reference lane1 lane2 control band score records publish
#                                              (records: copy what the runs have so far, safe mid-study)
#
# As it was run (two runs at a time, one thread each, beside the Inception reference):
#   run.sh knee; then run.sh lane1 & run.sh lane2 & run.sh reference &; run.sh control when a lane was free
#   (it waits for A's round 0); run.sh band and run.sh score (their commands in two streams, beside the
#   lanes' last arms, D and E); run.sh publish. Two commands may not evaluate one run at once: the
#   second is refused, names the first, and goes next time.
# Run directories (weights) go to $RUNS, outside the repository; publish copies their small records
# into results/fashion-mnist/.
set -euo pipefail
cd "$(dirname "$0")/../.."  # python -m from the repository root
RUNS=${RUNS:-$HOME/pylth-runs/fashion-mnist}
OUT=results/fashion-mnist
export OMP_NUM_THREADS=1
case " $* " in
  *" records "*|*" publish "*) [ -d "$RUNS" ] || { echo "run.sh: RUNS=$RUNS does not exist: set RUNS to the study's folder" >&2; exit 2; } ;;
esac
mkdir -p "$RUNS"

DATA=(--dataset fashion-mnist --image-size 14)
NET=(--model-config ch=32,ch_mult=1:2:2,num_res_blocks=1,attn_resolutions=8,dropout=0)
TRAIN=(--batch-size 64 --lr 1e-3 --warmup 200 --ema-decay 0.995 --checkpoint-every 100)
PER_ROUND=(--fid-features classifier --fid-samples 1000 --sampler ddim --sample-steps 50 --sample-batch-size 250
           --cache-dir "$RUNS/cache")
ITERATIONS=2000  # per round: the knee the budget allows (see the knee part)
TICKET=("${DATA[@]}" "${NET[@]}" "${TRAIN[@]}" "${PER_ROUND[@]}" --iterations $ITERATIONS)
HEADLINE=(--fid-features inception --fid-samples 5000)  # sampler, steps and batch: the runs' own

A=$RUNS/A-layerwise-rewind; B=$RUNS/B-uniform-rewind; C=$RUNS/C-global-rewind
D=$RUNS/D-layerwise-reinit; E=$RUNS/E-random-rewind; F=$RUNS/F-layerwise-rewind-seed1
G=$RUNS/G-dense-retrained

knee() {  # the dense model's FID against training length: one run per learning rate, extended step by step
  local lr=$1; shift
  for n in "$@"; do
    if [ -f "$RUNS/knee-lr$lr/metrics-$n.json" ]; then echo "knee lr $lr, $n iterations: done"; continue; fi
    python -m pylth.train --out "$RUNS/knee-lr$lr" "${DATA[@]}" "${NET[@]}" "${TRAIN[@]/1e-3/$lr}" \
      "${PER_ROUND[@]}" --iterations "$n"
    cp "$RUNS/knee-lr$lr/metrics.json" "$RUNS/knee-lr$lr/metrics-$n.json"
    cp "$RUNS/knee-lr$lr/samples.png" "$RUNS/knee-lr$lr/samples-$n.png"
  done
}

ticket() { python -m pylth.find_ticket "${TICKET[@]}" "$@"; }

round0_of() {  # wait until a run has finished its round 0 (the arms that share it start then)
  until [ -s "$1/rounds.jsonl" ]; do sleep 60; done
}

part_knee() {
  knee 1e-3 500 1000 2000 3000 4000 6000
  knee 3e-4 500 1000
}

part_reference() {  # Inception statistics of all 60,000 train images at 14x14 (about 4 core-hours; resumable)
  python - "$RUNS/cache" <<'PY'
import sys
import torch
from pylth.ddpm.data import load_dataset
from pylth.evaluation.features import feature_extractor
from pylth.evaluation.fid import reference_statistics
torch.set_num_threads(1)
dataset = load_dataset("fashion-mnist", train=True, image_size=14)
extract = feature_extractor("fashion-mnist", dataset, fid_features="inception", cache_dir=sys.argv[1])
reference_statistics("fashion-mnist", dataset, extract, sys.argv[1], batch_size=250)
print("Inception reference statistics: done")
PY
}

part_lane1() {
  ticket --strategy layerwise --reset rewind --seed 0 --target-sparsity "${A_TARGET:-0.95}" --out "$A"
  ticket --strategy global --reset rewind --seed 0 --target-sparsity 0.95 --dense-from "$A" --out "$C"
  ticket --strategy random --reset rewind --seed 0 --target-sparsity 0.9 --dense-from "$A" --out "$E"
}

part_lane2() {
  # F's own dense round first (its pruning rounds wait for B); once it has one, straight on
  [ -s "$F/rounds.jsonl" ] || ticket --strategy layerwise --reset rewind --seed 1 --target-sparsity 0.9 --max-rounds 0 --out "$F"
  round0_of "$A"
  ticket --strategy uniform --reset rewind --seed 0 --target-sparsity 0.95 --dense-from "$A" --out "$B"
  ticket --strategy layerwise --reset rewind --seed 1 --target-sparsity 0.9 --out "$F"
  ticket --strategy layerwise --reset reinit --seed 0 --target-sparsity 0.9 --dense-from "$A" --out "$D"
}

part_control() {  # A's dense model put through one round's retraining (rewind to theta_tau, fresh Adam, 1,900
  # iterations) with 11 of its 1.1 M weights pruned: what the retraining alone does to the FID
  round0_of "$A"
  ticket --strategy global --reset rewind --seed 0 --prune-ratio 0.00001 --max-rounds 1 --dense-from "$A" --out "$G"
}

part_band() {  # the per-round score's noise: three sampling seeds (classifier features, the runs' own settings)
  # for both dense models, the control, the tickets nearest 90 and 95 % and the controls D and E at 90 %
  python -m pylth.evaluate "$A" --rounds 0 --seeds 0,1,2
  python -m pylth.evaluate "$F" --rounds 0 --seeds 0,1,2
  python -m pylth.evaluate "$G" --rounds 1 --seeds 0,1,2
  python -m pylth.evaluate "$A" --sparsity 0.9,0.95 --seeds 0,1,2
  python -m pylth.evaluate "$B" --sparsity 0.9,0.95 --seeds 0,1,2
  python -m pylth.evaluate "$C" --sparsity 0.9,0.95 --seeds 0,1,2
  python -m pylth.evaluate "$D" --sparsity 0.9 --seeds 0,1,2
  python -m pylth.evaluate "$E" --sparsity 0.9 --seeds 0,1,2
}

part_score() {  # headline scores: Inception FID and KID, 5,000 samples, against all 60,000 train images
  # (about 20 CPU-minutes each: 11 took 3.53 CPU-hours). The dense band: A's dense model at three sampling seeds, F's (the
  # second dense seed) at one. G, D and E have classifier scores only (their band is in part_band):
  # Inception for them did not fit the budget.
  python -m pylth.evaluate "$A" --rounds 0 --seeds 0,1,2 "${HEADLINE[@]}"
  python -m pylth.evaluate "$F" --rounds 0 --seeds 0 "${HEADLINE[@]}"
  python -m pylth.evaluate "$A" --sparsity "0.9,0.95${A_TARGET:+,$A_TARGET}" "${HEADLINE[@]}"
  python -m pylth.evaluate "$B" --sparsity 0.9,0.95 "${HEADLINE[@]}"
  python -m pylth.evaluate "$B" --rounds 14 "${HEADLINE[@]}"  # 95.6 %: B's nearest to 95 % (94.5 %) is below it
  python -m pylth.evaluate "$C" --sparsity 0.9,0.95 "${HEADLINE[@]}"
}

part_records() {  # the small records of every run started so far, and the knee (no weights): safe mid-study
  for run in "$A" "$B" "$C" "$D" "$E" "$F" "$G"; do
    [ -f "$run/rounds.jsonl" ] || continue
    mkdir -p "$OUT/records/$(basename "$run")"
    cp "$run"/{config.json,rounds.jsonl} "$OUT/records/$(basename "$run")/"
    if [ -f "$run/evaluations.jsonl" ]; then cp "$run/evaluations.jsonl" "$OUT/records/$(basename "$run")/"; fi
  done
  python - "$RUNS" "$OUT" <<'PY'
import glob, json, os, shutil, sys
runs, out = sys.argv[1:]
if not glob.glob(f"{runs}/knee-lr*/metrics-*.json"):  # a wrong $RUNS must not empty the committed record
    sys.exit(f"run.sh records: no knee measurements under {runs} (is RUNS set to the study's folder?)")
rows = []
for lr in ("1e-3", "3e-4"):
    for path in sorted(glob.glob(f"{runs}/knee-lr{lr}/metrics-*.json")):
        m = json.load(open(path))
        rows.append(dict(lr=lr, iterations=m["iterations"], fid=m["fid"], kid=m["kid"], loss=m["loss"],
                         fid_features=m["fid_features"], samples=m["num_samples"]))
rows.sort(key=lambda r: (r["lr"], r["iterations"]))
with open(f"{out}/knee.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
for n in (500, 2000, 6000):  # what the dense model draws before, at and past the chosen length
    if os.path.exists(f"{runs}/knee-lr1e-3/samples-{n}.png"):
        shutil.copy(f"{runs}/knee-lr1e-3/samples-{n}.png", f"{out}/knee-samples-{n}.png")
PY
}

inputs_digest() {  # what publish reads: this script and every run's records (digests, no paths)
  echo "$(sha256sum < "$OUT/run.sh" | cut -c1-64)  run.sh"
  local run f
  for run in "$A" "$B" "$C" "$D" "$E" "$F" "$G"; do
    for f in config.json rounds.jsonl evaluations.jsonl; do
      if [ -f "$run/$f" ]; then echo "$(sha256sum < "$run/$f" | cut -c1-64)  $(basename "$run")/$f"; fi
    done
  done
}

part_publish() {  # the records behind docs/results-fashion-mnist.md (no weights); the arms started so far
  local stamp="$OUT/published-inputs.sha256"  # delete it to publish again with changed code
  local inputs; inputs=$(inputs_digest)  # read first: a score landing mid-publish makes the next publish redo it
  if [ -f "$stamp" ] && [ "$inputs" = "$(cat "$stamp")" ]; then
    echo "publish: done (run.sh and the runs' records are those $stamp lists)"; return
  fi
  local runs=() labels="" run
  for run in "$A" "$B" "$C" "$D" "$E" "$F"; do
    if [ -s "$run/rounds.jsonl" ]; then runs+=("$run"); labels+="${labels:+,}$(basename "$run")"; fi
  done
  python -m pylth.compare "${runs[@]}" --labels "$labels" --out "$OUT/compare-classifier" \
    --title "Fashion-MNIST 14x14: FID (classifier features, 1,000 samples) every round"
  if grep -qs '"fid_features": "inception"' "${runs[@]/%//evaluations.jsonl}"; then
    python -m pylth.compare "${runs[@]}" --labels "$labels" --out "$OUT/compare-inception" \
      --evaluation fid_features=inception,fid_samples=5000 --title "Fashion-MNIST 14x14: Inception FID, 5,000 samples"
    python -m pylth.compare "${runs[@]}" --labels "$labels" --out "$OUT/compare-kid" \
      --evaluation fid_features=inception,fid_samples=5000 --metric kid --title "Fashion-MNIST 14x14: KID (Inception)"
  fi
  python -m pylth.cka "$A" "$F" --out "$OUT/cka"  # the tickets: the last round both finished
  python -m pylth.cka "$A" "$F" --round 0 --out "$OUT/cka-dense"  # the two dense models: the control
  part_records
  python - "$RUNS" "$OUT" <<'PY'
import glob, json, os, shutil, sys
runs, out = sys.argv[1:]
# the two sample grids: the dense model, and the best ticket at >= 90 % sparsity (Inception FID)
a = f"{runs}/A-layerwise-rewind"
shutil.copy(f"{a}/round_00/samples.png", f"{out}/samples-dense.png")
best = None
for run in sorted(glob.glob(f"{runs}/[A-F]-*")):
    for line in open(f"{run}/evaluations.jsonl") if os.path.exists(f"{run}/evaluations.jsonl") else []:
        row = json.loads(line)
        if row["fid_features"] == "inception" and row["sparsity"] >= 0.9 and (best is None or row["fid"] < best[0]):
            best = (row["fid"], run, row["round"])
if best is not None:
    shutil.copy(f"{best[1]}/round_{best[2]:02d}/samples.png", f"{out}/samples-best-ticket.png")
    print(f"best ticket at >= 90 %: {os.path.basename(best[1])} round {best[2]}, Inception FID {best[0]:.2f}")
PY
  python "$OUT/tables.py" --into docs/results-fashion-mnist.md  # the page's quoted tables, from these records
  echo "$inputs" > "$stamp"
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(knee reference lane1 lane2 control band score publish)
for part in "${parts[@]}"; do
  case "$part" in
    knee|reference|lane1|lane2|control|band|score|records|publish) "part_$part" ;;
    *) echo "run.sh: unknown part $part (knee reference lane1 lane2 control band score records publish)" >&2; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# The results table's CPU rows: the ink controls (untrained; SigComp2011 seeds, CEDAR folds, raw
# and normalised ink); the best recipe on SigComp2011 (3 seeds = 3 writer splits; K = 1 and 5
# references; tested on CEDAR too) and on CEDAR (5 writer-disjoint folds; tested on SigComp2011
# too; on folds 0-2 also K = 5 and 10 with each enrolment, GroupNorm + GAP, normalised ink);
# SigComp2011 with normalised ink and GroupNorm + GAP (3 seeds, K = 1 and 5, tested on CEDAR too);
# the best recipe (configs/best.py: an ensemble of 3 networks on normalised ink with the writer
# loss, svm_pair enrolment; its one network, and svm_scaled, as ablations) on CEDAR's 5 folds and
# SigComp2011's 3 seeds; its one network on SigComp2011's raw ink (3 seeds);
# the SigNet design on SigComp2011 (3 seeds, float32, ~20-30 min each here); and the loss
# ablation (contrastive and triplet in place of BCE, seed 0). Every run lands in results/<row>/<run>/ through scripts/run_result.py, which
# trains once per workdir and skips a training that already finished, so the script resumes.
#
#     SIAMJAX_DATA_DIR=../shared/datasets bash scripts/cpu_results.sh
#     SEEDS="0" FOLDS="" DESIGN_SEEDS="" LOSSES="" bash scripts/cpu_results.sh   # a subset
#
# The design's CEDAR folds (and bf16 design rows) are for a GPU: scripts/gpu_results.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
SEEDS="${SEEDS-0 1 2}"
FOLDS="${FOLDS-0 1 2 3 4}"
DESIGN_SEEDS="${DESIGN_SEEDS-0 1 2}"
LOSSES="${LOSSES-contrastive triplet}"
LOGS="${LOGS:-workdirs/results/logs}"
ENROL_FOLDS="${ENROL_FOLDS-0 1 2}"
BEST_FOLDS="${BEST_FOLDS-3 4}"
RECIPE_FOLDS="${RECIPE_FOLDS-0 1 2 3 4}"
ENSEMBLE_FOLDS="${ENSEMBLE_FOLDS-0 1 2 3 4}"
ENSEMBLE_SEEDS="${ENSEMBLE_SEEDS-0 1 2}"
RAW_SEEDS="${RAW_SEEDS-0 1 2}"
mkdir -p "$LOGS"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1

run() {  # run <log name> <run_result.py arguments...>
  local name="$1"
  shift
  echo "$(date +%T) $name"
  "$PYTHON" scripts/run_result.py "$@" >"$LOGS/$name.log" 2>&1 || {
    echo "failed: $name (see $LOGS/$name.log)" >&2
    return 1
  }
}

for seed in $SEEDS; do
  args=(-- --config=configs/sigcomp_best.py "--config.seed=$seed")
  run "sigcomp_best_seed$seed" --row sigcomp2011_best --run "seed$seed" --order 20 "${args[@]}"
  for k in 5; do
    run "sigcomp_best_k${k}_seed$seed" --row "sigcomp2011_best_k$k" --train_row sigcomp2011_best \
      --run "seed$seed" --order 21 \
      --eval_args="--config.eval.references=$k" "${args[@]}"
  done
  run "sigcomp_best_to_cedar_seed$seed" --row sigcomp2011_best_to_cedar \
    --train_row sigcomp2011_best --run "seed$seed" --order 40 \
    --eval_args="--config.eval.dataset=cedar" "${args[@]}"
  # The headline: normalised ink (the scan's darkness gives nothing away), GroupNorm + GAP.
  norm=(-- --config=configs/sigcomp_best.py --config.model.norm=group --config.model.pool=gap
    --config.real.ink=normalized "--config.seed=$seed")
  train=sigcomp2011_best_gap_gn_ink_normalized
  run "sigcomp_gapnorm_seed$seed" --row "$train" --run "seed$seed" --order 24 "${norm[@]}"
  run "sigcomp_gapnorm_k5_seed$seed" --row "${train}_k5" --train_row "$train" --run "seed$seed" \
    --order 25 --eval_args="--config.eval.references=5" "${norm[@]}"
  run "sigcomp_gapnorm_k5_svm_seed$seed" --row "${train}_k5_svm" --train_row "$train" \
    --run "seed$seed" --order 26 \
    --eval_args="--config.eval.references=5 --config.eval.enrollment=svm" "${norm[@]}"
  run "sigcomp_gapnorm_to_cedar_seed$seed" --row "${train}_to_cedar" --train_row "$train" \
    --run "seed$seed" --order 42 --eval_args="--config.eval.dataset=cedar" "${norm[@]}"
done

# Ablation: the same recipe without augmentation (seed 0), on SigComp2011 and across to CEDAR.
if [ "${ABLATIONS:-1}" = 1 ]; then
  noaug=(--config.augment.noise_std=0 --config.augment.blur_prob=0 --config.augment.max_shift=0
    --config.augment.max_rotation=0 --config.augment.max_scale=0 --config.augment.max_shear=0)
  args=(-- --config=configs/sigcomp_best.py --config.seed=0 "${noaug[@]}")
  run sigcomp_best_noaug_seed0 --row sigcomp2011_best_noaug --run seed0 --order 50 "${args[@]}"
  run sigcomp_best_noaug_to_cedar_seed0 --row sigcomp2011_best_noaug_to_cedar \
    --train_row sigcomp2011_best_noaug --run seed0 --order 51 \
    --eval_args="--config.eval.dataset=cedar" "${args[@]}"
fi

for fold in $FOLDS; do
  args=(-- --config=configs/cedar_best.py --config.split.method=kfold "--config.split.fold=$fold")
  run "cedar_best_fold$fold" --row cedar_best_kfold --run "fold$fold" --order 30 "${args[@]}"
  run "cedar_best_to_sigcomp_fold$fold" --row cedar_best_to_sigcomp2011 \
    --train_row cedar_best_kfold --run "fold$fold" --order 41 \
    --eval_args="--config.eval.dataset=sigcomp2011" "${args[@]}"
done

# The original design (configs/sigcomp.py: SigNet, signed difference, Adagrad), float32 on the CPU.
for seed in $DESIGN_SEEDS; do
  args=(-- --config=configs/sigcomp.py "--config.seed=$seed")
  run "sigcomp_signet_seed$seed" --row sigcomp2011_signet --run "seed$seed" --order 10 "${args[@]}"
  for k in 5; do
    run "sigcomp_signet_k${k}_seed$seed" --row "sigcomp2011_signet_k$k" \
      --train_row sigcomp2011_signet --run "seed$seed" --order 11 \
      --eval_args="--config.eval.references=$k" "${args[@]}"
  done
  run "sigcomp_signet_to_cedar_seed$seed" --row sigcomp2011_to_cedar \
    --train_row sigcomp2011_signet --run "seed$seed" --order 13 \
    --eval_args="--config.eval.dataset=cedar" "${args[@]}"
done

# The ink controls: nothing trained, eval.py's trials and threshold (workdirs hold only reports).
for scorer in ink ink_pair; do
  suffix=$([ "$scorer" = ink ] && echo "" || echo "_pair")
  for seed in $SEEDS; do
    run "sigcomp_${scorer}_seed$seed" --row "sigcomp2011_ink_baseline$suffix" --run "seed$seed" \
      --order 5 --workdirs workdirs/ink -- --config=configs/sigcomp.py "--config.seed=$seed" \
      "--config.eval.scorer=$scorer"
    run "sigcomp_norm_${scorer}_seed$seed" --row "sigcomp2011_ink_normalized_baseline$suffix" \
      --run "seed$seed" --order 6 --workdirs workdirs/ink -- --config=configs/sigcomp_best.py \
      --config.real.ink=normalized "--config.seed=$seed" "--config.eval.scorer=$scorer"
  done
  for fold in $FOLDS; do
    run "cedar_${scorer}_fold$fold" --row "cedar_ink_baseline$suffix" --run "fold$fold" --order 29 \
      --workdirs workdirs/ink -- --config=configs/cedar_best.py --config.split.method=kfold \
      "--config.split.fold=$fold" "--config.eval.scorer=$scorer"
  done
  for fold in $ENROL_FOLDS; do
    run "cedar_norm_${scorer}_fold$fold" --row "cedar_ink_normalized_baseline$suffix" \
      --run "fold$fold" --order 29 --workdirs workdirs/ink -- --config=configs/cedar_best.py \
      --config.real.ink=normalized --config.split.method=kfold "--config.split.fold=$fold" \
      "--config.eval.scorer=$scorer"
  done
done

enrolled() {  # enrolled <train row> <order> <"K method" ...> -- <train/eval args>: K-reference rows
  local train="$1" order="$2" specs=() spec k method row
  shift 2
  while [ "$1" != -- ]; do
    specs+=("$1")
    shift
  done
  for spec in "${specs[@]}"; do
    read -r k method <<< "$spec"
    row="${train}_k$k"
    [ "$method" != none ] && row="${row}_$method"
    [ "$k" = 1 ] && row="${train}_$method"
    run "${row}_fold$fold" --row "$row" --train_row "$train" --run "fold$fold" --order "$order" \
      --eval_args="--config.eval.references=$k --config.eval.enrollment=$method" "$@"
  done
}

best_recipe_rows() {  # best_recipe_rows -- <train/eval args>: the best recipe's rows of one CEDAR
  # fold, on the cedar_best_ink_normalized training (configs/best.py's model): svm_pair (the
  # recipe's enrolment) and svm_scaled (its ablation) with K references, and across to SigComp2011.
  enrolled cedar_best_ink_normalized 35 "1 svm_scaled" "5 svm_scaled" "10 svm_scaled" "12 svm_scaled" \
    "1 svm_pair" "5 svm_pair" "10 svm_pair" "12 svm_pair" "$@"
  local method
  for method in svm_scaled svm_pair; do
    run "cedar_norm_${method}_to_sigcomp_fold$fold" \
      --row "cedar_best_ink_normalized_${method}_to_sigcomp2011" \
      --train_row cedar_best_ink_normalized --run "fold$fold" --order 43 \
      --eval_args="--config.eval.dataset=sigcomp2011 --config.eval.enrollment=$method" "$@"
  done
}

# CEDAR, folds 0-2: K references with each enrolment; GroupNorm + GAP; normalised ink.
for fold in $ENROL_FOLDS; do
  args=(-- --config=configs/cedar_best.py --config.split.method=kfold "--config.split.fold=$fold")
  enrolled cedar_best_kfold 31 "5 none" "10 none" "1 svm" "5 svm" "10 svm" "5 znorm" "10 znorm" \
    "1 svm_scaled" "5 svm_scaled" "10 svm_scaled" "${args[@]}"
  gap=(-- --config=configs/cedar_best.py --config.model.norm=group --config.model.pool=gap
    --config.split.method=kfold "--config.split.fold=$fold")
  run "cedar_gap_fold$fold" --row cedar_best_gap_gn --run "fold$fold" --order 32 "${gap[@]}"
  enrolled cedar_best_gap_gn 33 "10 none" "1 svm" "5 svm" "10 svm" "10 svm_scaled" "${gap[@]}"
  norm=(-- --config=configs/cedar_best.py --config.real.ink=normalized --config.split.method=kfold
    "--config.split.fold=$fold")
  run "cedar_norm_fold$fold" --row cedar_best_ink_normalized --run "fold$fold" --order 34 "${norm[@]}"
  run "cedar_norm_k10_svm_fold$fold" --row cedar_best_ink_normalized_k10_svm \
    --train_row cedar_best_ink_normalized --run "fold$fold" --order 35 \
    --eval_args="--config.eval.references=10 --config.eval.enrollment=svm" "${norm[@]}"
  best_recipe_rows "${norm[@]}"
  gapnorm=(-- --config=configs/cedar_best.py --config.model.norm=group --config.model.pool=gap
    --config.real.ink=normalized --config.split.method=kfold "--config.split.fold=$fold")
  run "cedar_gapnorm_fold$fold" --row cedar_best_gap_gn_ink_normalized --run "fold$fold" \
    --order 36 "${gapnorm[@]}"
  enrolled cedar_best_gap_gn_ink_normalized 37 "10 none" "10 svm_scaled" "${gapnorm[@]}"
  run "cedar_gapnorm_to_sigcomp_fold$fold" --row cedar_best_gap_gn_ink_normalized_to_sigcomp2011 \
    --train_row cedar_best_gap_gn_ink_normalized --run "fold$fold" --order 43 \
    --eval_args="--config.eval.dataset=sigcomp2011" "${gapnorm[@]}"
done

# More writers: CEDAR and SigComp2011 trained together (normalised ink), judged on each (folds 0-2).
for fold in $ENROL_FOLDS; do
  joint=(-- --config=configs/cedar_best.py --config.real.ink=normalized
    --config.dataset=cedar+sigcomp2011 --config.split.method=kfold "--config.split.fold=$fold")
  train=cedar_best_ink_normalized_joint
  run "cedar_joint_fold$fold" --row "$train" --run "fold$fold" --order 38 \
    --eval_args="--config.eval.dataset=cedar" "${joint[@]}"
  run "cedar_joint_k10_svm_scaled_fold$fold" --row "${train}_k10_svm_scaled" --train_row "$train" \
    --run "fold$fold" --order 38 --eval_args="--config.eval.dataset=cedar \
    --config.eval.references=10 --config.eval.enrollment=svm_scaled" "${joint[@]}"
  run "cedar_joint_on_sigcomp_fold$fold" --row "${train}_on_sigcomp2011" --train_row "$train" \
    --run "fold$fold" --order 39 --eval_args="--config.eval.dataset=sigcomp2011" "${joint[@]}"
done

# The best recipe (configs/best.py: the network above on normalised ink, svm_pair enrolment) on
# CEDAR's folds 3-4 (folds 0-2 are the loop above) and on SigComp2011 (3 seeds).
for fold in $BEST_FOLDS; do
  norm=(-- --config=configs/cedar_best.py --config.real.ink=normalized --config.split.method=kfold
    "--config.split.fold=$fold")
  run "cedar_norm_fold$fold" --row cedar_best_ink_normalized --run "fold$fold" --order 34 "${norm[@]}"
  best_recipe_rows "${norm[@]}"
done
for seed in $SEEDS; do
  # configs/best.py before it gained the writer-classification loss (these rows are its ablation).
  best=(-- --config=configs/best.py --config.dataset=sigcomp2011 "--config.seed=$seed"
    --config.model.writer_classes=0 --config.writer_loss_weight=0.0 --config.model.members=1)
  train=sigcomp2011_best_ink_normalized_svm_scaled
  run "sigcomp_bestrecipe_seed$seed" --row "$train" --run "seed$seed" --order 22 \
    --eval_args="--config.eval.enrollment=svm_scaled" "${best[@]}"
  run "sigcomp_bestrecipe_fused_seed$seed" --row sigcomp2011_best_ink_normalized \
    --train_row "$train" --run "seed$seed" --order 22 --eval_args="--config.eval.enrollment=none" \
    "${best[@]}"
  for method in svm_scaled svm_pair; do
    [ "$method" = svm_pair ] && run "sigcomp_bestrecipe_${method}_seed$seed" \
      --row "sigcomp2011_best_ink_normalized_$method" --train_row "$train" --run "seed$seed" \
      --order 22 --eval_args="--config.eval.enrollment=$method" "${best[@]}"
    run "sigcomp_bestrecipe_k5_${method}_seed$seed" \
      --row "sigcomp2011_best_ink_normalized_k5_$method" --train_row "$train" --run "seed$seed" \
      --order 23 --eval_args="--config.eval.references=5 --config.eval.enrollment=$method" \
      "${best[@]}"
    run "sigcomp_bestrecipe_${method}_to_cedar_seed$seed" \
      --row "sigcomp2011_best_ink_normalized_${method}_to_cedar" --train_row "$train" \
      --run "seed$seed" --order 41 \
      --eval_args="--config.eval.dataset=cedar --config.eval.enrollment=$method" "${best[@]}"
  done
done

# recipe_rows <log> <row> <run> <order> <"K ..."> <other dataset> -- <train/eval args>: one run of
# a recipe (row <row>), its K-reference rows (<row>_k<K>) and its test on the other dataset
# (<row>_to_<other>, order + 1), all from the one training.
recipe_rows() {
  local log="$1" row="$2" name="$3" order="$4" ks="$5" other="$6"
  shift 6
  run "${log}_$name" --row "$row" --run "$name" --order "$order" "$@"
  for k in $ks; do
    run "${log}_k${k}_$name" --row "${row}_k$k" --train_row "$row" --run "$name" \
      --order "$order" --eval_args="--config.eval.references=$k" "$@"
  done
  run "${log}_to_${other}_$name" --row "${row}_to_$other" --train_row "$row" --run "$name" \
    --order "$((order + 1))" --eval_args="--config.eval.dataset=$other" "$@"
}

# The best recipe's one network (configs/best.py with one member: normalised ink, the
# writer-classification loss, svm_pair enrolment) on CEDAR's 5 folds (K = 1, 5, 10, 12; tested on
# SigComp2011 too) and SigComp2011's 3 seeds (K = 1 and 5; tested on CEDAR too): the ensemble's
# ablation.
for fold in $RECIPE_FOLDS; do
  recipe_rows cedar_recipe cedar_best_recipe "fold$fold" 44 "5 10 12" sigcomp2011 -- \
    --config=configs/best.py --config.split.method=kfold "--config.split.fold=$fold" \
    --config.model.members=1
done
for seed in $SEEDS; do
  recipe_rows sigcomp_recipe sigcomp2011_best_recipe "seed$seed" 46 5 cedar -- \
    --config=configs/best.py --config.dataset=sigcomp2011 "--config.seed=$seed" \
    --config.model.members=1
done

# The best recipe as its one command (configs/best.py: an ensemble of 3 of the networks above) on
# CEDAR's 5 folds and SigComp2011's seeds, the same rows; ~15 min of training per run on 2 cores.
for fold in $ENSEMBLE_FOLDS; do
  recipe_rows cedar_ensemble cedar_best_ensemble "fold$fold" 48 "5 10 12" sigcomp2011 -- \
    --config=configs/best.py --config.split.method=kfold "--config.split.fold=$fold"
done
for seed in $ENSEMBLE_SEEDS; do
  recipe_rows sigcomp_ensemble sigcomp2011_best_ensemble "seed$seed" 50 5 cedar -- \
    --config=configs/best.py --config.dataset=sigcomp2011 "--config.seed=$seed"
done

# The recipe's one network on SigComp2011's raw ink (its forgeries are scanned darker: the ink
# control's 13.2% is the bar), 3 seeds, K = 1 and 5, tested on CEDAR too; ~5 min per training.
for seed in $RAW_SEEDS; do
  recipe_rows sigcomp_raw sigcomp2011_best_recipe_raw "seed$seed" 56 5 cedar -- \
    --config=configs/best.py --config.dataset=sigcomp2011 "--config.seed=$seed" \
    --config.model.members=1 --config.real.ink=raw
done

# Ablation: the best recipe with an embedding loss in place of BCE (seed 0). The score is then the
# calibrated distance head (model.combine='distance'), so every metric is computed the same way.
for loss in $LOSSES; do
  args=(-- --config=configs/sigcomp_best.py --config.seed=0 "--config.loss=$loss"
    --config.model.combine=distance)
  run "sigcomp_best_${loss}_seed0" --row "sigcomp2011_best_$loss" --run seed0 --order 52 "${args[@]}"
done

"$PYTHON" scripts/results_table.py

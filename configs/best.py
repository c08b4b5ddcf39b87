"""The best recipe, chosen on validation writers across 3 CEDAR folds (never test writers):

    SIAMJAX_DATA_DIR=/path/to/datasets python train.py --config=configs/best.py --workdir=W \
        --config.split.method=kfold --config.split.fold=0
    python eval.py --config=configs/best.py --workdir=W --split=validation \
        --config.split.method=kfold --config.split.fold=0 --config.eval.references=10
    siamjax-verify --workdir W --reference r1.png ... r10.png --questioned q.png

Another dataset: `--config.dataset=signature_folder --config.real.folder_root=... ` (see
configs/bhsig260.py), or `sigcomp2011`.

It is configs/sigcomp_best.py's network and training (1200 steps, 5-8 min on 2 CPU cores) with:
- normalised ink (`real.ink='normalized'`): the scan's ink darkness, which separates CEDAR's and
  SigComp2011's forgeries from their genuine signatures without any training, never reaches the
  model. On CEDAR's validation writers it costs nothing (K = 1: 28.8% skilled / 22.3% random
  against 30.2% / 20.5% raw; fused scores);
- writer enrolment `svm_pair` (siamjax/enrollment.py): a writer-dependent RBF SVM on the
  writer's K references' embeddings, standardised per dimension, against the training writers'
  genuine signatures (`svm_scaled`), combined with the pair head's fused logit by a logistic
  regression fitted on validation trials. Validation (mean of 3 folds, skilled / random EER):
  K = 1 22.9% / 7.6%, K = 5 13.4% / 2.9%, K = 10 12.6% / 2.4%; `svm_scaled` alone 25.6% / 7.2%,
  16.3% / 2.6%, 15.5% / 1.3% (skilled better on every fold, random slightly worse, the mean of
  the two better at each K); the fused pair scores alone 28.8% / 22.3% at K = 1, plain `svm`
  17.2% / 3.0% at K = 10.
- the writer-classification auxiliary loss (`writer_loss_weight=0.5`, a 64-way head on the
  embedding, one class per writer; SigComp2011 has 64 writers, CEDAR 55): the embedding learns
  the training writers' hands, which the writer enrolment reads. Validation with `svm_pair`
  (mean of 3 CEDAR folds): K = 1 21.5% / 5.6% against 22.9% / 7.6% without it, K = 10 13.2% /
  2.2% against 12.6% / 2.4% (the mean of skilled and random better over both K); the fused
  pair scores alone get worse (32.6% / 20.9% against 28.8% / 22.3%), so it belongs with an
  enrolment. On a dataset with more than 64 training writers the first 64 get a class (a
  warning says how many were left out): `--config.model.writer_classes=N` gives each one.
- an ensemble of 3 such networks (`model.members=3`), trained side by side in one run (14 min on
  2 CPU cores when nothing else runs): the enrolment reads their concatenated embeddings, the
  head averages their logits. Validation with `svm_pair` (mean of 3 CEDAR folds): K = 1 19.9% /
  5.2% against 21.5% / 5.6% for one network, K = 10 9.5% / 1.1% against 13.2% / 2.2%; skilled
  EER better on every fold at both K. One network: `--config.model.members=1` (5 min).
Every line of that choice, and the levers that did not help, is in results/selection.jsonl.
"""

from configs import sigcomp_best


def get_config(variant: str = "") -> "ml_collections.ConfigDict":  # noqa: F821
    c = sigcomp_best.get_config(variant)
    c.dataset = "cedar"
    c.real.ink = "normalized"
    c.eval.enrollment = "svm_pair"
    c.model.writer_classes = 64
    c.writer_loss_weight = 0.5
    c.model.members = 3
    return c

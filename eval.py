"""Evaluates a trained workdir on a split and writes <workdir>/eval/<split>/.

    python eval.py --config=configs/synthetic.py --workdir=/tmp/siamjax_synth
    python eval.py --config=configs/sigcomp.py --workdir=/tmp/sigcomp --split=validation --step=2000
    python eval.py --config=configs/sigcomp.py --workdir=/tmp/sigcomp --config.eval.dataset=cedar

Reads the best checkpoint by validation EER unless --step is given; never writes checkpoints.
With --config.eval.dataset=<name> it evaluates that dataset's writers at the training dataset's
threshold and writes <workdir>/eval/<name>_<split>/.
"""

from absl import flags
from ml_collections import config_flags

from siamjax import entry

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "The config the workdir was trained with.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Workdir of a training run.")
flags.DEFINE_enum("split", "test", ["validation", "test"], "Split to evaluate.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: best by validation EER).")
flags.mark_flags_as_required(["config", "workdir"])


def evaluate() -> None:
    from siamjax import eval_lib  # After entry.main has prepared the process.

    eval_lib.run_evaluation(FLAGS.config, FLAGS.workdir, FLAGS.split, FLAGS.step)


if __name__ == "__main__":
    entry.main(evaluate)

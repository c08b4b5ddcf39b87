"""Trains a Siamese signature verifier.

    python train.py --config=configs/synthetic.py --workdir=/tmp/siamjax_synth
    python train.py --config=configs/sigcomp.py --workdir=/tmp/sigcomp --config.batch_size=64

Rerunning the same command resumes from the latest checkpoint in the workdir.
"""

from absl import flags, logging
from ml_collections import config_flags

from siamjax import entry

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:variant]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and evaluation outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def train() -> None:
    from siamjax import train_lib  # After entry.main has prepared the process.

    logging.info("config:\n%s", FLAGS.config)
    train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    entry.main(train)

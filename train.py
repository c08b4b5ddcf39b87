"""Trains a Siamese signature verifier.

    python train.py --config=configs/synthetic.py --workdir=/tmp/siamjax_synth
    python train.py --config=configs/sigcomp.py --workdir=/tmp/sigcomp --config.batch_size=64

Rerunning the same command resumes from the latest checkpoint in the workdir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from siamjax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:variant]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and evaluation outputs.")
flags.mark_flags_as_required(["config", "workdir"])


@cli.user_errors_exit
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.hide_gpus_from_tensorflow()
    from siamjax import train_lib

    logging.info("config:\n%s", FLAGS.config)
    train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)

"""`python -m siamjax.verify`: the same as the `siamjax-verify` console script."""

from siamjax.verify.cli import run

run()

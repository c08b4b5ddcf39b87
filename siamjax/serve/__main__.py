from siamjax.serve.cli import run

run()

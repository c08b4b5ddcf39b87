"""bench/run.py's benchmarks, a module each (common.py: what they share). Importing them
registers them, in run order: step, end_to_end, evaluation, pipeline."""

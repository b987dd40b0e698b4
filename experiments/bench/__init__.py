"""The parts of ``experiments.benchmark``: measurement, peaks, workers, report."""

"""Benchmarks: crewship against the natural baseline, measured in the same run.

Each module with a ``NAME`` and a ``run(**options) -> list[dict]`` is one benchmark;
``python -m bench`` runs them all (see ``bench/__main__.py``).
"""

"""Benchmarks of waconv against what users would pick instead: ``python -m bench``.

Run by hand or by ``make bench``, never as timed tests. Every figure is compared with a baseline
measured in the same run, because other work on the machine moves absolute numbers around.
"""

"""The trainer machinery: one run's loop over a method's steps (:mod:`~dfqbench.core.trainer`), the step
that computes them (:mod:`~dfqbench.core.step`), eager and compiled engines (:mod:`~dfqbench.core.engine`),
loggers, progress, checkpoints of the best student and the diagnostics it logs.

What a method is made of (the interface and the building blocks) is :mod:`dfqbench.blocks`, one layer down.
"""

"""``dfqbench report``: the papers' tables and the game-diagnostic plots, regenerated from stored records only.

Modules: :mod:`load` (read a results folder, filters), :mod:`published` (the papers' numbers, package data
``published.yaml``), :mod:`stats` (mean ± std over seeds, Welch's test), :mod:`ablation` (config → AdaSG
Table 2 row), :mod:`cells` (which records a cell averages), :mod:`tables` (layouts), :mod:`model` and
:mod:`render` (markdown / LaTeX / CSV), :mod:`defaults` (a cell's default configuration), :mod:`runs` (the
per-run CSV), :mod:`plots`, :mod:`compare` (two results folders), :mod:`versus` (the comparison view: every
method and configuration against a baseline), :mod:`selection` (a grid's runs), :mod:`reference` (the
not-data-free runs, e.g. ``real_kd``: kept out of the data-free tables, shown in their own), :mod:`make` (a report's text from a :class:`make.ReportRequest`), and :mod:`cli` (the command's argparse and
printing, which nothing else imports).
"""

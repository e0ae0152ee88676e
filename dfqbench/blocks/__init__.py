"""What a DFQ method is made of: the interface it implements and the building blocks it composes.

- :mod:`~dfqbench.blocks.interface`: :class:`Method`, :class:`Sample`, :class:`StepContext`, ``LossTerms``
  and ``register_method`` — the contract between a method and the trainer, alone in its module;
- generators (:mod:`~dfqbench.blocks.generators`, Qimera's in :mod:`~dfqbench.blocks.generators_qimera`),
  losses (:mod:`~dfqbench.blocks.losses`, the adversarial-game terms in :mod:`~dfqbench.blocks.game_losses`),
  the BatchNorm-statistics loss (:mod:`~dfqbench.blocks.hooks`), feature taps
  (:mod:`~dfqbench.blocks.features`), superposed sampling (:mod:`~dfqbench.blocks.superposed`) and ZeroQ's
  input distillation (:mod:`~dfqbench.blocks.distill`).

The trainer machinery that runs a method (steps, engines, the epoch loop, loggers) is :mod:`dfqbench.core`,
one layer up: nothing here imports it.
"""

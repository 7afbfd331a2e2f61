"""Training the tiny zoo (developer tool, not installed; see docs/zoo.md).

- :mod:`tools.zoo.train`: recipes, the training loop, resumable state, model cards;
- :mod:`tools.zoo.cli`: ``python -m tools.zoo train NAME`` (one model);
- :mod:`tools.zoo.train_all`: the whole zoo, teachers before students (``make zoo``).

The installed package keeps what users need: the models (:mod:`uadbench.zoo.models`), the
shipped weights and cards, and their evaluation (:mod:`uadbench.zoo.evaluate`,
``uadbench zoo eval NAME``).
"""

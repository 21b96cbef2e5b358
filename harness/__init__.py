"""The harness: the process supervisor (:mod:`.supervisor`) behind ``demo``, the evaluation (scenarios,
scoring, ``eval``) and ``replay``. It runs the components as the operator would, through the CLI."""

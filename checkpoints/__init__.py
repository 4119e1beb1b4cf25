"""The shipped checkpoints as package data (``importlib.resources.files(__name__)``): the default
model ``maestro-cpu`` and the infilling model ``maestro-cpu-infill``
(``perceiver_midi.model.checkpoint.default_checkpoint``)."""

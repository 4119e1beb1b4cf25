"""The shipped checkpoints as package data (``importlib.resources.files(__name__)``): the default
model ``maestro-cpu`` (``perceiver_midi.model.checkpoint.default_checkpoint``)."""

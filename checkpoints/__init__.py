"""The shipped checkpoint as package data (``importlib.resources.files(__name__)``): the default
model ``maestro-cpu-infill``, which continues and infills
(``perceiver_midi.model.checkpoint.default_checkpoint``). A clone also holds the previous default
(``maestro-cpu``) and a training candidate (``maestro-cpu-copy``), which stay out of the wheel."""

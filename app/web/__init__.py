"""The Gradio web app (``perceiver-midi app``): ``page`` builds the page and serves it,
``handlers`` holds what its events and the HTTP API (/continue, /infill) do (``Composer``),
``session`` a visitor's files and undo history, ``media`` audio and piano rolls, and ``play``
(with ``play.js``, ``play.css`` and ``played``) the Play panel's call and response."""

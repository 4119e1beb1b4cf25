"""``python -m perceiver_midi.app``: the web app, with the options of ``perceiver-midi app``."""

import sys

from perceiver_midi.app.web.page import main

if __name__ == "__main__":
    sys.exit(main())

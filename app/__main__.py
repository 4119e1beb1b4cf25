"""``python -m app``: the web app, with the same options as ``perceiver-midi app``."""

import sys

from app.web import main

if __name__ == "__main__":
    sys.exit(main())

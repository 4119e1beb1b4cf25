"""A web app served in a thread for the API and browser tests (tests/conftest.py's
``served_app``, and the tests that need a server of their own)."""

import contextlib


@contextlib.contextmanager
def serving(model, root, *, infill_model=None, warm=False, **serve_kw):
    """The web app of ``model`` served on 127.0.0.1 at a free port, in a thread; yields
    ``(url, composer)`` and stops both after. ``warm``: every shape compiled first, as
    `perceiver-midi app` does."""
    from perceiver_midi.app.web.handlers import Composer
    from perceiver_midi.app.web.page import build_app, serve

    composer = Composer(model, infill_model=infill_model, root=root)
    try:
        if warm:
            composer.warm_up()
        demo = build_app(model, composer=composer)
        url = serve(demo, host="127.0.0.1", port=None, block=False, **serve_kw)
        try:
            yield url, composer
        finally:
            demo.close()
    finally:
        composer.close()

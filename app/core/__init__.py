"""What every surface (CLI, batch, web app) shares: ``pipeline`` (Settings, windows, the one
sampler call, the writers), ``infill`` (regenerate a span), ``controls`` (the musical controls),
``render`` (audio) and ``errors`` (one-line user errors)."""

"""Continuations by the thousand (``perceiver-midi batch``): ``plan`` reads a folder or a listing
into items, ``group`` batches items that share settings into sampler calls, ``run`` runs them
(resumable, one manifest line per item: ``manifest``), ``ray_run`` spreads them over a Ray
cluster, ``cli`` is the command."""

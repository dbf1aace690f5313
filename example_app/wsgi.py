"""The example app for a WSGI server: ``gunicorn ... 'example_app.wsgi:app'``.

Each server process imports this module once, after it forks (gunicorn without
``--preload``), so the freeze below happens once per process, after the app is loaded.

A full collection of Python's garbage collector walks every object the process holds, and
once Flask, pydicom and the app are loaded that is about 72,000 objects: such a collection
took 25 ms on an idle core here and 70-108 ms while an import shared the two cores, with
every thread of the process stopped meanwhile, so each was the slowest status GET of its
moment (docs/performance.md). Frozen objects are never walked again; what requests leave
behind is still collected.
"""

from __future__ import annotations

import gc

from . import create_app

app = create_app()
gc.collect()  # what loading left as garbage goes now, rather than being frozen for good
gc.freeze()

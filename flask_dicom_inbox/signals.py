"""Flask signals (blinker) a host connects to, e.g. to notify users or start pipelines.

Each is sent with the app as sender and ``request=`` the :class:`~.requests.ImportRequest`.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: Sent after a request is recorded and queued (in the web process).
import_queued = _signals.signal("dicom-inbox-import-queued")
#: Sent when a worker starts importing a request.
import_started = _signals.signal("dicom-inbox-import-started")
#: Sent when a request ends, ``Completed`` or ``Failed`` (in the worker).
import_finished = _signals.signal("dicom-inbox-import-finished")

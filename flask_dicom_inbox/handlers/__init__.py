"""Built-in import handlers."""

from .inbox import InboxHandler, resolve_inbox_path

__all__ = ["InboxHandler", "resolve_inbox_path"]

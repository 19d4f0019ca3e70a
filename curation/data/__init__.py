"""The trainer side of the store: windows of a selection, validated, with their conditions
(:class:`ClipStream`), batched by token buckets (:mod:`curation.data.loader`)."""
from curation.data.stream import ClipStream, StreamError

__all__ = ["ClipStream", "StreamError"]

"""The files the audit page may serve, found only through the store: a video by its ``video_id``
(``videos.uri``), a clip's role audio by its ``clip_id`` (``speaker_audio_uri`` /
``listener_audio_uri``), a reference image by its ``ref_id`` (the JPEG blob). A URL never names a
path, so nothing outside what the store references can be reached. Derived files (thumbnails,
re-encoded spans of videos the browser cannot play) live in a temporary directory of the server,
never in the store.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import threading
from collections import OrderedDict

from curation.audit.clip import one_clip, video_of
from curation.media import VideoDecoder, import_decord, local_path
from curation.store import Store, sql_quote


class NotServed(LookupError):
    """The store references no such file (or it is gone): the page answers 404."""


def _local_file(uri: str | None) -> str:
    if not uri:
        raise NotServed("no file")
    path = uri.removeprefix("file://") if ("://" not in uri or uri.startswith("file://")) else None
    if path is None or not os.path.isfile(path):
        raise NotServed("not a local file")
    return path


class Files:
    """Resolves page URLs to store-referenced files; caches derived files and thumbnails."""

    def __init__(self, store: Store, thumbs: int = 4000):
        self.store = store
        self.tmp = tempfile.mkdtemp(prefix="curation-audit-")
        self._thumbs: OrderedDict[str, bytes] = OrderedDict()
        self._max_thumbs = thumbs
        self._lock = threading.Lock()
        import_decord()   # once, here: a first import from several request threads at once fails

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def video(self, video_id: str) -> str:
        row = video_of(self.store, video_id)
        if row is None:
            raise NotServed(video_id)
        return _local_file(row["uri"])

    def role_audio(self, clip_id: str, role: str) -> str:
        if role not in ("speaker", "listener"):
            raise NotServed(role)
        clip = self._clip(clip_id)
        uri = clip.get(f"{role}_audio_uri")
        if uri and "://" in uri and not uri.startswith("file://"):
            return self._copied(uri, ".wav")
        return _local_file(uri)

    def reference(self, ref_id: str) -> bytes:
        if not self.store.exists("references"):
            raise NotServed(ref_id)
        data = self.store.blob("references", f"ref_id = {sql_quote(ref_id)}", "image")
        if not data:
            raise NotServed(ref_id)
        return data

    def clip_mp4(self, clip_id: str) -> str:
        """The clip's span re-encoded to H.264/AAC (for codecs or files the browser cannot play)."""
        from curation.audit.sample import cut_clip
        clip = self._clip(clip_id)
        video = video_of(self.store, clip["video_id"])
        if video is None:
            raise NotServed(clip_id)
        out = os.path.join(self.tmp, hashlib.sha1(clip_id.encode()).hexdigest() + ".mp4")
        with self._lock:
            if not os.path.exists(out):
                with local_path(video["uri"]) as path:
                    if not os.path.exists(path):
                        raise NotServed(clip_id)
                    cut_clip(path, clip["start_s"], clip["end_s"], out + ".part.mp4")
                os.replace(out + ".part.mp4", out)
        return out

    def thumbnail(self, clip_id: str, side: int = 240) -> bytes:
        """A JPEG of the clip's middle frame (decoded once, kept in memory)."""
        with self._lock:
            if clip_id in self._thumbs:
                self._thumbs.move_to_end(clip_id)
                return self._thumbs[clip_id]
        from PIL import Image
        clip = self._clip(clip_id)
        video = video_of(self.store, clip["video_id"])
        if video is None:
            raise NotServed(clip_id)
        mid = (clip["start_s"] + clip["end_s"]) / 2
        with local_path(video["uri"]) as path:
            if not os.path.exists(path):
                raise NotServed(clip_id)
            dec = VideoDecoder(path, rotation=video.get("rotation") or 0, max_side=side,
                               display_size=(video.get("width"), video.get("height")))
            frames = dec.span(mid, min(clip["end_s"], mid + 0.5))
            if len(frames) == 0:
                frames = dec.span(clip["start_s"], clip["end_s"])
            if len(frames) == 0:
                raise NotServed(clip_id)
        buf = io.BytesIO()
        Image.fromarray(frames.images[0]).save(buf, "JPEG", quality=80)
        with self._lock:
            self._thumbs[clip_id] = buf.getvalue()
            while len(self._thumbs) > self._max_thumbs:
                self._thumbs.popitem(last=False)
        return buf.getvalue()

    def _clip(self, clip_id: str) -> dict:
        try:
            return one_clip(self.store, clip_id)
        except KeyError:
            raise NotServed(clip_id) from None

    def _copied(self, uri: str, suffix: str) -> str:
        out = os.path.join(self.tmp, hashlib.sha1(uri.encode()).hexdigest() + suffix)
        if not os.path.exists(out):
            with local_path(uri) as path:
                shutil.copyfile(path, out + ".part")
            os.replace(out + ".part", out)
        return out

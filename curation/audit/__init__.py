"""Auditing a store: ``sample`` (contact sheets, mp4 excerpts and metadata of sampled clips) and the
audit page (``curation audit``: ``app`` serves it, ``funnel`` explains kept and dropped clips,
``clip`` gathers what a clip page shows)."""
from curation.audit.sample import (KEY_SCORES, contact_sheet, cut_clip, cut_track,  # noqa: F401
                                   sample_clips)

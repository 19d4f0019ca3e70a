"""Arrow schemas of the store's tables, their shared field types and the schema version.

Each table has a *base* schema here: its key, the columns written by the backbone operator that
creates its rows (probe for videos, shots for shots, clips for clips), ``run_id`` and the per-row
error fields. Annotators add their own columns, declared on the operator (``Operator.writes``);
:func:`table_schema` composes the full schema of a table from the base and the registered operators.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1.0"

# ---- shared field types -------------------------------------------------------------------------
# A box in pixels of the displayed (rotation-applied) frame: x1, y1, x2, y2.
BOX = pa.list_(pa.float32(), 4)
# A time span in seconds from the start of the video.
SPAN = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64())])
SPANS = pa.list_(SPAN)


def frame_list(value_type: pa.DataType) -> pa.DataType:
    """A per-frame list column, aligned index by index with the row's ``frame_times_s`` list."""
    return pa.list_(value_type)


def blob_field(name: str) -> pa.Field:
    """A binary column stored with Lance's blob encoding (images, crops, audio)."""
    return pa.field(name, pa.large_binary(), metadata={"lance-encoding:blob": "true"})


def _common() -> list[pa.Field]:
    return [
        pa.field("run_id", pa.string()),
        pa.field("error", pa.string()),        # "message" of the failure, null when fine
        pa.field("error_stage", pa.string()),  # workflow step that failed on this row
    ]


# ---- tables ----------------------------------------------------------------------------------------
VIDEOS = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),  # content hash of the file
    pa.field("uri", pa.string()),
    pa.field("size_bytes", pa.int64()),
    pa.field("mtime_ns", pa.int64()),            # modification time at ingest (ns since the epoch)
    pa.field("schema_version", pa.string()),
    # probe
    pa.field("container", pa.string()),
    pa.field("duration_s", pa.float64()),
    pa.field("fps", pa.float64()),               # average frame rate
    pa.field("fps_nominal", pa.float64()),       # the stream's r_frame_rate
    pa.field("variable_fps", pa.bool_()),
    pa.field("num_frames", pa.int64()),
    pa.field("width", pa.int32()),               # displayed width (after rotation)
    pa.field("height", pa.int32()),
    pa.field("rotation", pa.int32()),            # degrees, clockwise, from the display matrix
    pa.field("video_codec", pa.string()),
    pa.field("pix_fmt", pa.string()),
    pa.field("bit_rate", pa.int64()),
    pa.field("has_audio", pa.bool_()),
    pa.field("audio_codec", pa.string()),
    pa.field("audio_sample_rate", pa.int32()),
    pa.field("audio_channels", pa.int32()),
    # probe's decode check ("full": every frame, "ends": first and last GOP, "none")
    pa.field("decode_check", pa.string()),
    pa.field("decoded_frames", pa.int64()),      # frames the decoder returned (of num_frames)
    pa.field("decode_errors", pa.int32()),       # packets rejected + frames flagged corrupt
    pa.field("decoded_until_s", pa.float64()),   # end of the last decoded frame
    pa.field("decode_error_at_s", pa.float64()), # first bad packet, null when clean
    *_common(),
])

SHOTS = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("shot_index", pa.int32(), nullable=False),
    pa.field("start_s", pa.float64()),
    pa.field("end_s", pa.float64()),
    pa.field("start_frame", pa.int64()),
    pa.field("end_frame", pa.int64()),           # exclusive
    pa.field("duration_s", pa.float64()),
    pa.field("detector", pa.string()),
    *_common(),
])

CLIPS = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),  # "<video_id>:<shot_index>:<clip_index>"
    pa.field("video_id", pa.string()),
    pa.field("shot_index", pa.int32()),
    pa.field("clip_index", pa.int32()),
    pa.field("clip_kind", pa.string()),          # "shot": a span of a shot; "person": one track in it
    pa.field("track_id", pa.string()),           # person clips: the track they follow
    pa.field("start_s", pa.float64()),
    pa.field("end_s", pa.float64()),
    pa.field("duration_s", pa.float64()),
    pa.field("width", pa.int32()),               # the video's display size and average fps
    pa.field("height", pa.int32()),
    pa.field("fps", pa.float64()),
    *_common(),
])

# Room for person tracks (a later issue fills it): frame-aligned per-frame lists per track.
TRACKS = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),  # "<video_id>:<shot_index>:t<track_index>"
    pa.field("video_id", pa.string()),
    pa.field("shot_index", pa.int32()),
    pa.field("frame_times_s", frame_list(pa.float64())),
    pa.field("person_boxes", frame_list(BOX)),
    pa.field("face_boxes", frame_list(BOX)),
    *_common(),
])

# Reference images (LPM §2.4), written by the ``references`` operator: JPEG bytes in a blob column.
REFERENCES = pa.schema([
    pa.field("ref_id", pa.string(), nullable=False), pa.field("video_id", pa.string()),
    pa.field("clip_id", pa.string()), pa.field("track_id", pa.string()),
    pa.field("kind", pa.string()),   # global | view_frontal | view_left | view_right | view_rear | expression
    pa.field("label", pa.string()), pa.field("frame_s", pa.float64()), pa.field("score", pa.float32()),
    pa.field("yaw_deg", pa.float32()), pa.field("box", BOX), blob_field("image"),
    pa.field("image_width", pa.int32()), pa.field("image_height", pa.int32()),
    pa.field("source_width", pa.int32()), pa.field("source_height", pa.int32()),
    pa.field("label_backend", pa.string()), *_common()])
# Tagged training subsets (``curation balance``): which clips, how many times each; no copies.
SUBSETS = pa.schema([
    pa.field("subset", pa.string(), nullable=False), pa.field("clip_id", pa.string(), nullable=False),
    pa.field("video_id", pa.string()), pa.field("repeat", pa.int32()), pa.field("mode", pa.string()),
    pa.field("listen_share", pa.float32()), pa.field("emotion_label", pa.string()),
    pa.field("emotional", pa.bool_()), pa.field("clips_version", pa.int64()),
    pa.field("params", pa.string()), pa.field("created_at", pa.timestamp("us", tz="UTC"))])

# Verdicts of the window validator (``curation validate``): one row per (profile, clip, window start).
CHECK_RESULT = pa.struct([("check", pa.string()), ("value", pa.float64()), ("keep", pa.bool_())])
WINDOWS = pa.schema([
    pa.field("profile", pa.string(), nullable=False), pa.field("clip_id", pa.string(), nullable=False),
    pa.field("start_s", pa.float64(), nullable=False),   # nominal start: the first frame is at or after it
    pa.field("end_s", pa.float64()), pa.field("video_id", pa.string()),
    pa.field("window_index", pa.int32()), pa.field("frames", pa.int32()), pa.field("fps", pa.float64()),
    pa.field("first_frame_s", pa.float64()),              # pts of the decoded first frame (null: not decoded)
    pa.field("kept", pa.bool_()), pa.field("failed_check", pa.string()), pa.field("reason", pa.string()),
    pa.field("checks", pa.list_(CHECK_RESULT)), pa.field("validated_at", pa.timestamp("us", tz="UTC")),
    *_common()])

TABLES: dict[str, pa.Schema] = {"videos": VIDEOS, "shots": SHOTS, "clips": CLIPS, "tracks": TRACKS,
                                "references": REFERENCES, "subsets": SUBSETS, "windows": WINDOWS}
KEYS: dict[str, tuple[str, ...]] = {
    "videos": ("video_id",),
    "shots": ("video_id", "shot_index"),
    "clips": ("clip_id",),
    "tracks": ("track_id",),
    "references": ("ref_id",),
    "subsets": ("subset", "clip_id"),
    "windows": ("profile", "clip_id", "start_s"),
}
# Scalar indices the store keeps on each table (BTREE for ids and numbers, BITMAP for low-cardinality).
INDICES: dict[str, dict[str, str]] = {
    "videos": {"video_id": "BTREE", "has_audio": "BITMAP", "error_stage": "BITMAP"},
    "shots": {"video_id": "BTREE"},
    "clips": {"clip_id": "BTREE", "video_id": "BTREE", "duration_s": "BTREE", "error_stage": "BITMAP"},
    "tracks": {"track_id": "BTREE", "video_id": "BTREE"},
    "references": {"ref_id": "BTREE", "video_id": "BTREE", "kind": "BITMAP"},
    "subsets": {"subset": "BITMAP", "clip_id": "BTREE"},
    "windows": {"clip_id": "BTREE", "profile": "BITMAP", "kept": "BITMAP", "failed_check": "BITMAP"},
}

# Bookkeeping tables of the store (not annotation tables).
STATUS = pa.schema([
    pa.field("step", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("op", pa.string()),
    pa.field("op_version", pa.string()),
    pa.field("params_hash", pa.string()),
    pa.field("ok", pa.bool_()),
    pa.field("error", pa.string()),
    pa.field("failure", pa.string()),   # kind of failure (curation.failures.POLICY), null when ok
    pa.field("rows", pa.int32()),
    pa.field("seconds", pa.float64()),
    pa.field("run_id", pa.string()),
    pa.field("updated_at", pa.timestamp("us", tz="UTC")),
])
RUNS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("workflow", pa.string()),
    pa.field("workflow_yaml", pa.string()),
    pa.field("inputs", pa.list_(pa.string())),
    pa.field("started_at", pa.timestamp("us", tz="UTC")),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    pa.field("status", pa.string()),
    pa.field("schema_version", pa.string()),
])
BOOKKEEPING: dict[str, tuple[pa.Schema, tuple[str, ...]]] = {
    "status": (STATUS, ("step", "video_id")),
    "runs": (RUNS, ("run_id",)),
}


def table_schema(table: str, operators=()) -> pa.Schema:
    """The full schema of ``table``: its base plus the columns of every operator writing to it."""
    fields = list(TABLES[table])
    names = {f.name for f in fields}
    for op in operators:
        if op.output_table != table:
            continue
        for f in op.writes:
            if f.name not in names:
                fields.append(f)
                names.add(f.name)
    return pa.schema(fields)

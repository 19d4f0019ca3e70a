"""Fixed taxonomies of the understanding stage and the validator of a caption record.

Sources of each list:

- ``SCENE_CLASSES``: the six classes of LPM §2.2 "semantic verification" (Table 2: conversation,
  listen_dialogue, listen_nondialogue, silence, speak, plus unknown).
- ``FRAME_STATES``: the per-frame states of LPM §2.2 (speak / listen / idle) plus ``discard`` for
  "no speech but lips moving" (SPEC item 9).
- ``TAG_VOCAB``: the structured tag dimensions of LPM §2.3 (motion, emotion, facial expression,
  environment, camera and other cinematographic properties) and LongCat §2.1 condition construction
  (camera motion, shot size, lens type, visual style). The words are chosen from the papers'
  examples: LPM §2.3 listener analysis (neutral / cognitive emotions, amusement, embarrassment,
  gratitude, sadness, anger, fear, distress; smiling, surprise; nodding, gesturing, gaze shifting,
  static postures, subtle head and eye movements), LongCat §2.1 (close-up face, interview, acted
  performance, hand-object interaction, pointing, music video, stage, animation and stylized; zoom,
  pan, tracking, shake; head / half-body / full-body composition). The papers do not publish their
  full lists (LPM-Bench counts 22 expression bases and 78 emotions), so these are ours.
- ``LISTENER_FIELDS``: LPM §2.3: listener clips are captioned only with time-invariant attributes
  (appearance, personality, relational context).

``validate_caption(record, listener=...)`` checks a parsed model output (see
``operators.nets.omni``) against ``CAPTION_SCHEMA`` (JSON Schema, validated with ``jsonschema``,
pinned in requirements.lock) plus the rules JSON Schema cannot say (span order, listener mode).
"""
from __future__ import annotations

from typing import Any

import jsonschema

# ---- scene classes and frame states --------------------------------------------------------------
SCENE_CLASSES: tuple[str, ...] = (
    "conversation",        # the visible subject speaks and listens in turn
    "listen_dialogue",     # the subject listens to a dialogue partner and reacts to the speech
    "listen_nondialogue",  # speech is heard (narration, off-screen talk) but the subject does not react to it
    "silence",             # no one speaks; the subject does not speak
    "speak",               # the visible subject speaks
    "unknown",             # none of the above can be decided
)
LISTENER_CLASSES: frozenset[str] = frozenset({"listen_dialogue", "listen_nondialogue"})
# Classes in which the subject is judged not to be speaking (LongCat §2.3 silent verification).
NOT_SPEAKING_CLASSES: frozenset[str] = frozenset({"listen_dialogue", "listen_nondialogue", "silence"})

FRAME_STATES: tuple[str, ...] = ("speak", "listen", "idle", "discard")

# ---- structured tags -----------------------------------------------------------------------------
MOTION: tuple[str, ...] = (
    "static", "subtle", "head_nod", "head_shake", "head_tilt", "head_turn", "gaze_shift",
    "eye_contact", "blinking", "hand_gesture", "pointing", "hand_to_face", "hair_touch",
    "object_interaction", "shoulder_shrug", "body_sway", "leaning", "posture_change", "walking",
    "dancing", "singing", "playing_instrument", "rhythmic_motion",
)
EMOTION: tuple[str, ...] = (
    "neutral", "happiness", "amusement", "excitement", "gratitude", "affection", "pride", "relief",
    "interest", "curiosity", "concentration", "contemplation", "confusion", "surprise", "sadness",
    "disappointment", "embarrassment", "anxiety", "fear", "distress", "anger", "frustration",
    "contempt", "disgust", "boredom",
)
EXPRESSION: tuple[str, ...] = (
    "neutral_face", "smiling", "grinning", "laughing", "smirk", "frowning", "pouting",
    "raised_eyebrows", "furrowed_brows", "squinting", "wide_eyes", "eyes_closed", "mouth_open",
    "jaw_drop", "lip_biting", "lips_pressed", "grimace", "sneer", "nose_wrinkle", "tongue_out",
    "crying", "gaze_averted",
)
ENVIRONMENT: tuple[str, ...] = (
    "indoor", "outdoor", "studio", "office", "home", "living_room", "bedroom", "kitchen",
    "classroom", "stage", "concert", "street", "park", "nature", "vehicle", "restaurant", "shop",
    "gym", "plain_background", "green_screen", "virtual_background", "crowd",
)
CAMERA_MOTION: tuple[str, ...] = (
    "static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "dolly_in",
    "dolly_out", "tracking", "orbit", "handheld", "shake",
)
SHOT_SIZE: tuple[str, ...] = (
    "extreme_close_up", "close_up", "medium_close_up", "medium_shot", "medium_full_shot",
    "full_shot", "long_shot",
)
LENS: tuple[str, ...] = (
    "standard", "wide_angle", "telephoto", "fisheye", "macro", "shallow_depth_of_field",
    "deep_depth_of_field",
)
STYLE: tuple[str, ...] = (
    "photorealistic", "cinematic", "documentary", "interview", "news", "talk_show", "vlog",
    "livestream", "video_call", "music_video", "stage_performance", "advertisement", "animation_2d",
    "animation_3d", "anime", "game", "black_and_white", "vintage",
)

TAG_VOCAB: dict[str, tuple[str, ...]] = {
    "motion": MOTION,
    "emotion": EMOTION,
    "expression": EXPRESSION,
    "environment": ENVIRONMENT,
    "camera_motion": CAMERA_MOTION,
    "shot_size": SHOT_SIZE,
    "lens": LENS,
    "style": STYLE,
}
TAG_KEYS: tuple[str, ...] = tuple(TAG_VOCAB)

# The coarse camera labels of operators/temporal.py (CAMERA_LABELS) each fine label falls under.
CAMERA_COARSE: dict[str, str] = {
    "static": "static", "pan_left": "pan", "pan_right": "pan", "tilt_up": "tilt", "tilt_down": "tilt",
    "zoom_in": "zoom", "zoom_out": "zoom", "dolly_in": "zoom", "dolly_out": "zoom",
    "tracking": "complex", "orbit": "complex", "handheld": "shake", "shake": "shake",
}

# LPM §2.3: the only captions a listener clip gets.
LISTENER_FIELDS: tuple[str, ...] = ("appearance", "personality", "relation")

# ---- the caption record --------------------------------------------------------------------------
_SPAN = {
    "type": "object",
    "properties": {
        "start_s": {"type": "number", "minimum": 0},
        "end_s": {"type": "number", "minimum": 0},
        "text": {"type": "string", "minLength": 1},
    },
    "required": ["start_s", "end_s", "text"],
    "additionalProperties": False,
}

CAPTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "scene_class": {"enum": list(SCENE_CLASSES)},
        "scene_prob": {"type": "number", "minimum": 0, "maximum": 1},
        "caption_dense": {"type": "string", "minLength": 1},
        "caption_summary": {"type": "string", "minLength": 1},
        "caption_spans": {"type": "array", "items": _SPAN},
        "tags": {
            "type": "object",
            "properties": {k: {"type": "array", "items": {"enum": list(v)}, "uniqueItems": True}
                           for k, v in TAG_VOCAB.items()},
            "required": list(TAG_KEYS),
            "additionalProperties": False,
        },
        "listener_captions": {
            "type": ["object", "null"],
            "properties": {k: {"type": "string", "minLength": 1} for k in LISTENER_FIELDS},
            "required": list(LISTENER_FIELDS),
            "additionalProperties": False,
        },
        "behaviour_captions": {"type": ["array", "null"], "items": _SPAN},
    },
    "required": ["scene_class", "scene_prob", "caption_dense", "caption_summary", "caption_spans",
                 "tags", "listener_captions", "behaviour_captions"],
    "additionalProperties": True,  # e.g. scene_prob_source, raw text kept by the caller
}

_VALIDATOR = jsonschema.Draft202012Validator(CAPTION_SCHEMA)


class CaptionInvalid(ValueError):
    """A caption record does not follow CAPTION_SCHEMA or the listener rule; the message is one line."""


def validate_caption(record: dict, listener: bool = False, duration_s: float | None = None) -> dict:
    """Check ``record`` and return it unchanged; raise CaptionInvalid with a one-line reason.

    Beyond the JSON schema: every span has ``start_s <= end_s`` (and ``end_s <= duration_s`` + 0.5 s
    when the clip duration is given); spans are in time order; a listener clip (``listener=True``)
    has its three time-invariant captions, no temporal-span and no behaviour captions (LPM §2.3),
    and a non-listener clip has ``listener_captions`` null.
    """
    errors = sorted(_VALIDATOR.iter_errors(record), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "record"
        raise CaptionInvalid(f"{where}: {e.message}"[:300])
    for key in ("caption_spans", "behaviour_captions"):
        spans = record.get(key) or []
        last = -1.0
        for i, s in enumerate(spans):
            if s["start_s"] > s["end_s"]:
                raise CaptionInvalid(f"{key}/{i}: start_s {s['start_s']} after end_s {s['end_s']}")
            if duration_s is not None and s["end_s"] > duration_s + 0.5:
                raise CaptionInvalid(f"{key}/{i}: end_s {s['end_s']} beyond the clip ({duration_s:.2f} s)")
            if s["start_s"] < last:
                raise CaptionInvalid(f"{key}/{i}: spans are not in time order")
            last = s["start_s"]
    if listener:
        if record["listener_captions"] is None:
            raise CaptionInvalid("listener clip without listener_captions (appearance, personality, relation)")
        if record["caption_spans"] or record["behaviour_captions"]:
            raise CaptionInvalid("listener clip with time-varying captions (spans or behaviour captions)")
    elif record["listener_captions"] is not None:
        raise CaptionInvalid("listener_captions given for a clip that is not a listener clip")
    return record

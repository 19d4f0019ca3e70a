"""Label types that several operators share, defined once (an operator imports them from here,
never from another operator).

- ``STATES``: a person's state per frame (LPM §2.2): speak, listen, idle, discard; ``STATE_PROBS``
  their probabilities as a struct (speaker_states, rerank, the loader's ClipStream reads them).
- ``WORD`` and ``SENTENCE``: Whisper's words with times and probabilities, and the sentence units
  they are split into (asr writes them on videos, clip_transcript the ones inside each clip).
"""
from __future__ import annotations

import pyarrow as pa

STATES = ("speak", "listen", "idle", "discard")
STATE_PROBS = pa.struct([(s, pa.float32()) for s in STATES])

WORD = pa.struct([("word", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()),
                  ("prob", pa.float32())])
SENTENCE = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("text", pa.string()),
                      ("confidence", pa.float32()), ("avg_logprob", pa.float32()),
                      ("no_speech_prob", pa.float32()), ("complete", pa.bool_()),
                      ("words", pa.list_(WORD))])

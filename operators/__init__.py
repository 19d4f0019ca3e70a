"""The operators, one per file; the workflow key of each is its ``name`` (= its file name).

Adding an operator: write operators/NAME.py with one Operator subclass, add it to REGISTRY below,
add tests/operators/test_NAME.py, and use it as a step in a workflow.
"""
from operators.asd import Asd
from operators.audio import Audio
from operators.clip_speech import ClipSpeech
from operators.clips import Clips
from operators.probe import Probe
from operators.quality import Quality
from operators.rerank import Rerank
from operators.separation import Separation
from operators.shots import Shots
from operators.speaker_states import SpeakerStates
from operators.temporal import Temporal

REGISTRY = {op.name: op for op in (
    Probe,
    Shots,
    Audio,
    Clips,
    ClipSpeech,
    Quality,
    Temporal,
    Separation,
    Asd,
    SpeakerStates,
    Rerank,
)}

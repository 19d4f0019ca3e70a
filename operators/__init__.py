"""The operators, one per file; the workflow key of each is its ``name`` (= its file name).

Adding an operator: write operators/NAME.py with one Operator subclass, add it to REGISTRY below,
add tests/operators/test_NAME.py, and use it as a step in a workflow.
"""
from operators.asd import Asd
from operators.asr import Asr
from operators.audio import Audio
from operators.audio_features import AudioFeatures
from operators.audio_variants import AudioVariants
from operators.captions import Captions, CaptionsConversation
from operators.clip_speech import ClipSpeech
from operators.clip_transcript import ClipTranscript
from operators.emotion import Emotion
from operators.clips import Clips
from operators.people import People
from operators.person_clips import PersonClips
from operators.probe import Probe
from operators.quality import Quality
from operators.references import References
from operators.rerank import Rerank
from operators.separation import Separation
from operators.shot_people import ShotPeople
from operators.shots import Shots
from operators.speaker_states import SpeakerStates
from operators.sync import Sync
from operators.temporal import Temporal

REGISTRY = {op.name: op for op in (
    Probe,
    Shots,
    Audio,
    Clips,
    ClipSpeech,
    Quality,
    Temporal,
    People,
    ShotPeople,
    PersonClips,
    Separation,
    Asd,
    Sync,
    SpeakerStates,
    Rerank,
    AudioVariants,
    Asr,
    AudioFeatures,
    ClipTranscript,
    Emotion,
    References,
    Captions,
    CaptionsConversation,
)}

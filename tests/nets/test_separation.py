"""Vocal separation (Spleeter 2stems, demucs code path) and the music/noise decision, on real clips.

What a person can check: vr_face1 is one woman talking to camera in a quiet room; dj_video1 is a
cartoon with music; lp_d3 has a silent audio track. The music used for the separation test is made
here: chords of harmonic tones (6 partials, A/G/F major triads, 0.5 s each, decaying) plus a kick
(60 Hz decaying sine every 0.5 s) and hi-hat noise bursts every 0.25 s.
"""
from __future__ import annotations

import numpy as np
import pytest

from operators.nets import MissingWeights
from operators.nets.audio_scene import assess, measure
from operators.nets.spleeter import WEIGHTS, Spleeter, read_audio

SR = 16000


def synthetic_music(n: int, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    y = np.zeros(n)
    chords = [[220, 277.2, 329.6], [196, 246.9, 293.7], [174.6, 220, 261.6], [196, 246.9, 293.7]]
    step = int(0.5 * sr)
    for i, s in enumerate(range(0, n, step)):
        seg = slice(s, min(n, s + step))
        tt = t[seg] - t[s]
        for f in chords[i % 4]:
            for h in range(1, 7):
                y[seg] += np.sin(2 * np.pi * f * h * tt) / h * np.exp(-2 * tt)
    beat = int(0.25 * sr)
    for k, s in enumerate(range(0, n, beat)):
        m = min(n, s + int(0.15 * sr))
        tt = t[s:m] - t[s]
        if k % 2 == 0:
            y[s:m] += 3 * np.sin(2 * np.pi * 60 * tt) * np.exp(-30 * tt)
        y[s:m] += 0.5 * rng.standard_normal(m - s) * np.exp(-80 * tt)
    return y.astype(np.float32)


def sdr(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - est).astype(np.float64) ** 2)))


@pytest.fixture(scope="module")
def spleeter(models):
    return Spleeter(models, threads=2)


def test_spleeter_pulls_speech_out_of_music(spleeter, media):
    speech = read_audio(media / "vr_face1.mp4", SR, 1)[:, 0]
    music = synthetic_music(len(speech), SR)
    music *= np.sqrt(np.mean(speech ** 2) / np.mean(music ** 2))     # 0 dB speech-to-music
    mix = speech + music
    vocals, acc = spleeter.separate(mix, SR)
    assert vocals.shape == acc.shape == mix.shape
    gain = sdr(speech, vocals) - sdr(speech, mix)
    print(f"vocals SDR {sdr(speech, vocals):.2f} dB (mix {sdr(speech, mix):.2f} dB): +{gain:.2f} dB; "
          f"accompaniment vs music SDR {sdr(music, acc):.2f} dB")
    assert gain > 5.0          # measured +8.4 dB
    assert sdr(music, acc) > 5.0


def test_spleeter_stems_add_up_to_the_lowpassed_mix(spleeter, media):
    """At 44.1 kHz stereo the ratio masks sum to 1 below 11 kHz, so vocals + accompaniment is the mix
    minus its content above 11 kHz (README: 32.6 dB on its test clip). A wrong overlap-add scale (the
    2/3 window compensation) or mask rule breaks this."""
    x = read_audio(media / "vr_face1.mp4")
    assert x.shape[1] == 2
    v, a = spleeter.separate(x, 44100)
    assert v.shape == a.shape == x.shape
    snr = sdr(x, v + a)
    print(f"mix vs vocals+accompaniment: {snr:.1f} dB")
    assert snr > 25
    assert np.mean(v ** 2) > 10 * np.mean(a ** 2)                   # clean speech: mostly vocals


def test_spleeter_names_missing_weights(tmp_path):
    with pytest.raises(MissingWeights, match=WEIGHTS):
        Spleeter(tmp_path)


def test_music_decision_on_real_clips(spleeter, media):
    levels = {}
    for clip in ("dj_video1", "vr_face1", "lp_d3"):
        wav = read_audio(media / f"{clip}.mp4", SR, 1)[:, 0]
        levels[clip], vocals, acc = assess(wav, SR, spleeter)
        assert vocals.shape == acc.shape == wav.shape
        print(clip, levels[clip].music_ratio, levels[clip].reason)
    assert levels["dj_video1"].separate and levels["dj_video1"].music_ratio >= 0.15   # measured 0.22
    assert "music/noise in" in levels["dj_video1"].reason
    assert not levels["vr_face1"].separate and levels["vr_face1"].music_ratio <= 0.05  # measured 0.00
    assert levels["vr_face1"].reason.startswith("clean")
    assert not levels["lp_d3"].separate and "silent" in levels["lp_d3"].reason          # digital silence


def test_music_decision_rules():
    sr, n = 1000, 10_000                      # 10 s; 20 windows of 0.5 s
    rng = np.random.default_rng(0)
    speech = 0.1 * rng.standard_normal(n).astype(np.float32)
    quiet = np.zeros(n, np.float32)
    loud = quiet.copy()
    loud[:3000] = 0.05                        # accompaniment at -6 dB re its windows for 3 s of 10
    assert not measure(speech + quiet, speech, quiet, sr).separate
    lv = measure(speech + loud, speech, loud, sr)
    assert lv.separate and lv.music_ratio == pytest.approx(0.3) and lv.music_s == pytest.approx(3.0)


def _tiny_htdemucs():
    import torch
    from demucs.htdemucs import HTDemucs
    torch.manual_seed(0)
    # a small random model of the htdemucs class: 3 levels, nfft 512, one transformer layer
    return HTDemucs(sources=["drums", "bass", "other", "vocals"], channels=4, depth=3, nfft=512,
                    t_layers=1, t_heads=2, segment=1, dconv_comp=4)


def test_demucs_loads_from_model_dir_and_separates(tmp_path):
    import torch
    from demucs.states import get_state, save_with_checksum
    from operators.nets.demucs_sep import WEIGHTS as DEMUCS_WEIGHTS, Demucs

    with pytest.raises(MissingWeights, match=DEMUCS_WEIGHTS):
        Demucs(tmp_path)
    model = _tiny_htdemucs()
    args, kwargs = model._init_args_kwargs
    package = {"klass": type(model), "args": args, "kwargs": kwargs, "state": get_state(model, None)}
    path = tmp_path / DEMUCS_WEIGHTS
    path.parent.mkdir(parents=True)
    torch.save(package, path)

    wav = 0.1 * np.random.default_rng(1).standard_normal(SR).astype(np.float32)   # 1 s mono, 16 kHz
    direct_v, direct_r = Demucs(model=model).separate(wav, SR)
    loaded = Demucs(tmp_path)                         # demucs.states.load_model on the .th package
    assert loaded.sources == ["drums", "bass", "other", "vocals"] and loaded.samplerate == 44100
    v, r = loaded.separate(wav, SR)
    assert v.shape == r.shape == wav.shape and np.isfinite(v).all() and np.isfinite(r).all()
    np.testing.assert_allclose(v, direct_v, atol=1e-6)
    np.testing.assert_allclose(r, direct_r, atol=1e-6)
    assert np.abs(v).max() > 0                        # the network ran (random weights: nonzero stems)

    # a bag .yaml beside a <sig>-<sha>.th file goes through demucs' LocalRepo (hash checked)
    save_with_checksum(package, tmp_path / "separation" / "demucs" / "abcd0001.th")
    (tmp_path / "separation" / "demucs" / "tinybag.yaml").write_text("models: ['abcd0001']\n")
    bag = Demucs(tmp_path, weights="separation/demucs/tinybag.yaml")
    bv, _ = bag.separate(wav, SR)
    np.testing.assert_allclose(bv, direct_v, atol=1e-5)
    (tmp_path / "separation" / "demucs" / "tinybag.yaml").write_text("models: ['ffff0002']\n")
    with pytest.raises(MissingWeights, match="ffff0002"):
        Demucs(tmp_path, weights="separation/demucs/tinybag.yaml")


def test_read_audio_without_audio_stream(media):
    from curation.media import MediaError
    with pytest.raises(MediaError, match="no audio stream"):
        read_audio(media / "lp_d0.mp4")                 # lp_d0 has no audio stream

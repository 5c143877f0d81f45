"""Audio input: every container we promise, encoded here from real speech with PyAV, and each bad input."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from malsori.engine import SAMPLE_RATE, AudioLimits, Pipeline, decode_audio, float32_to_pcm16, pcm_to_float32
from malsori.errors import (
    AudioError,
    AudioTooLargeError,
    AudioTooLongError,
    EmptyAudioError,
    InvalidOptionsError,
    UnsupportedAudioError,
)
from malsori.evaluation import wer

# extension -> (audio encoder, sample rate, with a video stream too)
CONTAINERS = {
    "wav": ("pcm_s16le", 16_000, False),
    "mp3": ("libmp3lame", 16_000, False),
    "m4a": ("aac", 16_000, False),
    "flac": ("flac", 16_000, False),
    "ogg": ("libopus", 48_000, False),
    "webm": ("libopus", 48_000, False),
    "mp4": ("aac", 16_000, True),
}


def _encode(pcm: np.ndarray | None, path: Path, codec: str = "aac", rate: int = 16_000, video_seconds: float = 0.0) -> Path:
    """Write ``pcm`` (16 kHz mono float32) with ``codec``; optionally beside a small video stream."""
    with av.open(str(path), "w") as out:
        video = None
        if video_seconds:
            video = out.add_stream("mpeg4", rate=10)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        if pcm is not None:
            stream = out.add_stream(codec, rate=rate, layout="mono")
            ctx = stream.codec_context
            # Encoders want their own sample format, rate and (aac, opus) exact frame sizes.
            resampler = av.AudioResampler(format=ctx.format.name, layout="mono", rate=rate, frame_size=ctx.frame_size or None)
            frame = av.AudioFrame.from_ndarray((pcm * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for chunk in resampler.resample(frame) + resampler.resample(None):
                out.mux(stream.encode(chunk))
            out.mux(stream.encode(None))
        if video is not None:
            for i in range(int(video_seconds * 10)):
                image = np.full((48, 64, 3), (i * 20) % 256, dtype=np.uint8)
                out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            out.mux(video.encode(None))
    return path


@pytest.fixture(scope="module")
def jfk(testdata) -> np.ndarray:
    return decode_audio(testdata / "en" / "jfk.flac")


@pytest.fixture(scope="module")
def encoded(jfk, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("containers")
    return {
        ext: _encode(jfk, folder / f"jfk.{ext}", codec, rate, video_seconds=11.0 if video else 0.0)
        for ext, (codec, rate, video) in CONTAINERS.items()
    }


def test_reference_clip_decodes_to_16k_mono_float(jfk):
    assert jfk.dtype == np.float32 and jfk.ndim == 1
    assert len(jfk) == 11 * SAMPLE_RATE
    assert 0.3 < float(np.abs(jfk).max()) <= 1.0


@pytest.mark.parametrize("ext", list(CONTAINERS))
def test_every_container_decodes(encoded, jfk, ext):
    with av.open(str(encoded[ext])) as container:  # the file really is what its name says
        assert len(container.streams.audio) == 1
        assert len(container.streams.video) == (1 if CONTAINERS[ext][2] else 0)
    pcm = decode_audio(encoded[ext])
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    # Lossy codecs add a few ms of priming (aac: 1024 samples, +0.07 s at 16 kHz).
    assert len(pcm) / SAMPLE_RATE == pytest.approx(11.0, abs=0.1)
    assert np.abs(pcm).max() <= 1.0


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_lossless_containers_keep_the_samples(encoded, jfk, ext):
    pcm = decode_audio(encoded[ext])
    assert np.max(np.abs(pcm - jfk)) <= 2 / 32768


def test_bytes_and_file_objects_decode_like_paths(encoded):
    from_path = decode_audio(encoded["mp3"])
    data = encoded["mp3"].read_bytes()
    assert np.array_equal(decode_audio(data), from_path)
    assert np.array_equal(decode_audio(io.BytesIO(data)), from_path)


@pytest.mark.model
def test_real_model_transcribes_a_compressed_container(encoded, transcriber, manifest):
    reference = next(c.reference for c in manifest if c.path.name == "jfk.flac")
    transcript = Pipeline(transcriber).transcribe(decode_audio(encoded["ogg"]))  # opus at 48 kHz, resampled
    assert transcript.language == "en"
    assert wer(reference, transcript.text) <= 0.05, transcript.text


# -- bad inputs --------------------------------------------------------------------------------------
def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(EmptyAudioError, match="empty"):
        decode_audio(path)
    with pytest.raises(EmptyAudioError):
        decode_audio(b"")


def test_missing_file(tmp_path):
    with pytest.raises(UnsupportedAudioError, match="no such audio file"):
        decode_audio(tmp_path / "nope.wav")


def test_corrupt_bytes():
    noise = np.random.default_rng(7).bytes(20_000)
    with pytest.raises(UnsupportedAudioError, match="could not be decoded as audio"):
        decode_audio(noise)


def test_text_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is a text file, not a recording\n" * 50)
    with pytest.raises(UnsupportedAudioError, match="could not be decoded as audio"):
        decode_audio(path)


def test_truncated_files(encoded, jfk):
    m4a = encoded["m4a"].read_bytes()
    # The index (moov) of an MP4/M4A is written last: without it nothing can be read.
    with pytest.raises(UnsupportedAudioError, match="could not be decoded"):
        decode_audio(m4a[: len(m4a) // 2])
    with pytest.raises(AudioError):
        decode_audio(encoded["flac"].read_bytes()[:100])  # header only
    # A cut stream format yields the audio that is there, no more.
    mp3 = encoded["mp3"].read_bytes()
    partial = decode_audio(mp3[: len(mp3) // 2])
    assert 4.0 < len(partial) / SAMPLE_RATE < 7.0


def test_video_without_audio(tmp_path):
    path = _encode(None, tmp_path / "silent-film.mp4", video_seconds=2.0)
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 1 and not container.streams.audio
    with pytest.raises(UnsupportedAudioError, match="no audio stream"):
        decode_audio(path)


def test_over_size_limit(encoded):
    size = encoded["wav"].stat().st_size
    with pytest.raises(AudioTooLargeError, match=r"over the limit of 0\.1 MB"):
        decode_audio(encoded["wav"], AudioLimits(max_bytes=100_000))
    with pytest.raises(AudioTooLargeError):
        decode_audio(encoded["wav"].read_bytes(), AudioLimits(max_bytes=size - 1))
    assert len(decode_audio(encoded["wav"], AudioLimits(max_bytes=size))) == 11 * SAMPLE_RATE


def test_over_duration_limit(encoded):
    for ext in ("flac", "mp3"):
        with pytest.raises(AudioTooLongError, match="longer than the limit of 5 s"):
            decode_audio(encoded[ext], AudioLimits(max_seconds=5))
    assert len(decode_audio(encoded["flac"], AudioLimits(max_seconds=11.0))) == 11 * SAMPLE_RATE


def test_every_audio_error_is_one_documented_type():
    for cls in (EmptyAudioError, UnsupportedAudioError, AudioTooLargeError, AudioTooLongError):
        assert issubclass(cls, AudioError)
    assert AudioError.code == "invalid_audio" and AudioTooLongError.code == "audio_too_long"


# -- raw PCM helpers ---------------------------------------------------------------------------------
def test_pcm16_round_trip(jfk):
    data = float32_to_pcm16(jfk)
    assert len(data) == 2 * len(jfk)
    back = pcm_to_float32(data, "pcm_s16le")
    assert back.dtype == np.float32
    assert np.max(np.abs(back - jfk)) < 2 / 32768


def test_pcm_f32_and_clipping():
    samples = np.array([0.0, 0.5, -0.25, 1.5, -3.0], dtype="<f4")
    assert pcm_to_float32(samples.tobytes(), "pcm_f32le").tolist() == [0.0, 0.5, -0.25, 1.0, -1.0]
    assert np.frombuffer(float32_to_pcm16(samples), "<i2").tolist() == [0, 16383, -8191, 32767, -32767]


def test_pcm_bad_input():
    with pytest.raises(UnsupportedAudioError, match="even number of bytes"):
        pcm_to_float32(b"\x00\x01\x02", "pcm_s16le")
    with pytest.raises(UnsupportedAudioError, match="multiple of 4"):
        pcm_to_float32(b"\x00" * 6, "pcm_f32le")
    with pytest.raises(UnsupportedAudioError, match="NaN or infinite"):
        pcm_to_float32(np.array([0.1, np.nan], dtype="<f4").tobytes(), "pcm_f32le")
    with pytest.raises(InvalidOptionsError, match="unknown PCM encoding 'mulaw'"):
        pcm_to_float32(b"\x00\x00", "mulaw")

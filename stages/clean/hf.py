"""Influence scores from two Hugging Face causal LMs loaded from local directories (optional extra ``hf``).

``score_j = loss_base(x_j | x_<j) − loss_ref(x_j | x_<j)`` (Pang et al. 2025), with per-token
cross-entropy from the models' logits. torch and transformers are imported lazily, only when a spec
asks for ``influence.model: hf``; nothing is ever downloaded (``local_files_only``). Documents are
scored in padded batches on the CPU or, when present, a GPU; documents longer than the models'
context are scored in consecutive windows (each window's first token gets score 0, as the
document's first token does: it has no context).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import TokenmillError


def _require() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as e:  # optional extra
        raise TokenmillError("influence.model 'hf' needs torch and transformers (pip install 'tokenmill[hf]')") from e
    return torch, transformers


class HFScorer:
    """Base-minus-reference token losses from two local causal LMs, batched."""

    def __init__(self, base_dir: str, ref_dir: str, device: str = "auto", batch_size: int = 8,
                 max_len: int | None = None):
        torch, transformers = _require()
        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.models = []
        for d in (base_dir, ref_dir):
            try:
                m = transformers.AutoModelForCausalLM.from_pretrained(d, local_files_only=True)
            except OSError as e:
                raise TokenmillError(f"cannot load a causal LM from {d!r}: {e}") from e
            self.models.append(m.to(self.device).eval())
        limit = min(getattr(m.config, "max_position_embeddings", None) or 1 << 30 for m in self.models)
        self.max_len = min(max_len or limit, limit)
        self.batch_size = batch_size

    def _losses(self, model: Any, windows: list[np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        width = max(len(w) for w in windows)
        ids = torch.zeros((len(windows), width), dtype=torch.long)
        att = torch.zeros((len(windows), width), dtype=torch.long)
        for i, w in enumerate(windows):
            ids[i, : len(w)] = torch.from_numpy(w.astype(np.int64))
            att[i, : len(w)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(self.device), attention_mask=att.to(self.device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            nll = -logp.gather(-1, ids[:, 1:].to(self.device).unsqueeze(-1)).squeeze(-1).cpu().numpy()
        return [np.r_[0.0, nll[i, : len(w) - 1]] for i, w in enumerate(windows)]

    def score_batch(self, docs: list[np.ndarray]) -> list[np.ndarray]:
        """Per-token ``loss_base − loss_ref`` (float32) for each document."""
        windows, owner = [], []
        for d, ids in enumerate(docs):
            for a in range(0, max(len(ids), 1), self.max_len):
                if len(ids[a:a + self.max_len]):
                    windows.append(np.asarray(ids[a:a + self.max_len]))
                    owner.append(d)
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i]))  # similar lengths pad less
        scores: list[np.ndarray | None] = [None] * len(windows)
        for s in range(0, len(order), self.batch_size):
            chunk = order[s:s + self.batch_size]
            base = self._losses(self.models[0], [windows[i] for i in chunk])
            ref = self._losses(self.models[1], [windows[i] for i in chunk])
            for i, b, r in zip(chunk, base, ref, strict=True):
                scores[i] = (b - r).astype(np.float32)
        out: list[list[np.ndarray]] = [[] for _ in docs]
        for i, d in enumerate(owner):
            out[d].append(scores[i])  # type: ignore[arg-type]
        return [np.concatenate(p) if p else np.zeros(0, np.float32) for p in out]

"""Greedy decoding over a preallocated cache with fixed shapes, replayed from a CUDA graph on GPU.

One decode step (embed the current tokens, every layer over the whole static cache, LM head, argmax
into the token buffer) always touches the same buffers with the same shapes, so on CUDA it is
captured once and replayed: no Python and no kernel launches per token, leaving the step bound by
the bytes it reads. On CPU (tests) the same step runs eagerly. With ``fuse`` (the default on GPU)
the step's small elementwise functions run compiled, one kernel each (``ablate.model.elementwise``):
fewer kernels per layer is what a graph replay of a small-state model is bound by.

Capturing runs the step a few times on the cache it is given (warm-up, then capture), which moves
the cache's state: capture on a freshly allocated cache, then ``cache.reset(seed)`` (in place, so the
graph's buffer addresses stay valid), then prefill, then ``start`` and ``step``.
"""

from __future__ import annotations

import torch

from ablate.kernels.backend import op
from ablate.kernels.triton.support import can_run
from ablate.model.cache import AblateCache
from ablate.model.elementwise import fused_elementwise


def greedy_tokens_ref(logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Each row's argmax of ``logits`` (b, vocab) written into ``out`` (b, 1) int64."""
    return torch.argmax(logits, -1, keepdim=True, out=out)


def _greedy_tokens_triton(logits, out):
    from ablate.kernels.triton.argmax import greedy_tokens_triton

    return greedy_tokens_triton(logits, out)


_GREEDY = op("greedy_tokens", greedy_tokens_ref)
_GREEDY.register("triton", _greedy_tokens_triton, lambda logits, out: logits.dim() == 2 and can_run(logits, out))


def greedy_tokens(logits: torch.Tensor, out: torch.Tensor, backend=None) -> torch.Tensor:
    """The greedy pick into ``out``; one Triton kernel on GPU (``ablate.kernels.triton.argmax``)."""
    return _GREEDY.choose(backend, logits, out)(logits, out)


class StaticGreedyDecoder:
    def __init__(self, model, cache: AblateCache, use_graph: bool | None = None, warmup: int = 2, fuse: bool | None = None):
        self.model, self.cache = model, cache
        self.fuse = cache.device.type == "cuda" if fuse is None else fuse
        cache.static_decode = True
        self.tokens = torch.zeros(cache.batch, 1, dtype=torch.long, device=cache.device)
        self.logits: torch.Tensor | None = None
        self.graph = None
        if use_graph is None:
            use_graph = cache.device.type == "cuda"
        if use_graph:
            self._capture(max(warmup, 1))

    @torch.no_grad()
    def _body(self) -> torch.Tensor:
        with fused_elementwise(self.fuse):
            logits = self.model(input_ids=self.tokens, past_key_values=self.cache, logits_to_keep=1).logits[:, -1]
        greedy_tokens(logits, self.tokens)
        return logits

    def _capture(self, warmup: int) -> None:
        if self.cache.seen_tokens == 0 and self.cache.num_meta:
            raise ValueError("capture needs a seeded cache (the meta tokens already in it)")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs asks
            for _ in range(warmup):
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._body()
        self.graph = graph

    def start(self, tokens: torch.Tensor) -> None:
        """The tokens (b, 1) the next step feeds (after prefill: the prompt's greedy next tokens)."""
        self.tokens.copy_(tokens)

    def step(self) -> torch.Tensor:
        """One greedy step: feeds ``tokens``, returns the logits (b, vocab) and leaves the argmax in
        ``tokens``. With a graph the returned tensor is overwritten by the next step."""
        if self.graph is None:
            return self._body()
        if self.cache.per_row:
            raise ValueError("the captured step assumes every row at the same position (no padding)")
        self.graph.replay()
        # the device side of cache.advance(1) ran inside the graph; mirror it on the Python side
        self.cache.seen_tokens += 1
        self.cache._step += 1
        return self.logits

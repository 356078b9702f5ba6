"""The batch-layout axis (``--layout``): how an LM batch's rows are laid out, and the attention
mask and positions each layout implies. Pure functions of small integer tensors.

- ``full``: every row one window of the context length, no padding, causal attention
  (``is_causal=True``: no mask tensor at all). The default, and the only layout of a model
  without attention.
- ``right``: each row one sequence of its own length, padded on the right; the attention mask
  is the causal mask and the key-padding mask (HF's ``attention_mask``) combined.
- ``left``: the same sequences, padded on the left (batched generation, several preference
  trainers). A padding *query* row then sees no key at all: its attention row is fully masked.
  That row is the case whose result torch changed at 2.5 (``_safe_softmax``, pytorch#131060:
  a fully masked row gives zeros, where it gave NaN before). ``right`` never has one: a
  padding query sees the real keys before it. ``full`` never has one: the diagonal is always
  allowed.
- ``packed``: several documents back to back in each row, no padding; the mask is block-diagonal
  causal (a token sees earlier tokens of its own document only) and positions restart at 0 in
  every document.

A batch's layout is written as ``segments`` (B, T), int64: 0 for a padding token, k >= 1 for the
k-th document of the row. The mask and positions are functions of it (``attention_mask``,
``positions``), computed inside the model, so the mask reaches SDPA as the boolean ``attn_mask``
it takes (True: may attend). Targets of padding tokens are ``IGNORE`` (cross entropy's
``ignore_index``): the loss and the held-out metric count real tokens only.

Lengths are drawn from a generator the caller seeds by (seed, step) (``data.layout_generator``),
so a batch is a function of (seed, step) as in ``full``.
"""

from __future__ import annotations

import torch

from diagnostics.errors import UsageError

LAYOUTS = ("full", "right", "left", "packed")
FULL = "full"
IGNORE = -100  # torch.nn.functional.cross_entropy's default ignore_index: a padding target
PAD = 0  # the token id a padding position holds (never seen: masked as a key, ignored as a target)
# the shortest sequence (and document), as a fraction of the context: uniform lengths between it
# and the whole context, so the mean row is ~56% real tokens, as SFT batches padded to their
# longest member often are
MIN_FRACTION = 0.125
MIN_TOKENS = 2  # a sequence has at least two tokens (one prediction needs a context)


def check(layout: str) -> None:
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")


def shortest(context: int) -> int:
    """The shortest sequence or document of a context length."""
    return min(context, max(MIN_TOKENS, int(context * MIN_FRACTION)))


def draw_lengths(n: int, context: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` lengths, uniform on [shortest(context), context] (int64)."""
    return torch.randint(shortest(context), context + 1, (n,), generator=gen)


def pack_lengths(context: int, gen: torch.Generator) -> list[int]:
    """Document lengths that fill one row of ``context`` tokens exactly: drawn as
    ``draw_lengths`` until the row is full, the last one cut to what is left."""
    out, left = [], context
    while left > 0:
        d = int(draw_lengths(1, context, gen)[0])
        out.append(min(d, left))
        left -= out[-1]
    return out


def padded(windows: torch.Tensor, lengths: torch.Tensor, side: str):
    """Rows of one sequence each: row i holds the first ``lengths[i]`` tokens of ``windows[i]``
    (B, T+1) as inputs and the next ones as targets, padded on ``side`` ("right" or "left").
    Returns (inputs, targets, segments), each (B, T)."""
    B, T = windows.shape[0], windows.shape[1] - 1
    pos = torch.arange(T, device=windows.device).expand(B, T)
    L = lengths.to(windows.device)[:, None]
    real = pos < L if side == "right" else pos >= T - L
    src = (pos if side == "right" else pos - (T - L)).clamp(min=0)
    x = torch.where(real, windows[:, :-1].gather(1, src), PAD)
    y = torch.where(real, windows[:, 1:].gather(1, src), IGNORE)
    return x, y, real.long()


def packed(starts: list[list[int]], lengths: list[list[int]], context: int):
    """Rows of several documents: row i holds, back to back, documents of ``lengths[i]`` tokens
    starting at ``starts[i]`` in the token stream. Returns (source, segments), each
    (len(starts), context): the stream index of each input token (its target is the next one)
    and its document number."""
    B = len(starts)
    src = torch.empty(B, context, dtype=torch.long)
    seg = torch.empty(B, context, dtype=torch.long)
    for i, (row_starts, row_lengths) in enumerate(zip(starts, lengths)):
        offset = 0
        for k, (s, d) in enumerate(zip(row_starts, row_lengths)):
            src[i, offset:offset + d] = torch.arange(s, s + d)
            seg[i, offset:offset + d] = k + 1
            offset += d
    return src, seg


def attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """The boolean SDPA mask (B, 1, T, T) of a layout (True: the query may attend to the key):
    causal, the key a real token, and the key in the query's document, where the query is one
    (a padding query is restricted by the key-padding mask alone, as a padded batch's mask is)."""
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    q, k = segments[:, :, None], segments[:, None, :]
    same_document = (q == k) | (q == 0)
    return (causal & (k > 0) & same_document)[:, None]


def positions(segments: torch.Tensor) -> torch.Tensor:
    """Each token's position within its document (B, T): 0 at a document's first token; padding
    tokens count from 0 too (they are never attended to, so their position changes nothing)."""
    B, T = segments.shape
    idx = torch.arange(T, device=segments.device).expand(B, T)
    new = torch.ones_like(segments, dtype=torch.bool)
    new[:, 1:] = segments[:, 1:] != segments[:, :-1]
    start = torch.where(new, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start


def fully_masked_rows(mask: torch.Tensor) -> torch.Tensor:
    """How many query rows of a mask (B, 1, T, T) may attend to nothing."""
    return (~mask.any(dim=-1)).sum()

"""Token attributions for text models: integrated gradients (Sundararajan et al., ICML 2017).

The path runs from a baseline text — every token replaced by the padding token, the mask kept
— to the input, in the word-embedding space; a token's attribution is its embedding's change
times the mean gradient of the class's logit along the path. The attributions sum to the
logit's change from the baseline (the completeness axiom), which :func:`integrated_gradients`
reports so a user can see how well ``steps`` approximated the integral.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch
from torch import nn

from transferkit.errors import TransferkitError

STEPS = 32  # the Riemann sum's points: attributions sum to the logit change within a few percent


@dataclass(frozen=True)
class TokenAttribution:
    tokens: list[str]
    scores: list[float]
    delta: float  # the logit's change from the baseline minus the attributions' sum (≈ 0)


def _embeddings(model: nn.Module) -> nn.Module:
    for module in model.modules():
        getter = getattr(module, "get_input_embeddings", None)
        if callable(getter):
            embeddings = getter()
            if isinstance(embeddings, nn.Module):
                return embeddings
    raise TransferkitError("this text model exposes no input embeddings: no token attributions")


def integrated_gradients(
    model: nn.Module, packed: torch.Tensor, target: int, pad_id: int, steps: int = STEPS
) -> tuple[torch.Tensor, float]:
    """Per-token attributions of one packed ``[2, length]`` input (ids, mask), unpadded."""
    length = max(1, int(packed[1].sum()))
    item = packed[:, :length].unsqueeze(0)
    embeddings = _embeddings(model)
    with torch.no_grad():
        base = embeddings(torch.full_like(item[0, 0], pad_id)).unsqueeze(0)  # the baseline's embeddings
        start = float(model(_with_ids(item, pad_id))[0, target])  # the baseline's logit (alpha 0)
    alphas = torch.linspace(0, 1, steps + 1)[1:]  # the right Riemann sum
    captured: dict[str, torch.Tensor] = {}

    def path(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        captured["input"] = output.detach()[:1]
        scale = alphas.to(output.dtype).view(-1, *([1] * (output.ndim - 1)))
        captured["points"] = (base + scale * (output.detach() - base)).requires_grad_(True)
        return captured["points"]

    handle = embeddings.register_forward_hook(path)
    try:
        logits = model(item.repeat(steps, 1, 1))
        grad = torch.autograd.grad(logits[:, target].sum(), captured["points"])[0]
    finally:
        handle.remove()
    attributions = ((captured["input"][0] - base[0]) * grad.mean(dim=0)).sum(dim=-1)
    end = float(logits[-1, target])
    return attributions.detach(), end - start - float(attributions.sum())


def _with_ids(packed: torch.Tensor, token: int) -> torch.Tensor:
    """``packed`` with every id replaced by ``token``, the mask kept."""
    out = packed.clone()
    out[:, 0] = token
    return out


def words(tokens: list[str], scores: list[float], special: set[str]) -> list[tuple[str, float]]:
    """WordPiece (``##``) and SentencePiece (``▁``) pieces joined into words, their scores summed."""
    out: list[tuple[str, float]] = []
    for token, score in zip(tokens, scores, strict=True):
        if token in special:
            continue
        if token.startswith("##") and out:
            out[-1] = (out[-1][0] + token[2:], out[-1][1] + score)
        else:
            out.append((token.lstrip("▁Ġ"), score))
    return out


def highlighted(pairs: list[tuple[str, float]]) -> str:
    """Words as HTML spans: red where they push towards the class, blue where against."""
    top = max((abs(s) for _, s in pairs), default=0.0) or 1.0
    spans = []
    for word, score in pairs:
        alpha = min(1.0, abs(score) / top)
        colour = f"rgba(214,39,40,{alpha:.2f})" if score > 0 else f"rgba(31,119,180,{alpha:.2f})"
        spans.append(f'<span style="background:{colour}" title="{score:+.3f}">{html.escape(word)}</span>')
    return " ".join(spans)


__all__ = ["STEPS", "TokenAttribution", "highlighted", "integrated_gradients", "words"]

"""Direct reference computations the tests compare the pack against (the definitions, written out)."""

import torch


def direct_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head for (B, N, heads*d) inputs, materialising the weights (float64 in tests)."""
    d = q.shape[-1] // heads

    def split(x):
        return x.reshape(x.shape[0], x.shape[1], heads, d).transpose(1, 2)

    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / d**0.5, dim=-1)
    return (weights @ split(v)).transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """The same through a fused kernel, like ComfyUI's backends: the weights are never materialised."""
    width = q.shape[-1]

    def split(x):
        return x.reshape(x.shape[0], -1, heads, width // heads).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(q.shape[0], -1, width)

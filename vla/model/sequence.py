"""Per-frame sequence assembly: [BOS] [vision tokens] [instruction] [LRN x latent_num] [EOS] [padding]."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FrameSequence:
    embeds: torch.Tensor  # [N, S, hidden]
    attention_mask: torch.Tensor  # [N, S], 1 on every token the LM attends to
    image_index: torch.Tensor  # [N, S], i + 1 on the tokens of the i-th view, 0 elsewhere
    action_positions: torch.Tensor  # [N, latent_num], where the action tokens sit


def assemble(
    vision: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    action_token: torch.Tensor,
    special: torch.Tensor,
    num_views: int,
    fill_zero: bool = False,
) -> FrameSequence:
    """Lay out each frame's tokens; the action tokens follow each sample's own last real token.

    vision ``[N, V*K, hidden]`` (views in order), text ``[N, L, hidden]`` with ``text_mask [N, L]``
    (1 on real tokens), action_token ``[latent_num, hidden]``, special ``[3, hidden]`` = the BOS,
    EOS and padding embeddings. ``fill_zero`` masks the action tokens out of attention (the LM
    still computes their hidden states).

    The real tokens are first moved to the front in their order (``compact``), so any padding
    side, or a mask with holes, gives the same sequence: the instruction, then ``[LRN]``.
    """
    text, text_mask = compact(text, text_mask)
    n, length, hidden = text.shape
    latent_num = action_token.shape[0]
    bos, eos, pad = special[0], special[1], special[2]
    real = text_mask.sum(dim=1, keepdim=True)  # [N, 1]

    # The tail after the vision tokens: instruction, action tokens, EOS, then the padding.
    j = torch.arange(length + latent_num + 1, device=text.device).unsqueeze(0)  # [1, L + latent + 1]
    is_text = j < real
    is_action = (j >= real) & (j < real + latent_num)
    is_eos = j == real + latent_num
    text_slots = torch.cat([text, pad.expand(n, latent_num + 1, hidden)], dim=1)
    action_slots = action_token[(j - real).clamp(0, latent_num - 1)]
    tail = torch.where(is_text.unsqueeze(-1), text_slots, pad)
    tail = torch.where(is_action.unsqueeze(-1), action_slots, tail)
    tail = torch.where(is_eos.unsqueeze(-1), eos, tail)
    tail_mask = is_text | is_eos | (is_action & (not fill_zero))

    prefix = 1 + vision.shape[1]
    embeds = torch.cat([bos.expand(n, 1, hidden), vision, tail], dim=1)
    attention_mask = torch.cat([text_mask.new_ones(n, prefix), tail_mask.to(text_mask.dtype)], dim=1)
    tokens_per_view = vision.shape[1] // num_views
    views = torch.arange(1, num_views + 1, device=text.device).repeat_interleave(tokens_per_view)
    image_index = torch.zeros_like(attention_mask)
    image_index[:, 1:prefix] = views
    action_positions = prefix + real + torch.arange(latent_num, device=text.device)
    return FrameSequence(embeds, attention_mask, image_index, action_positions)


def compact(text: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``text [N, L, H]`` and its 0/1 mask with every sample's real tokens moved to the front, in order."""
    order = torch.argsort(1 - text_mask, dim=1, stable=True)
    return text.gather(1, order.unsqueeze(-1).expand_as(text)), text_mask.gather(1, order)


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``hidden [N, S, H]`` at ``positions [N, P]`` -> ``[N, P, H]``."""
    return hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))

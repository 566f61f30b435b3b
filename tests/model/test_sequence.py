"""Sequence assembly: [BOS] [vision] [instruction] [LRN x latent] [EOS] [padding], per sample."""

from __future__ import annotations

import torch

from vla.model.sequence import assemble, gather_positions

H = 4


def _known_inputs(latent_num: int = 2):
    vision = torch.full((2, 4, H), 7.0)  # 2 views x 2 tokens
    text = torch.arange(1, 7, dtype=torch.float).reshape(2, 3, 1).expand(2, 3, H).clone()  # token j of sample b = 3b + j + 1
    text_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    action = -torch.arange(1, latent_num + 1, dtype=torch.float).unsqueeze(1).expand(latent_num, H)
    special = torch.tensor([100.0, 200.0, 0.0]).unsqueeze(1).expand(3, H)  # BOS, EOS, padding
    return vision, text, text_mask, action, special


def test_action_tokens_follow_each_samples_own_last_real_token():
    seq = assemble(*_known_inputs(), num_views=2)
    values = seq.embeds[..., 0]
    # sample 0: BOS, 4 vision, 3 text, LRN1, LRN2, EOS (no padding)
    assert values[0].tolist() == [100, 7, 7, 7, 7, 1, 2, 3, -1, -2, 200, 0, 0][: values.shape[1]]
    # sample 1: BOS, 4 vision, 1 text, LRN1, LRN2, EOS, then the 2 padding slots
    assert values[1].tolist() == [100, 7, 7, 7, 7, 4, -1, -2, 200, 0, 0]
    assert seq.action_positions.tolist() == [[8, 9], [6, 7]]
    assert seq.attention_mask.tolist() == [[1] * 11, [1] * 9 + [0, 0]]
    assert seq.image_index[0].tolist() == [0, 1, 1, 2, 2, 0, 0, 0, 0, 0, 0]
    gathered = gather_positions(seq.embeds, seq.action_positions)
    assert gathered[..., 0].tolist() == [[-1, -2], [-1, -2]]


def test_fill_zero_masks_only_the_action_tokens():
    seq = assemble(*_known_inputs(latent_num=1), num_views=2, fill_zero=True)
    assert seq.attention_mask.tolist() == [[1] * 8 + [0, 1], [1] * 6 + [0, 1, 0, 0]]
    assert seq.action_positions.tolist() == [[8], [6]]


def test_gradients_reach_text_and_action_token():
    vision, text, text_mask, action, special = _known_inputs()
    text.requires_grad_(True)
    action = action.clone().requires_grad_(True)
    seq = assemble(vision, text, text_mask, action, special, num_views=2)
    (seq.embeds * seq.attention_mask.unsqueeze(-1)).sum().backward()
    assert action.grad.eq(2).all()  # each latent appears once in each of the 2 samples
    assert text.grad[1, 1:].eq(0).all() and text.grad[0].eq(1).all()  # padding tokens are never used


def test_features_do_not_depend_on_padding(make_model, make_batch, family):
    """A sample's action features are the same alone and in a batch padded for a longer one."""
    model = make_model(**family).eval()
    batch = make_batch(model.config, batch=3)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == 3  # three different padding lengths
    with torch.no_grad():
        together = model.action_features(batch["images"], batch["input_ids"], batch["attention_mask"])
        for b in range(3):
            n = int(lengths[b])
            alone = model.action_features(
                batch["images"][b : b + 1], batch["input_ids"][b : b + 1, :n], batch["attention_mask"][b : b + 1, :n]
            )
            torch.testing.assert_close(together[b : b + 1], alone, atol=1e-5, rtol=1e-4)

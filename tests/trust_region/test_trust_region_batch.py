"""MessageBatch: validation and concat (padding, payload handling)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from trust_region.batch import MessageBatch


def _batch(m: int, t: int, traj0: int = 0, payload=None) -> MessageBatch:
    return MessageBatch(
        trajectory=torch.arange(traj0, traj0 + m),
        group=torch.zeros(m, dtype=torch.int64),
        agent=torch.zeros(m, dtype=torch.int64),
        turn=torch.zeros(m, dtype=torch.int64),
        context=torch.ones(m, 1, dtype=torch.int64),
        context_mask=torch.ones(m, 1, dtype=torch.bool),
        tokens=torch.ones(m, t, dtype=torch.int64),
        mask=torch.ones(m, t, dtype=torch.bool),
        behaviour_logp=torch.full((m, t), -0.5),
        reward=torch.zeros(m),
        returns=torch.zeros(m),
        generated=torch.ones(m, dtype=torch.bool),
        payload=payload,
    )


@dataclass
class _Texts:
    texts: list

    @classmethod
    def concat(cls, items: list["_Texts"]) -> "_Texts":
        return cls([x for it in items for x in it.texts])


def test_concat_pads_and_keeps_rows():
    out = MessageBatch.concat([_batch(2, 1), _batch(3, 4, traj0=2)])
    assert len(out) == 5 and out.tokens.shape == (5, 4)
    assert out.mask.sum(dim=1).tolist() == [1, 1, 4, 4, 4]
    assert out.num_tokens == 14 and out.payload is None


def test_concat_payloads():
    a, b = _batch(1, 1, payload=_Texts(["x"])), _batch(1, 1, traj0=1, payload=_Texts(["y"]))
    assert MessageBatch.concat([a, b]).payload == _Texts(["x", "y"])
    joined = MessageBatch.concat([a, b], payload_concat=lambda ps: len(ps))
    assert joined.payload == 2
    with pytest.raises(ValueError, match="payload"):
        MessageBatch.concat([a, _batch(1, 1, payload={"k": 1})])
    with pytest.raises(ValueError, match="at least one"):
        MessageBatch.concat([])


def test_validation_names_the_field():
    b = _batch(2, 2)
    with pytest.raises(ValueError, match="behaviour_logp"):
        b.with_fields(behaviour_logp=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="mask"):
        b.with_fields(mask=torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="agent"):
        b.with_fields(agent=torch.tensor([0, -1]))

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.models.classifier import SequenceClassifier, pool
from lmforge.models.gpt import GPT
from lmforge.models.lstm import LSTMClassifier


def test_pooling_by_hand():
    h = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)  # rows [0,1,2], [3,4,5]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(h, mask, "last").flatten().tolist() == [1.0, 5.0]
    assert pool(h, mask, "cls").flatten().tolist() == [0.0, 3.0]
    assert pool(h, mask, "mean").flatten().tolist() == [0.5, 4.0]
    assert pool(-h, mask, "max").flatten().tolist() == [0.0, -3.0]  # the padded position (-2) never wins
    assert pool(h, mask, "concat").tolist() == [[1.0, 1.0, 0.5], [5.0, 5.0, 4.0]]  # [last; max; mean]


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "concat"])
def test_gpt_classifier_ignores_right_padding(pooling):
    torch.manual_seed(0)
    clf = SequenceClassifier(GPT(ModelConfig(vocab_size=40, n_layer=2, n_head=2, n_embd=16, block_size=12)), 16, 3, pooling).eval()
    ids = torch.randint(1, 40, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 4])
    torch.testing.assert_close(clf(padded, mask), clf(ids, torch.ones(1, 5, dtype=torch.long)), atol=1e-6, rtol=0)


def test_lstm_ignores_right_padding_and_learns():
    torch.manual_seed(0)
    m = LSTMClassifier(vocab_size=30, n_embd=16, hidden=16, n_layer=2, num_labels=2).eval()
    ids = torch.randint(1, 30, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(m(padded, torch.tensor([[1] * 6 + [0] * 3])), m(ids), atol=1e-6, rtol=0)

    # label = does token 7 occur in the sequence: needs the recurrence, not a bag of positions
    x = torch.randint(1, 30, (64, 8))
    y = (x == 7).any(dim=1).long()
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    first = None
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first

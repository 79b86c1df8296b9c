import math

import torch

from experiments.training.metrics import BitsPerByte, MeanNLL, Perplexity


def test_bits_per_byte_matches_hand_computation():
    # a model that puts probability 1/2 on every correct byte scores exactly 1 bit per byte
    nll = torch.full((3, 5), math.log(2.0), dtype=torch.float64)
    m = BitsPerByte()
    m.update(nll)
    assert abs(m.compute().item() - 1.0) < 1e-12

    # mixed probabilities, accumulated over two updates, with a mask
    p = torch.tensor([[0.5, 0.25, 0.125], [1.0, 0.5, 0.9]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    hand = -(math.log2(0.5) + math.log2(0.25) + math.log2(0.125) + math.log2(1.0) + math.log2(0.5)) / 5
    bpb, loss, ppl = BitsPerByte(), MeanNLL(), Perplexity()
    for metric in (bpb, loss, ppl):
        metric.update(-p[:1].log(), mask[:1])
        metric.update(-p[1:].log(), mask[1:])
    assert abs(bpb.compute().item() - hand) < 1e-12
    assert abs(loss.compute().item() - hand * math.log(2)) < 1e-12
    assert abs(ppl.compute().item() - 2**hand) < 1e-9


def test_bits_per_byte_from_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, 256, generator=g)
    targets = torch.randint(0, 256, (4, 7), generator=g)
    probs = logits.softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    hand = (-probs.log2()).mean().item()
    m = BitsPerByte()
    m.update(torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none"))
    assert abs(m.compute().item() - hand) < 1e-5

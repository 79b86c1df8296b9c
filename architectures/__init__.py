"""Model code for longlab: plain ``nn.Module`` classes, no Lightning, no Hydra.

Every architecture honours one contract::

    logits, state = net(tokens[B, T], state=None)

``logits[:, t]`` scores ``tokens[:, t + 1]`` using ``tokens[:, : t + 1]`` only, and ``state`` carries
whatever the next segment of the same rows needs, so that feeding a sequence segment by segment
gives the same logits as one long forward.
"""

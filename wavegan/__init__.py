"""A WaveGAN baseline (WGAN-GP on raw waveform windows): a generator of audio that is not a world model, trained on
the same prepared corpus and measured with the same tables as a world model's dreams from nothing, to say whether
a world model buys anything for making audio. Run it with `python -m wavegan` (wavegan/command.py).

Modules, in the order of the data flow: `config` (its keys' checks), `data` (train-split waveforms, windows),
`models` (generator, critic), `gan` (WGAN-GP losses and step), `train` (loop, checkpoints, resume), `samples`
(generation and the dreams' measures), `report` (files, curve), `session` (one run), `command` (the CLI).
"""

"""What "h = 1" means: how much of the audio after step t a trained tokenizer's step-t token already holds.

    python bench/lookahead.py --data_dir data [--split test --utterances 40 --cuts 16]

For the tokenizer in DATA_DIR (tokenizer/vqvae.pt) and real utterances of a prepared split it prints
(tokenizer.codec.lookahead): the fraction of step-t tokens that change when every mel frame after step t
is swapped for another utterance's, once at the encoder's input ("encoder") and once in dB before the
z-score ("+ normalisation": mel_norm utterance also moves the clip's overall level), and the receptive
field past step t's end, in steps and frames, found by perturbing single frames. A world model's
1-step forecast from such tokens is partly a lookahead of that many steps; a causal tokenizer
(vq_causal true, mel_norm corpus) gives 0, 0 and 0.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tokenizer.codec import lookahead  # noqa: E402
from tokenizer.layout import DataLayout  # noqa: E402
from tokenizer.shards import iter_utterances  # noqa: E402
from tokenizer.vqvae import load_vqvae  # noqa: E402


def split_dbs(layout: DataLayout, split: str, n: int) -> list[np.ndarray]:
    """The first `n` utterances of a split as log-mel in dB (the stored z-score undone)."""
    out = []
    for utt in iter_utterances(layout.mels(split)):
        out.append(utt["mel"].astype(np.float32) * np.float32(utt["std"]) + np.float32(utt["mean"]))
        if len(out) >= n:
            break
    return out


def main(argv: list[str] | None = None) -> dict:
    """Print the lookahead of DATA_DIR's tokenizer (and return it, for a test)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--utterances", type=int, default=40)
    p.add_argument("--cuts", type=int, default=16, help="steps t per utterance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    layout = DataLayout.of(args.data_dir)
    model, extra = load_vqvae(layout.vqvae)
    dbs = split_dbs(layout, args.split, args.utterances)
    if len(dbs) < 2:
        p.exit(2, f"{p.prog}: error: {layout.mels(args.split)} has fewer than 2 utterances\n")
    result = lookahead(model, dbs, cuts=args.cuts, seed=args.seed)
    result.update(tokenizer=str(layout.vqvae), split=args.split, utterances=len(dbs))
    if args.json:
        print(json.dumps(result))
        return result
    features = extra.get("features") or {"hop_length": 160, "sample_rate": 16000}
    frame_ms = 1000.0 * features["hop_length"] / features["sample_rate"]
    print(f"tokenizer {layout.vqvae} (causal={result['causal']}, mel_norm={result['mel_norm']}); "
          f"{result['pairs']} (utterance, t) pairs of {len(dbs)} {args.split} utterances")
    print(f"  step-t tokens changed by the audio after t: encoder {result['changed']:.1%}, "
          f"+ normalisation {result['changed_with_norm']:.1%}")
    print(f"  tokens of steps beyond the encoder's reach (< t - {result['receptive_steps']}) changed by the "
          f"normalisation alone: {result['changed_far']:.1%}")
    print(f"  receptive field past step t: {result['receptive_steps']} steps "
          f"({result['receptive_frames']} frames, {result['receptive_frames'] * frame_ms:.0f} ms)")
    return result


if __name__ == "__main__":
    main()

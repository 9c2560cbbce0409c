"""How real speech sounds after a vocoder alone and after the tokenizer round trip, on three corpora.

    OMP_NUM_THREADS=1 python bench/hearing.py [--corpus synth librispeech fsdd] [--clips 16] [--seconds 4] \
        [--seed 0] [--join] [--data_dir synth=DIR librispeech=DIR fsdd=DIR] [--out DIR]

Per corpus, `--clips` test-split utterances drawn with `--seed`, each cut to its first `--seconds`, from their
ORIGINAL audio (intrusive metrics need the wave, not a log-mel): `synth` re-synthesised from the corpus plan (the
folder's settings/prepare.json and `--synth_seed`), `librispeech` and `fsdd` read from the file each utterance names
(8 kHz FSDD upsampled with soxr: its signal band is 0-4 kHz); the log-mel made again is checked against the stored
one. `--join` puts drawn utterances end to end up to `--seconds` per clip: FSDD digits (0.3-0.8 s) are too short
for DNSMOS (0.5 s), STOI (~0.4 s of speech) and ViSQOL (~0.7 s). Rows: `original`; copy synthesis (the clip's
log-mel in dB -> vocoder) with Griffin-Lim (32 iterations, what dreams used) and HiFi-GAN; the tokenizer round
trip (log-mel -> tokens -> log-mel at the clip's level) -> each vocoder. Columns, medians over clips:

- PESQ-WB (1-4.64), STOI (0-1), ESTOI, ViSQOL (1-5): each row against the original clip;
- DNSMOS SIG / BAK / OVRL (1-5): no reference, every row including the original;
- RMS and spectral entropy: relative difference of the row's median vs the originals' (compare_real_generated
  on describe_clips, whole clips); for tokenizer rows also vs the same vocoder's copy synthesis (as dreams'
  acoustics.md compares a round trip with real clips through the same vocoder);
- RTF: seconds of vocoding / seconds of audio, CPU seconds of this process (steady on a shared machine) and
  wall seconds; torch, ONNX Runtime and the metrics on 1 thread (`--threads`).
A cell `x (n=k)` was scored on k clips only (a metric skips clips it cannot score: too short, no speech).
Targets, marked met/missed: the HiFi-GAN copy's PESQ-WB, STOI and DNSMOS OVRL above Griffin-Lim's, its OVRL within
0.3 of the originals'; the round trip's RMS and spectral entropy within +-10% (of the originals, of the same copy).

The fsdd folder (no prepared folder ships; utterance-level split, its 2 speakers are in every split):
    python -m tokenizer prepare --configs defaults audio small --source folder --data_root ../shared/real_speech/fsdd-dev \
        --speaker_rule regex --speaker_regex '^[0-9]+_([a-z]+)_' --data_dir data-fsdd
and the same with `train`. A folder without tokenizer/vqvae.pt gets the copy-synthesis rows only.
Prints a markdown table per corpus; with `--out`, writes hearing-<corpus>.md and hearing-<corpus>.json there.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The prepared folders read unless --data_dir names others: launch.py's default data_dir for the built-in corpus,
# and the folders the README's "Real speech" commands prepare for the other two.
DATA_DIRS = {"synth": "data", "librispeech": "data-librispeech", "fsdd": "data-fsdd"}
VOCODERS = ("griffinlim", "hifigan")
INTRUSIVE = ("pesq_wb", "stoi", "estoi", "visqol")
DNSMOS = ("sig", "bak", "ovrl")
SHAPE = ("rms", "spectral_entropy")
GL_ITERS = 32
OVRL_GAP, SHAPE_TOL = 0.3, 0.10  # targets: HiFi-GAN copy OVRL within 0.3 of the originals'; round trip within +-10%


def originals(corpus: str, data: Path, seed: int, synth_seed: int, settings) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Test utterances in a seeded random order: (id, original wave at the corpus' rate, |stored - re-made log-mel| dB)."""
    import soxr

    from tokenizer.audio_io import read_audio
    from tokenizer.features import mel_power, power_to_db
    from tokenizer.shards import iter_utterances
    from tokenizer.synth import plan_synth_corpus, synthesize

    utts, sr = list(iter_utterances(data / "mels" / "test")), settings.sample_rate
    if corpus == "synth":
        conf = {**json.loads((data / "settings" / "prepare.json").read_text()), "seed": synth_seed}
        plan = {u.utterance_id: u for u in plan_synth_corpus(conf)}
    for i in np.random.default_rng(seed).permutation(len(utts)):
        u = utts[i]
        if corpus == "synth":
            wave = synthesize(plan[u["utterance_id"]], sr, conf["synth_noise_db"])
        else:
            path = Path(u["source"]) if Path(u["source"]).is_file() else REPO / u["source"]
            x, rate, _ = read_audio(path, 15.0, "cut")  # prepare's max_seconds: what the stored log-mel holds
            x = x.mean(axis=1).astype(np.float32)
            wave = soxr.resample(x, rate, sr, quality="HQ").astype(np.float32) if rate != sr else x
        again, stored = power_to_db(mel_power(wave, settings), settings.top_db), u["mel"].astype(np.float32) * u["std"] + u["mean"]
        k = min(len(again), len(stored))
        yield u["utterance_id"], wave, np.abs(again[:k] - stored[:k])


def test_clips(corpus: str, data: Path, settings, args: argparse.Namespace) -> tuple[list[str], list[np.ndarray], str]:
    """`--clips` clips of at most `--seconds` (with `--join`, utterances end to end up to `--seconds` each) and a
    line on how far the log-mels made again from the original waves are from the stored ones."""
    ids, clips, diffs, part, names = [], [], [], [], []
    size = int(args.seconds * settings.sample_rate)
    for name, wave, diff in originals(corpus, data, args.seed, args.synth_seed, settings):
        diffs.append(diff)
        part, names = part + [wave], names + [name]
        if not args.join or sum(len(w) for w in part) >= size:
            ids.append("+".join(names)), clips.append(np.concatenate(part)[:size])
            part, names = [], []
        if len(clips) == args.clips:
            break
    d = np.concatenate([x.ravel() for x in diffs])
    return ids, clips, f"{len(diffs)} utterances: max {d.max():.3f} dB, median {np.median(d):.4f} dB"


def scored(fn, *args):
    try:
        return fn(*args)
    except Exception:  # a clip this metric cannot score (too short, no speech, silent): counted, not fatal
        return None


def summary(values: list) -> tuple[float, int]:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return (float(np.median(kept)) if kept else math.nan), len(kept)


def measure(refs: list[np.ndarray], rows: dict[str, list[np.ndarray]], sr: int) -> dict[str, dict]:
    """Per row: per-clip scores, medians and counts of every metric, and the clip descriptions."""
    from pydreamer.dreams import perceptual as P
    from pydreamer.dreams.acoustics import describe_clips

    fns = {"pesq_wb": P.pesq_wb, "stoi": P.stoi, "estoi": P.estoi, "visqol": P.visqol}
    out = {}
    for name, waves in rows.items():
        per_clip = {m: [scored(fns[m], r, d, sr) for r, d in zip(refs, waves)] for m in INTRUSIVE} if name != "original" else {}
        dns = [scored(P.dnsmos, w, sr) for w in waves]
        per_clip.update({f"dnsmos_{k}": [d[k] if d else None for d in dns] for k in DNSMOS})
        out[name] = {"per_clip": per_clip, "median": {}, "n": {}, "describe": describe_clips(waves, sr)}
        for m, values in per_clip.items():
            out[name]["median"][m], out[name]["n"][m] = summary(values)
    return out


def shape_diff(real: list[dict], other: list[dict]) -> dict[str, float]:
    from pydreamer.dreams.acoustics import compare_real_generated

    return {r.metric: r.relative_difference for r in compare_real_generated(real, other, list(SHAPE))}


def run_corpus(corpus: str, data: Path, args: argparse.Namespace) -> dict:
    from tokenizer.codec import TokenCodec
    from tokenizer.features import MelSettings, mel_power, power_to_db
    from tokenizer.vocoder import make_vocoder

    settings = MelSettings(**json.loads((data / "manifest.json").read_text())["features"])
    sr = settings.sample_rate
    ids, refs, mel_check = test_clips(corpus, data, settings, args)
    dbs = [power_to_db(mel_power(w, settings), settings.top_db) for w in refs]
    audio_s = sum(len(w) for w in refs) / sr
    ckpt = data / "tokenizer" / "vqvae.pt"
    codec = TokenCodec.load(ckpt, vocoder="griffinlim", griffin_lim_iters=GL_ITERS) if ckpt.is_file() else None
    notes = [f"{len(ids)} test clips ({'utterances joined end to end, ' if args.join else ''}each at most "
             f"{args.seconds:g} s), {audio_s:.1f} s in all; stored log-mel vs made again from the original wave, "
             f"{mel_check}" + (" (prepare resampled with torchaudio, this with soxr)" if corpus == "fsdd" else ""),
             f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start (wall-time RTF "
             "depends on it; cpu RTF is this process' CPU seconds)"]
    rows, rtf, trips = {"original": refs}, {}, None
    if codec is None:
        notes.append(f"no tokenizer at {ckpt}: tokenizer rows left out")
    else:
        codec.roundtrip(dbs[0])  # warm-up, not timed
        cpu = time.process_time()
        trips = [codec.roundtrip(db) for db in dbs]
        notes.append(f"tokenizer {ckpt} ({codec.model.ds} frames/step, mel_norm "
                     f"{'utterance' if codec.model.norm_stats is None else 'corpus'}): round trip RTF (cpu) "
                     f"{(time.process_time() - cpu) / audio_s:.4f}, not in the tokenizer rows' RTF")
    for name in VOCODERS:
        vocoder = make_vocoder(name, settings, GL_ITERS)
        vocoder(dbs[0][:50], 50 * settings.hop_length)  # warm-up (ONNX session, filterbank inverse), not timed
        notes.append(f"{name}: {vocoder.describe}")
        for label, mels in ((name, dbs), (f"tokenizer + {name}", trips)):
            if mels is not None:
                wall, cpu = time.perf_counter(), time.process_time()
                rows[label] = [vocoder(db, len(w)) for db, w in zip(mels, refs)]
                rtf[label] = ((time.process_time() - cpu) / audio_s, (time.perf_counter() - wall) / audio_s)
    rows = {k: rows[k] for k in ("original", *VOCODERS, *[f"tokenizer + {v}" for v in VOCODERS]) if k in rows}
    res = measure(refs, rows, sr)
    table = {}
    for label, r in res.items():
        cpu, wall = rtf.get(label, (math.nan, math.nan))
        row = {**r["median"], "n": r["n"], "rtf_cpu": cpu, "rtf_wall": wall}
        row.update({f"{m}_vs_original": v for m, v in shape_diff(res["original"]["describe"], r["describe"]).items()})
        copy = label.removeprefix("tokenizer + ")
        if copy != label:
            row.update({f"{m}_vs_copy": v for m, v in shape_diff(res[copy]["describe"], r["describe"]).items()})
        table[label] = row
    return {"corpus": corpus, "data_dir": str(data), "clips": ids, "seconds": args.seconds, "threads": args.threads,
            "notes": notes, "rows": table, "targets": targets(table),
            "per_clip": {k: v["per_clip"] for k, v in res.items()}}


def targets(t: dict[str, dict]) -> list[tuple[str, bool | None]]:
    """(target in words, met) where the rows to judge it exist; None where a value is missing."""
    def better(m):
        a, b = t["hifigan"][m], t["griffinlim"][m]
        return None if math.isnan(a) or math.isnan(b) else a > b

    out = [(f"HiFi-GAN copy {w} above Griffin-Lim's ({t['hifigan'][m]:.3f} vs {t['griffinlim'][m]:.3f})", better(m))
           for m, w in (("pesq_wb", "PESQ-WB"), ("stoi", "STOI"), ("dnsmos_ovrl", "DNSMOS OVRL"))]
    gap = t["hifigan"]["dnsmos_ovrl"] - t["original"]["dnsmos_ovrl"]
    out.append((f"HiFi-GAN copy DNSMOS OVRL within {OVRL_GAP} of the originals' ({gap:+.3f} from "
                f"{t['original']['dnsmos_ovrl']:.3f})",
                None if math.isnan(gap) else abs(gap) <= OVRL_GAP))
    for v in VOCODERS:
        row = t.get(f"tokenizer + {v}")
        for ref in ("original", "copy") if row else ():
            d = [row[f"{m}_vs_{ref}"] for m in SHAPE]
            out.append((f"tokenizer + {v}: RMS {d[0]:+.1%}, spectral entropy {d[1]:+.1%} vs the "
                        f"{'originals' if ref == 'original' else v + ' copy'}, within +-{SHAPE_TOL:.0%}",
                        all(abs(x) <= SHAPE_TOL for x in d)))
    return out


def cell(row: dict, m: str, n: int, fmt: str = "{:.2f}") -> str:
    if m not in row or (isinstance(row[m], float) and math.isnan(row[m])):
        return ""
    k = row["n"].get(m, n)
    return fmt.format(row[m]) + (f" (n={k})" if k < n else "")


def markdown(r: dict) -> str:
    n = len(r["clips"])
    head = ["row", "PESQ-WB", "STOI", "ESTOI", "ViSQOL", "DNSMOS SIG", "BAK", "OVRL", "RMS vs orig", "entropy vs orig",
            "RMS vs copy", "entropy vs copy", "RTF cpu / wall"]
    lines = [f"### {r['corpus']}: {r['data_dir']}, test split", "", *[f"- {x}" for x in r["notes"]], "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pct = "{:+.1%}"
    for label, row in r["rows"].items():
        cells = [cell(row, "pesq_wb", n), cell(row, "stoi", n, "{:.3f}"), cell(row, "estoi", n, "{:.3f}"),
                 cell(row, "visqol", n), *[cell(row, f"dnsmos_{k}", n) for k in DNSMOS],
                 *[cell(row, f"{m}_vs_original", n, pct) if label != "original" else "" for m in SHAPE],
                 *[cell(row, f"{m}_vs_copy", n, pct) for m in SHAPE],
                 cell(row, "rtf_cpu", n, "{:.3f}") + (f" / {row['rtf_wall']:.3f}" if label != "original" else "")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Medians over {n} clips; RTF on {r['threads']} thread(s). Targets:", ""]
    lines += [f"- {'**met**' if ok else 'missed' if ok is False else 'not measurable'}: {what}" for what, ok in r["targets"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", nargs="+", default=list(DATA_DIRS), choices=list(DATA_DIRS))
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0, help="seeds the draw of test clips")
    p.add_argument("--join", action="store_true", help="join drawn utterances end to end into clips of --seconds "
                   "(short-utterance corpora: most metrics cannot score a 0.5 s digit)")
    p.add_argument("--synth_seed", type=int, default=0, help="the seed the synth folder was prepared with (launch --seed)")
    p.add_argument("--data_dir", nargs="*", default=[], metavar="CORPUS=DIR", help="a prepared folder other than "
                   + ", ".join(f"{k}={v}" for k, v in DATA_DIRS.items()))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="", help="a folder for hearing-<corpus>.md and .json (printed only without it)")
    args = p.parse_args()
    for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):  # before numba loads: ViSQOL's numba.set_num_threads restores
        os.environ[var] = str(args.threads)  # numba's count, which under its OpenMP layer is torch's too (GL 30x slower)
    import torch

    torch.set_num_threads(args.threads)  # the HiFi-GAN session and the perceptual metrics follow torch's count
    dirs = {**DATA_DIRS, **dict(kv.split("=", 1) for kv in args.data_dir)}
    for corpus in args.corpus:
        data = Path(dirs[corpus])
        if not (data / "manifest.json").is_file():
            print(f"{corpus}: {data} is not a prepared folder (see the docstring for the command)", file=sys.stderr)
            continue
        t0 = time.time()
        result = run_corpus(corpus, data, args)
        text = markdown(result)
        print(text + f"\n({corpus}: {time.time() - t0:.0f} s)\n", flush=True)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"hearing-{corpus}.md").write_text(text)
            (out / f"hearing-{corpus}.json").write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

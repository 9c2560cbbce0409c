import torch

from tokenizer.vqvae import VQVAE, VectorQuantizer, load_vqvae, save_vqvae


def _model(**kw):
    args = dict(channels=32, code_dim=8, codebook_size=64, tokens_per_step=2, time_downsample=4, res_blocks=1)
    args.update(kw)
    return VQVAE(**args)


def _initialised(**kw):
    """A model whose codebook was drawn from encoder outputs (one training forward), in eval mode."""
    m = _model(**kw)
    m.train()
    m(torch.randn(4, 64, 80))
    return m.eval()


def test_shapes_and_padding():
    m = _model()
    mel = torch.randn(3, 50, 80)
    recon, tokens, losses = m(mel)
    assert tokens.shape == (3, 13, 2) and recon.shape == (3, 52, 80)
    m.eval()
    assert m.encode(mel).shape == (3, 13, 2) and m.decode(m.encode(mel)).shape == (3, 52, 80)
    assert set(losses) >= {"loss", "reconstruction", "commitment"}


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    t = torch.linspace(0, 6.28, 64)
    data = torch.stack([torch.sin(t[:, None] * (1 + k % 5) + torch.arange(80) / 10.0) for k in range(16)])
    first = None
    for _ in range(80):
        _, _, losses = m(data)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = first or float(losses["reconstruction"].detach())
    assert float(losses["reconstruction"].detach()) < 0.5 * first


def test_dead_codes_are_restarted_onto_data():
    torch.manual_seed(0)
    q = VectorQuantizer(32, 4, decay=0.5, dead_threshold=0.5, restart_window=2)
    q.train()
    far = torch.randn(256, 4) + 50.0
    q(torch.randn(256, 4))  # initialise on one cluster
    for _ in range(10):
        q(far)  # data moves away: unused codes must follow it
    _, idx, _ = q(far)
    assert q.restarts > 0
    assert len(idx.unique()) > 8


def test_codebook_loss_without_ema():
    m = _model(ema=False)
    _, _, losses = m(torch.randn(2, 32, 80))
    assert "codebook" in losses
    losses["loss"].backward()
    assert m.quantizer.codebook.grad is not None


def test_checkpoint_round_trip(tmp_path):
    m = _model()
    m.train()
    m(torch.randn(2, 32, 80))
    save_vqvae(tmp_path / "v.pt", m, {"step": 7})
    loaded, extra = load_vqvae(tmp_path / "v.pt")
    assert extra["step"] == 7
    mel = torch.randn(1, 40, 80)
    m.eval()
    assert torch.equal(m.encode(mel), loaded.encode(mel))


def _future_swapped(mel, t, ds):
    """The same clip with every frame after step t replaced by other audio."""
    other = mel.clone()
    other[:, (t + 1) * ds:] = torch.randn_like(other[:, (t + 1) * ds:]) * 3.0
    return other


def test_a_causal_encoder_ignores_the_frames_after_its_step_exactly():
    torch.manual_seed(0)
    causal, centred = _model(causal=True, res_blocks=2).eval(), _model(res_blocks=2).eval()
    mel = torch.randn(1, 64, 80)
    for t in (0, 5, 11):
        swapped = torch.cat([mel, _future_swapped(mel, t, 4)])
        h = causal._latents(swapped)
        assert torch.equal(h[0, :t + 1], h[1, :t + 1])  # bit for bit: no future frame reaches steps <= t
        tokens = causal.encode(swapped)
        assert torch.equal(tokens[0, :t + 1], tokens[1, :t + 1])
        h = centred._latents(swapped)
        assert not torch.allclose(h[0, t], h[1, t])  # the default encoder looks ahead


def test_lookahead_is_measured_3_steps_centred_and_0_causal():
    import numpy as np

    from tokenizer.codec import lookahead

    rng = np.random.default_rng(0)
    dbs = [rng.normal(-40, 10, (n, 80)).astype(np.float32) for n in (90, 120, 100)]
    torch.manual_seed(0)
    centred = lookahead(_initialised(), dbs, cuts=8)
    causal = lookahead(_initialised(causal=True, norm_stats=(-40.0, 10.0)), dbs, cuts=8)
    assert centred["receptive_steps"] == 3 and centred["changed"] > 0.2 and centred["pairs"] == 24
    assert causal["receptive_steps"] == 0 and causal["receptive_frames"] == 0
    assert causal["changed"] == 0.0 and causal["changed_with_norm"] == 0.0 and causal["changed_far"] == 0.0
    assert causal["mel_norm"] == "corpus" and centred["mel_norm"] == "utterance"


def test_causal_and_corpus_norm_checkpoints_round_trip_and_defaults_stay_as_before(tmp_path):
    default, causal = _model(), _model(causal=True, norm_stats=(-42.5, 11.0))
    assert "causal" not in default.hparams and "norm_stats" not in default.hparams  # the stored format is unchanged
    assert {k: v.shape for k, v in default.state_dict().items()} == {k: v.shape for k, v in causal.state_dict().items()}
    save_vqvae(tmp_path / "c.pt", causal)
    loaded, _ = load_vqvae(tmp_path / "c.pt")
    assert loaded.causal and loaded.norm_stats == (-42.5, 11.0)
    mel = torch.randn(1, 40, 80)
    assert torch.equal(causal.eval().encode(mel), loaded.encode(mel))


def test_a_corpus_normed_codec_keeps_a_prompts_tokens_when_its_future_changes():
    import numpy as np

    from tokenizer.codec import TokenCodec
    from tokenizer.features import MelSettings

    torch.manual_seed(0)
    settings = MelSettings(16000, 1024, 640, 160, 80, 80.0)
    rng = np.random.default_rng(1)
    db = rng.normal(-40, 10, (80, 80)).astype(np.float32)
    louder = np.concatenate([db[:40], db[40:] + 30.0])  # the same first 10 steps, then a much louder future
    causal = TokenCodec(_initialised(causal=True, norm_stats=(-40.0, 10.0)), settings)
    tokens, mean, std = causal.encode_db(db)
    assert (mean, std) == (-40.0, 10.0)
    assert np.array_equal(causal.encode_db(louder)[0][:10], tokens[:10])
    own = TokenCodec(_initialised(causal=True), settings)  # causal, but z-scored with its own level: the future leaks
    assert not np.array_equal(own.encode_db(louder)[0][:10], own.encode_db(db)[0][:10])


def test_a_prompt_starts_at_its_first_voiced_step_not_at_the_files_leading_silence():
    import numpy as np

    from tokenizer.codec import TokenCodec, first_voiced_step
    from tokenizer.features import MelSettings

    settings = MelSettings(16000, 1024, 640, 160, 80, 80.0)
    rng = np.random.default_rng(0)
    silence, speech = rng.normal(-95, 1, (182, 80)), rng.normal(-30, 5, (200, 80))  # 1.82 s of silence first
    db = np.concatenate([silence, speech]).astype(np.float32)
    assert first_voiced_step(db, -35.0, 4) == 182 // 4
    assert first_voiced_step(speech.astype(np.float32), -35.0, 4) == 0
    codec = TokenCodec(_initialised(), settings)
    clip = codec.encode_prompt("u", db, 1.0, vad_db=-35.0)
    assert clip.start_s == 1.80 and any("leading silence trimmed" in n for n in clip.notes)
    assert clip.prompt_db.mean() > -40  # the prompt is speech
    assert len(clip.prompt_db) + len(clip.continuation_db) == len(db) - 180
    untrimmed = codec.encode_prompt("u", db, 1.0)  # without vad_db: from the first sample, as before
    assert untrimmed.start_s == 0.0 and untrimmed.prompt_db.mean() < -90


def test_the_magnitude_term_is_level_free_zero_on_a_perfect_copy_and_kept_in_the_checkpoint(tmp_path):
    m = _model(magnitude_weight=2.0, magnitude_scale=1.5)
    target = torch.randn(2, 16, 80)
    assert float(m.magnitude_loss(target, target)) == 0.0
    off = target + 0.3 * torch.randn_like(target)
    # a constant shift of the z-scored input is a gain of the whole crop: the relative error does not change
    torch.testing.assert_close(m.magnitude_loss(off + 1.0, target + 1.0), m.magnitude_loss(off, target))
    _, _, losses = m(target)
    assert "magnitude" in losses and float(losses["loss"].detach()) > float(losses["reconstruction"].detach())
    save_vqvae(tmp_path / "m.pt", m)
    again, _ = load_vqvae(tmp_path / "m.pt")
    assert (again.magnitude_weight, again.magnitude_scale) == (2.0, 1.5)
    assert "magnitude_weight" not in _model().hparams  # a checkpoint without the term is as before


def test_the_magnitude_terms_best_guess_is_the_mean_magnitude_where_the_mses_is_the_mean_db():
    """What each loss makes of a spectrum it cannot predict: the MSE on dB answers the mean dB (far below the
    mean magnitude when peaks are sparse: the lost RMS), the magnitude term the mean magnitude (the level kept)."""
    m = _model(magnitude_weight=1.0, magnitude_scale=1.5)
    g = torch.Generator().manual_seed(1)
    target = -1.0 + 4.0 * (torch.rand(4, 32, 80, generator=g) > 0.93).float()  # sparse peaks 4 units over a floor
    guesses = {}
    for name, loss in {"mse": lambda c: (c - target).pow(2).mean(), "magnitude": lambda c: m.magnitude_loss(c, target)}.items():
        c = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([c], lr=0.05)
        for _ in range(400):
            opt.zero_grad()
            loss(c.expand_as(target)).backward()
            opt.step()
        guesses[name] = float(torch.exp(1.5 * c.detach()))
    mean_magnitude = float(torch.exp(1.5 * target).mean())
    assert abs(guesses["magnitude"] / mean_magnitude - 1) < 0.05
    assert guesses["mse"] < 0.3 * mean_magnitude


def test_the_postfilter_gives_decoded_bins_the_real_spread_and_survives_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    m = _initialised(codebook_size=4)  # 4 codes: decoded crops vary far less than real ones
    crops = torch.randn(16, 32, 80) * 2.0 + 1.0
    with torch.no_grad():
        before = m.decode(m.encode(crops))
        m.fit_postfilter(crops)
        after = m.decode(m.encode(crops))
    assert float(before.std()) < 1.0
    torch.testing.assert_close(after.reshape(-1, 80).std(0), crops.reshape(-1, 80).std(0), rtol=0.02, atol=0.02)
    torch.testing.assert_close(after.reshape(-1, 80).mean(0), crops.reshape(-1, 80).mean(0), rtol=0.02, atol=0.02)
    save_vqvae(tmp_path / "p.pt", m)
    again, _ = load_vqvae(tmp_path / "p.pt")
    with torch.no_grad():
        torch.testing.assert_close(again.decode(again.encode(crops)), after)
    assert "postfilter" not in _model().hparams

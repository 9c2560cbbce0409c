import torch

from tokenizer.vqvae import VQVAE, VectorQuantizer, load_vqvae, save_vqvae


def _model(**kw):
    args = dict(channels=32, code_dim=8, codebook_size=64, tokens_per_step=2, time_downsample=4, res_blocks=1)
    args.update(kw)
    return VQVAE(**args)


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

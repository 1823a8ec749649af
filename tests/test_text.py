"""The text encoder and cross-attention: masking, the attention formula, the identity at
initialisation, and their errors."""

from __future__ import annotations

import math

import pytest
import torch

from sdegen.data.captions import Tokenizer
from sdegen.models.text import CrossAttention, TextEncoder, check_context


def _context(b=3, n=5, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, n, w, generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 3:] = False
    mask[1, 1:] = False
    return emb, mask


def _block(seed=0, channels=8, context_dim=6, heads=2):
    torch.manual_seed(seed)
    block = CrossAttention(channels, context_dim, heads=heads, groups=4)
    torch.nn.init.normal_(block.proj.weight)  # a trained block: not the zero-initialised one
    return block


def test_padded_tokens_change_nothing():
    block = _block()
    x = torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    emb, mask = _context()
    noisy = emb.clone()
    noisy[~mask] = 1e3 * torch.randn(int((~mask).sum()), emb.shape[-1])
    assert torch.equal(block(x, emb, mask), block(x, noisy, mask))
    # and the same tokens without their padding give the same output row
    assert torch.allclose(block(x[1:2], emb[1:2, :1], mask[1:2, :1]), block(x, emb, mask)[1:2])
    # unmasked tokens do matter
    changed = emb.clone()
    changed[0, 0] += 1
    assert not torch.allclose(block(x, emb, mask)[0], block(x, changed, mask)[0])


def test_cross_attention_matches_the_formula():
    block = _block(heads=2)
    x = torch.randn(2, 8, 2, 3, generator=torch.Generator().manual_seed(2))
    emb, mask = _context(b=2)
    got = block(x, emb, mask)
    feats = block.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
    want = torch.empty_like(feats)
    for i in range(2):
        q = block.q(feats[i])
        k, v = block.kv(emb[i][mask[i]]).chunk(2, dim=-1)  # only the real tokens
        heads = []
        for hh in range(2):
            s = slice(4 * hh, 4 * hh + 4)
            a = torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(4), dim=-1)
            heads.append(a @ v[:, s])
        want[i] = block.proj(torch.cat(heads, dim=-1))
    want = x + want.transpose(1, 2).reshape(x.shape)
    assert torch.allclose(got, want, atol=1e-12)


def test_fresh_block_is_the_identity_and_learns():
    block = CrossAttention(8, 6, heads=2, groups=4)
    x = torch.randn(3, 8, 4, 4)
    emb, mask = _context()
    assert torch.equal(block(x, emb, mask), x)
    (block(x, emb, mask) * torch.randn_like(x)).sum().backward()
    assert block.proj.weight.grad is not None and block.proj.weight.grad.abs().sum() > 0


def test_text_encoder_masks_padding_and_reads_words():
    tok = Tokenizer(max_len=8)
    torch.manual_seed(0)
    enc = TextEncoder(len(tok), width=16, depth=2, heads=4, max_len=8)
    ids, mask = tok(["a thick 3", "a thin 3", ""])
    out = enc(ids, mask)
    assert out.shape == (3, 8, 16)
    assert (out[~mask] == 0).all()
    assert not torch.allclose(out[0, :4], out[1, :4])  # one word differs: so does the encoding
    # padding ids change nothing where the mask is False
    other = ids.clone()
    other[~mask] = 5
    assert torch.allclose(enc(other, mask), out, atol=1e-12)
    # a shorter sequence with the same tokens encodes the same
    assert torch.allclose(enc(ids[:1, :4], mask[:1, :4]), out[:1, :4], atol=1e-12)


def test_errors():
    emb, mask = _context()
    with pytest.raises(ValueError, match=r"float tensor \(B, L, W\)"):
        check_context(emb[0], mask)
    with pytest.raises(ValueError, match="bool tensor of shape"):
        check_context(emb, mask.long())
    empty = mask.clone()
    empty[2] = False
    with pytest.raises(ValueError, match="at least one True"):
        check_context(emb, empty)
    with pytest.raises(ValueError, match="NaN"):
        check_context(emb * float("nan"), mask)
    block = _block()
    with pytest.raises(ValueError, match="batch 3, but x has batch 2"):
        block(torch.zeros(2, 8, 2, 2), emb, mask)
    with pytest.raises(ValueError, match="width 6"):
        block(torch.zeros(3, 8, 2, 2), emb[..., :4], mask)
    with pytest.raises(ValueError, match="divisible by heads"):
        CrossAttention(6, 4, heads=4)
    enc = TextEncoder(10, width=8, heads=2, max_len=4)
    with pytest.raises(ValueError, match="at most 4"):
        enc(torch.ones(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"in 0\.\.9"):
        enc(torch.full((1, 2), 10), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="int64"):
        enc(torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool))


# ---- text-conditional U-Net -------------------------------------------------------------------


def _text_unet(seed=0):
    from sdegen.models import UNet
    from sdegen.models.text import TokenConditioner

    torch.manual_seed(seed)
    tok = Tokenizer(max_len=6)
    enc = TextEncoder(len(tok), width=16, depth=1, heads=2, max_len=6)
    net = UNet(1, channels=8, channel_mult=(1, 2), attention_levels=(1,), groups=4,
               text=TokenConditioner(enc))  # fmt: skip
    return net, tok


def _train_cross_attention(net):
    """Give every cross-attention block a nonzero output projection, as training would."""
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, CrossAttention):
            m.proj.weight.data = torch.randn(m.proj.weight.shape, generator=g) * 0.3


def test_text_unet_reads_the_prompt_and_null_rows():
    net, tok = _text_unet()
    x, c = torch.randn(3, 1, 8, 8), torch.randn(3)
    ids, _ = tok(["a thick 3", "a thin 7", ""])
    fresh = net(x, c, ids)
    assert torch.equal(fresh, net(x, c, None))  # zero-initialised cross-attention: no effect yet
    _train_cross_attention(net)
    out = net(x, c, ids)
    assert not torch.allclose(out[0], net(x, c, ids[[1, 1, 2]])[0])  # the prompt matters
    # a NULL_LABEL row is the null caption "": the same as the "" row, and as y = None
    null = torch.full_like(ids, -1)
    assert torch.allclose(net(x, c, null), net(x, c, ids[[2, 2, 2]]), atol=1e-12)
    assert torch.allclose(net(x, c, None), net(x, c, null), atol=1e-12)
    with pytest.raises(ValueError, match="token ids y"):
        net(x, c, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="num_classes or text"):
        from sdegen.models import UNet

        UNet(1, channels=8, groups=4, num_classes=10, text=net.text)


def test_classifier_free_guidance_on_text():
    import sdegen
    from sdegen.solvers.guidance import ClassifierFree, Conditioned

    net, tok = _text_unet()
    _train_cross_attention(net)
    sde = sdegen.VPSDE()
    model = sdegen.ScoreModel(net, sde, "eps")
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)
    ids, _ = tok(["a thick 3", "a small 7"])
    cond = model.x0_eps(x, t, ids)
    uncond = model.x0_eps(x, t, None)
    for w, want in ((0.0, uncond), (1.0, cond)):
        got = ClassifierFree(model, sde, ids, w).x0_eps(x, t)
        assert torch.allclose(got[0], want[0], atol=1e-10)
        assert torch.allclose(got[1], want[1], atol=1e-10)
    got = ClassifierFree(model, sde, ids, 3.0).x0_eps(x, t)
    assert torch.allclose(got[1], 3 * cond[1] - 2 * uncond[1], atol=1e-10)
    assert torch.allclose(Conditioned(model, sde, ids).x0_eps(x, t)[1], cond[1])
    assert model.check_condition(ids, 2) is ids


def test_embedding_table_takes_another_encoders_embeddings():
    from sdegen.models import UNet
    from sdegen.models.text import EmbeddingTable

    emb, mask = _context(b=3, n=5, w=6)
    table = EmbeddingTable(emb, mask)
    torch.manual_seed(0)
    net = UNet(1, channels=8, channel_mult=(1, 2), attention_levels=(1,), groups=4, text=table)
    _train_cross_attention(net)
    x, c = torch.randn(4, 1, 8, 8), torch.randn(4)
    y = torch.tensor([0, 2, -1, 1])
    out = net(x, c, y)
    # row 1 reads context 2: the same as asking for it alone
    assert torch.allclose(out[1:2], net(x[1:2], c[1:2], torch.tensor([2])), atol=1e-12)
    idx = table.add(emb[:1, :2] * 2, mask[:1, :2])
    assert idx.tolist() == [3] and len(table) == 4
    assert torch.allclose(net(x, c, y), out, atol=1e-12)  # old rows unchanged by padding
    with pytest.raises(ValueError, match="out of range"):
        net(x, c, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="int64 indices"):
        net(x, c, torch.zeros(4, 2, dtype=torch.long))


def test_sample_with_a_prompt_and_guidance():
    import sdegen

    net, tok = _text_unet()
    _train_cross_attention(net)
    sde = sdegen.VPSDE()
    model = sdegen.ScoreModel(net, sde, "eps")
    ids = tok(["a thick 3"] * 3)[0]
    kw = dict(method="ddim", steps=4, generator=None)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = sdegen.sample(model, sde, (3, 1, 8, 8), noise=noise, **kw)
    w0 = sdegen.sample(model, sde, (3, 1, 8, 8), noise=noise, y=ids, guidance=0.0, **kw)
    cond = sdegen.sample(model, sde, (3, 1, 8, 8), noise=noise, y=ids, **kw)
    w1 = sdegen.sample(model, sde, (3, 1, 8, 8), noise=noise, y=ids, guidance=1.0, **kw)
    assert torch.allclose(w0.x, plain.x, atol=1e-8) and w0.batch_factor == 2
    assert torch.allclose(w1.x, cond.x, atol=1e-8)
    assert not torch.allclose(cond.x, plain.x, atol=1e-4)
    with pytest.raises(ValueError, match="token ids y"):
        sdegen.sample(model, sde, (3, 1, 8, 8), y=3, **kw)


# ---- text-conditional runs: config, CLI, reloading ----------------------------------------------


def test_text_run_from_the_command_line(tmp_path, capsys):
    import numpy as np

    from sdegen.assembly import load_run
    from sdegen.cli import main

    run = str(tmp_path / "run")
    tiny = ["--set", "data=digits", "--set", "text=true", "--set", "steps=2", "--set",
            "batch_size=16", "--set", "network_params={channels: 8, channel_mult: [1, 2]}",
            "--quiet"]  # fmt: skip
    assert main(["train", "--run", run, *tiny]) == 0
    loaded = load_run(run)
    assert loaded.text is not None and loaded.model.net.text is not None
    # the captions are rebuilt from the config: the same every time
    assert torch.equal(loaded.text.train_ids, load_run(run).text.train_ids)
    out = tmp_path / "s"
    args = ["sample", "--run", run, "--nfe", "3", "--n", "4", "--quiet", "--out", str(out)]
    assert main([*args, "--prompt", "a bold tiny 7", "--guidance", "2"]) == 0
    saved = np.load(out.with_suffix(".npz"))
    assert saved["x"].shape == (4, 1, 8, 8) and str(saved["prompt"]) == "a bold tiny 7"
    assert int(saved["batch_factor"]) == 2
    capsys.readouterr()
    for extra, message in (
        (["--prompt", "a purple 7"], "unknown word 'purple'"),
        (["--class", "3"], "give --prompt, not --class"),
        (["--prompt", "a 3", "--class", "3"], "--class or --prompt, not both"),
    ):
        assert main([*args, *extra]) == 2
        assert message in capsys.readouterr().err
    plain = str(tmp_path / "plain")
    assert main(["train", "--run", plain, *tiny[:2], *tiny[4:]]) == 0
    assert main(["sample", "--run", plain, "--nfe", "2", "--prompt", "a 3"]) == 2
    assert "needs a text-conditional run" in capsys.readouterr().err
    for cfg, message in (
        (["--set", "data=toy:8gaussians", "--set", "text=true"], "needs labelled images"),
        (["--set", "data=digits", "--set", "text=true", "--set", "conditional=true"],
         "exclusive"),
        (["--set", "data=digits", "--set", "text=true", "--set", "network=mlp"],
         "cannot read text"),
    ):  # fmt: skip
        assert main(["train", "--run", str(tmp_path / "bad"), *cfg]) == 2
        assert message in capsys.readouterr().err


def test_text_dit_reads_the_prompt_and_guides():
    import sdegen
    from sdegen.models import DiT
    from sdegen.models.text import TokenConditioner
    from sdegen.solvers.guidance import ClassifierFree

    torch.manual_seed(0)
    tok = Tokenizer(max_len=6)
    enc = TextEncoder(len(tok), width=16, depth=1, heads=2, max_len=6)
    net = DiT(1, patch_size=2, hidden=16, depth=2, heads=2, text=TokenConditioner(enc))
    x, c = torch.randn(3, 1, 8, 8), torch.randn(3)
    ids, _ = tok(["a thick 3", "a thin 7", ""])
    assert bool((net(x, c, ids) == 0).all())  # adaLN-Zero and zero cross-attention: output 0
    for p in net.parameters():  # a trained network: every weight nonzero
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.3)
    _train_cross_attention(net)
    out = net(x, c, ids)
    assert not torch.allclose(out[0], net(x, c, ids[[1, 1, 2]])[0])  # the prompt matters
    assert torch.allclose(net(x, c, torch.full_like(ids, -1)), net(x, c, None), atol=1e-12)
    sde = sdegen.VPSDE()
    model = sdegen.ScoreModel(net, sde, "eps")
    t = torch.full((3,), 0.5)
    cond, uncond = model.x0_eps(x, t, ids)[1], model.x0_eps(x, t, None)[1]
    assert torch.allclose(ClassifierFree(model, sde, ids, 0.0).x0_eps(x, t)[1], uncond)
    assert torch.allclose(ClassifierFree(model, sde, ids, 1.0).x0_eps(x, t)[1], cond)
    with pytest.raises(ValueError, match="token ids y"):
        net(x, c, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="num_classes or text"):
        DiT(1, hidden=16, heads=2, num_classes=10, text=net.text)

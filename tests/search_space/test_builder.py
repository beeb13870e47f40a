import pytest
import torch

from search_space import ArchSpec, build_vae


@pytest.mark.parametrize("hidden, dec, latent", [((), None, 2), ((400, 400), None, 20), ((64,), (32,), 5)])
def test_mlp_forward_shapes(hidden, dec, latent):
    n = len(hidden) + len(dec if dec is not None else hidden) + 2
    spec = ArchSpec(family="mlp", enc_hidden=hidden, dec_hidden=dec, latent_dim=latent, weight_bits=(4,) * n)
    m = build_vae(spec)
    x = torch.rand(5, 1, 28, 28)
    logits, mu, logvar = m(x)
    assert logits.shape == (5, 1, 28, 28) and mu.shape == logvar.shape == (5, latent)
    assert list(m.weight_layers()) == spec.layer_names()
    assert [l.bits for l in m.weight_layers().values()] == list(spec.weight_bits)


@pytest.mark.parametrize("channels, kernels, strides, fc, shape", [
    ((32, 64), (4, 4), (2, 2), (256,), (1, 28, 28)),  # the seeds' conv VAE
    ((8,), (3,), (2,), (), (1, 28, 28)),
    ((4, 8, 8), (3, 4, 5), (2, 2, 1), (16, 16), (1, 28, 28)),
    ((4, 6), (3, 3), (2, 2), (), (3, 13, 17)),  # odd, non-square, colour
    ((5,), (4,), (1,), (12,), (1, 9, 9)),
])
def test_conv_forward_shapes(channels, kernels, strides, fc, shape):
    n = 2 * len(channels) + 2 * len(fc) + 2
    spec = ArchSpec(family="conv", enc_channels=channels, kernels=kernels, strides=strides, enc_hidden=fc,
                    latent_dim=7, weight_bits=(32,) * n, input_shape=shape)
    m = build_vae(spec)
    x = torch.rand(3, *shape)
    logits, mu, _ = m(x)
    assert logits.shape == x.shape and mu.shape == (3, 7)
    assert m.decode(torch.randn(4, 7)).shape == (4, *shape)
    assert isinstance(m.get_submodule("dec.tconv0"), torch.nn.ConvTranspose2d)


def test_conv_free_decoder_channels():
    spec = ArchSpec(family="conv", enc_channels=(8, 16), kernels=(4, 4), strides=(2, 2), enc_hidden=(32,),
                    dec_channels=(4, 12), latent_dim=3, weight_bits=(8,) * 8)
    m = build_vae(spec)
    assert m.dec.tconv0.in_channels == 4 and m.dec.tconv0.out_channels == 12 and m.dec.tconv1.out_channels == 1
    assert m(torch.rand(2, 1, 28, 28))[0].shape == (2, 1, 28, 28)


def test_eps_controls_the_noise():
    spec = ArchSpec.mlp((16,), 4)
    m = build_vae(spec)
    x = torch.rand(2, 1, 28, 28)
    eps = torch.randn(2, 4)
    assert torch.equal(m(x, eps)[0], m(x, eps)[0])
    mu, logvar = m.encode(x)
    assert torch.equal(m(x, torch.zeros(2, 4))[0], m.decode(mu))


def test_bits_change_the_forward_only_through_the_quantiser():
    torch.manual_seed(0)
    a = build_vae(ArchSpec.mlp((16,), 4, bits=32))
    b = build_vae(ArchSpec.mlp((16,), 4, bits=2))
    res = b.load_state_dict(a.state_dict(), strict=False)  # float weights into a quantised model
    assert res.unexpected_keys == [] and res.missing_keys and all(k.endswith(".weight_scale") for k in res.missing_keys)
    x, eps = torch.rand(2, 1, 28, 28), torch.randn(2, 4)
    assert not torch.allclose(a(x, eps)[0], b(x, eps)[0])
    for la, lb in zip(a.weight_layers().values(), b.weight_layers().values()):
        la.weight.data.copy_(lb.quantized_weight().detach())
    assert torch.allclose(a(x, eps)[0], b(x, eps)[0], atol=1e-5)

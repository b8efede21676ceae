"""The reference itself must be the seed's model: our JSON config for efficientnet_v2_s, built
through torchvision's generic EfficientNet class, has exactly torchvision's efficientnet_v2_s
modules, and the seed's forward equals a direct per-patch loop."""
import torch
from torchvision.models import efficientnet as tv

from medpatch_reference import MedicalPatchNet, build_backbone, load_arch


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_s_config_is_torchvision_efficientnet_v2_s():
    arch = load_arch("efficientnet_v2_s")
    arch_generic = dict(arch, name="generic")  # force the generic path
    ours = build_backbone(arch_generic)
    official = build_backbone(arch)  # torchvision.models.efficientnet_v2_s + the seed's stem/head
    assert shapes(ours) == shapes(official)
    # torchvision documents 21,458,488 parameters (3-channel stem, 1000 classes).
    assert sum(p.numel() for p in official.parameters()) == 21_458_488 - 986 * 1281 - 24 * 2 * 9
    bns = [m for m in official.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.eps == 1e-3 for m in bns)
    assert official.features[0][0].in_channels == 1 and official.classifier[1].out_features == 14


def test_tiny_config_uses_the_same_module_names():
    tiny = shapes(build_backbone(load_arch("efficientnet_v2_tiny")))
    s = shapes(build_backbone(load_arch("efficientnet_v2_s")))
    assert set(tiny) <= set(s)


def test_patch_forward_is_mean_of_row_major_patches():
    torch.manual_seed(0)
    net = MedicalPatchNet(build_backbone(load_arch("efficientnet_v2_tiny")), patch_size=64).eval()
    x = torch.rand(2, 1, 128, 192)
    with torch.no_grad():
        got = net.patch_logits(x)
        for b in range(2):
            for r in range(2):
                for c in range(3):
                    patch = x[b:b + 1, :, r * 64:(r + 1) * 64, c * 64:(c + 1) * 64]
                    torch.testing.assert_close(got[b, r * 3 + c], net.baseBackbone(patch)[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(net(x), got.mean(1))

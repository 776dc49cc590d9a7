"""Small real models for tests (importable as ``tests.models:<name>`` from a config)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TinyResNet(nn.Module):
    """Stem, one residual block with a projection shortcut, a classifier: coupled groups."""

    def __init__(self, width: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.conv1 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * width)
        self.conv2 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.shortcut = nn.Conv2d(width, 2 * width, 1, bias=False)
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))
        return self.fc(y.mean(dim=(2, 3)))


class TokenMLP(nn.Module):
    """Linear layers on [batch, tokens, features]: exported as MatMul, so 4-bit applies."""

    def __init__(self, dim: int = 64, hidden: int = 128, n_classes: int = 4) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens + self.down(F.gelu(self.up(tokens)))
        return self.head(x.mean(dim=1))


def tiny_resnet(width: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyResNet(width).eval()


def token_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TokenMLP().eval()


def token_data(n: int = 64, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8, 64)).astype(np.float32)
    return {
        "calibration": {"tokens": x[:32]},
        "validation": {"tokens": x},
        "targets": rng.integers(0, 4, n),
    }


class Unexportable(nn.Module):
    """Uses an operator that has no ONNX export (Bessel function)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(256, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.special.bessel_j0(image).flatten(1))


def unexportable() -> nn.Module:
    return Unexportable().eval()


def not_a_module() -> str:
    return "not a model"


def broken_model() -> nn.Module:
    raise RuntimeError("weights file is corrupt")


def wrong_length_targets() -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 1, 16, 16)).astype(np.float32)
    return {"calibration": x, "validation": x, "targets": np.zeros(7, dtype=np.int64)}


class OutlierCNN(nn.Module):
    """A CNN whose layers each have one weight 10× the rest: one scale per tensor then rounds
    most weights coarsely (the case bias correction is for)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            for m in (self.conv1, self.conv2, self.fc):
                m.weight.view(-1)[0] = 10 * m.weight.abs().max()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(image))))
        return self.fc(x.mean((2, 3)))


def outlier_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return OutlierCNN().eval()


class TinyBertEncoder(nn.Module):
    """A randomly initialised Hugging Face BERT (2 layers, 4 heads) with mean pooling, built
    like the all-MiniLM-L6-v2 example: token ids and mask in, one embedding per sentence out."""

    def __init__(self, hidden: int = 64, heads: int = 4, layers: int = 2, ffn: int = 128) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=200,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
            max_position_embeddings=64,
        )
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


def tiny_bert(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyBertEncoder().eval()


def token_id_data(n: int = 48, length: int = 16, seed: int = 0) -> dict:
    """Random token ids with right padding (varied lengths), and random targets."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 200, size=(n, length)).astype(np.int64)
    lengths = rng.integers(4, length + 1, size=n)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    inputs = {"input_ids": ids, "attention_mask": mask}
    return {
        "calibration": {k: v[:32] for k, v in inputs.items()},
        "validation": inputs,
        "targets": rng.integers(0, 4, n),
    }


class InvertedResidual(nn.Module):
    """MobileNetV2 / EfficientNet-Lite block: 1x1 expand, 3x3 depthwise, 1x1 project."""

    def __init__(self, c_in: int, c_out: int, expand: int, stride: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = nn.Sequential(
            nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU6(),
        )
        self.project = nn.Sequential(nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class TinyMobileNet(nn.Module):
    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 4, 1),
            InvertedResidual(16, 24, 4, 2),
            InvertedResidual(24, 24, 4, 1),
        )
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.fc = nn.Linear(64, n_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.blocks(self.stem(image))).mean((2, 3)))


def tiny_mobilenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyMobileNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so recalibration matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


class BranchOnInput(nn.Module):
    """A forward that branches on its input's values: tracing bakes in the example's branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv(image)
        if image.mean() > 0.3:  # the example batch is below, a third of the digits above
            x = -x
        return self.fc(x.mean(dim=(2, 3)))


def branch_on_input(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BranchOnInput().eval()


def fresh_random_cnn() -> nn.Module:
    """New random weights on every call (no seed): the base model's hash never matches."""
    return TinyResNet(8).eval()


class BasicBlock(nn.Module):
    """ResNet's basic block (torchvision's ``BasicBlock``)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's ResNet-18, layer for layer (11.7 M parameters at 1000 classes)."""

    def __init__(self, n_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1))
            )
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, n_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(image))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet18(n_classes: int = 1000, seed: int = 0) -> nn.Module:
    """Freshly initialised, as torchvision's is: every folded BatchNorm bias is zero."""
    torch.manual_seed(seed)
    return ResNet18(n_classes).eval()


def exporter_graph(model: nn.Module, example: tuple[torch.Tensor, ...], path) -> None:
    """``model`` as the TorchScript exporter writes it, untouched by tightfit (equal constants
    shared through Identity nodes), with a dynamic batch axis: what tightfit quantized before it
    inlined them."""
    torch.onnx.export(
        model,
        example,
        path,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        dynamic_axes={"image": {0: "batch"}},
    )


class _Tokens(torch.utils.data.Dataset):
    """Token-id samples as a Hugging Face ``datasets`` dataset yields them: a dict per sample."""

    def __init__(self, n: int, length: int, seed: int) -> None:
        data = token_id_data(n, length, seed)
        self.rows = data["validation"]
        self.labels = data["targets"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"labels": int(self.labels[i]), **{k: v[i] for k, v in self.rows.items()}}


def token_loaders(n: int = 48, length: int = 16, seed: int = 0) -> dict:
    """torch DataLoaders of dict batches ({'input_ids', 'attention_mask', 'labels'})."""
    from torch.utils.data import DataLoader

    return {
        "calibration": DataLoader(_Tokens(32, length, seed + 1), batch_size=8),
        "validation": DataLoader(_Tokens(n, length, seed), batch_size=10),
    }


def image_pairs(n: int = 40, seed: int = 0):
    """A generator of (image, label) pairs, one sample each: a transform batches nothing, it
    only reshapes (what a user's iterable of raw records needs)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.standard_normal(64).astype(np.float32), int(rng.integers(0, 10))


def to_image(pair: tuple) -> tuple:
    """The transform of :func:`image_pairs`: a flat 64-vector to a (1, 1, 8, 8) batch of one."""
    flat, label = pair
    return {"image": flat.reshape(1, 1, 8, 8)}, np.array([label])


def image_iterables(n: int = 40) -> dict:
    return {"calibration": image_pairs(16, seed=1), "validation": image_pairs(n)}


def llama_folder(
    folder: Path, layers: int = 2, vocab: int = 128, tied: bool = False, hidden: int = 32
) -> Path:
    """A tiny random Llama (GQA: 4 query heads sharing 2 key/value heads, each ``hidden / 4``
    wide) saved as a Hugging Face folder (no download); ``tied``: the head is the embedding
    matrix, as SmolLM2's is."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        use_cache=False, tie_word_embeddings=tied,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def next_token_data(n: int = 24, length: int = 32, vocab: int = 128, seed: int = 0) -> dict:
    """Token ids scored as a language model is: the targets are the ids themselves (position t
    predicts token t + 1), the metric perplexity (lower is better)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(n + 16, length)).astype(np.int64)
    return {
        "calibration": {"input_ids": ids[n:]},
        "validation": {"input_ids": ids[:n]},
        "targets": ids[:n],
        "metric": "perplexity",
    }


class BranchesTheSame(nn.Module):
    """A branch on a tensor's value whose two ways compute the same: TorchScript traces one
    (faithfully), torch.export refuses the data-dependent branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        if h.sum() > 0:
            return self.fc2(h)
        return self.fc2(h) * 1.0


def branches_the_same(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BranchesTheSame().eval()


def vectors(n: int = 64, seed: int = 0) -> dict:
    x = np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)
    return {"calibration": x[:32], "validation": x, "targets": np.zeros(n, np.int64)}

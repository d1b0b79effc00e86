"""The README's demo: train LeNet-5, built from cnnkernels layers, on real handwritten digits,
then print the self-check table of every operator and backend.

The data are scikit-learn's bundled digits (1,797 real 8x8 scans of handwritten 0-9, no
download), upsampled to LeNet's 32x32 input, with a stratified held-out test split.

    python -m cnnkernels.demo [--epochs N] [--out DIR] [--no-selfcheck]
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as TF

from cnnkernels import selfcheck
from cnnkernels.models import lenet5


def load_digits(device: torch.device, test_fraction: float = 0.2, seed: int = 0):
    """(train_x, train_y, test_x, test_y): 1x32x32 images scaled to zero mean, unit variance."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    # Data preparation, not the model: torch's bilinear resampling to LeNet's 32x32 input.
    images = TF.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(torch.arange(len(labels)).numpy(), test_size=test_fraction,
                                           stratify=labels.numpy(), random_state=seed)
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    return (images[train_idx].to(device), labels[train_idx].to(device),
            images[test_idx].to(device), labels[test_idx].to(device))


def jitter(images: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Training augmentation: each image moved by up to max_shift pixels in each direction
    (the digits sit on a uniform background, so wrapping around at the border is harmless)."""
    shifts = torch.randint(-max_shift, max_shift + 1, (len(images), 2)).tolist()
    return torch.stack([torch.roll(img, shifts=(dy, dx), dims=(1, 2)) for img, (dy, dx) in zip(images, shifts)])


@torch.no_grad()
def accuracy(model, x, y, batch: int = 512) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    return correct / len(x)


def train(epochs: int, batch_size: int, device: torch.device, seed: int = 0) -> dict:
    from tqdm import tqdm

    torch.manual_seed(seed)
    train_x, train_y, test_x, test_y = load_digits(device)
    model = lenet5(num_classes=10).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    history = {"loss": [], "train_acc": [], "test_acc": [], "seconds": []}
    print(f"LeNet-5 on {len(train_x)} training / {len(test_x)} test digits, device {device}, {epochs} epochs")
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), device=device)
        start, total = time.perf_counter(), 0.0
        bar = tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch + 1:2d}/{epochs}", leave=False, unit="batch",
                   mininterval=0.5)
        for i in bar:
            idx = order[i:i + batch_size]
            loss = TF.cross_entropy(model(jitter(train_x[idx])), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        history["loss"].append(total / len(train_x))
        history["train_acc"].append(accuracy(model, train_x, train_y))
        history["test_acc"].append(accuracy(model, test_x, test_y))
        history["seconds"].append(seconds)
        print(f"epoch {epoch + 1:2d}: loss {history['loss'][-1]:.4f}  train acc {history['train_acc'][-1]:.2%}  "
              f"test acc {history['test_acc'][-1]:.2%}  {seconds:.2f} s")
    return history


def save_curves(history: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, history["loss"], marker="o")
    left.set(title="training loss (cross-entropy)", xlabel="epoch", ylabel="loss")
    right.plot(epochs, history["train_acc"], marker="o", label="train")
    right.plot(epochs, history["test_acc"], marker="o", label="test")
    right.set(title="accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0.5, 1.0))
    right.legend()
    fig.suptitle("LeNet-5 (cnnkernels conv + pooling) on scikit-learn digits")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="demo-output", help="folder for the curves PNG")
    parser.add_argument("--no-selfcheck", action="store_true", help="skip the operator self-check table")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    history = train(args.epochs, args.batch_size, device)
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "lenet5_digits.png")
    save_curves(history, png)
    mean_epoch = sum(history["seconds"]) / len(history["seconds"])
    print(f"\ntest accuracy {history['test_acc'][-1]:.2%} after {args.epochs} epochs; "
          f"{mean_epoch:.2f} s per epoch on {selfcheck.machine()}; curves: {png}\n")
    if not args.no_selfcheck:
        selfcheck.main()


if __name__ == "__main__":
    main()

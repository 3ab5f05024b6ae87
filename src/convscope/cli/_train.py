"""`convscope train`: train a seed network and save it as a self-describing `.safetensors` file."""

from __future__ import annotations

import argparse
import shlex
import sys

from ._common import device, model_output, positive_int, print_json, progress
from ._limits import check_pixels_fit


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train small-cnn / small-cnn-s2 / cnn4 on a dataset",
                            description="Train a seed network with Adam and cross-entropy; the saved .safetensors "
                                        "file loads back as a model string (no --arch needed).")
    parser.add_argument("arch", help="small-cnn, small-cnn-s2, cnn4 (or convscope:NAME,option=value)")
    parser.add_argument("--data", required=True, help="fashion-mnist, mnist (training split), an image folder "
                                                      "(one sub-folder per class), a .npz or an IDX file")
    parser.add_argument("-o", "--output", required=True, type=model_output,
                        help="output file, e.g. model.safetensors")
    parser.add_argument("--epochs", type=positive_int, default=5, help="default 5")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="default 64")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, default 1e-3")
    parser.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                        help="input size (default: the data's for arrays/IDX, the arch's for folders: 28 or 32)")
    parser.add_argument("--channels", type=int, default=None, help="input channels (default: the data's)")
    parser.add_argument("--heldout", default=None, help="held-out data for the accuracy report (default: the test "
                                                        "split of a named dataset, else --heldout-fraction)")
    parser.add_argument("--heldout-fraction", type=float, default=0.1, help="default 0.1 (0 disables)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="N",
                        help="also save OUTPUT.epoch{N}.safetensors every N epochs")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint next to OUTPUT")
    parser.add_argument("--half", action="store_true", help="store float16 weights")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)


def _command(args: argparse.Namespace) -> str:
    """The canonical command that reproduces this run (every option spelled out)."""
    words = ["convscope", "train", args.arch, "--data", str(args.data), "--epochs", str(args.epochs), "--seed",
             str(args.seed), "--batch-size", str(args.batch_size), "--lr", repr(args.lr)]
    if args.size:
        words += ["--size", *map(str, args.size)]
    if args.channels:
        words += ["--channels", str(args.channels)]
    if args.heldout:
        words += ["--heldout", args.heldout]
    elif args.heldout_fraction != 0.1:
        words += ["--heldout-fraction", repr(args.heldout_fraction)]
    if args.checkpoint_every:
        words += ["--checkpoint-every", str(args.checkpoint_every)]
    if args.half:
        words.append("--half")
    if args.threads:
        words += ["--threads", str(args.threads)]
    return shlex.join(words + ["-o", args.output])


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models.train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(args.size) if args.size else None
    if size:
        check_pixels_fit(size, batch=args.batch_size, channels=args.channels or 1, option="--size",
                         what=f"a batch of {args.batch_size}", device=device(args))
    with progress("training") as bar:
        task = bar.add_task("training", total=None)

        def log(line: str) -> None:
            bar.console.print(line) if bar.console.is_terminal else print(line, file=sys.stderr)

        def status(state: dict) -> None:
            held = state["heldout_accuracy"]
            bar.update(task, description=f"epoch {state['epoch']}/{state['epochs']}",
                       status=f"loss {state['loss']:.4f}, accuracy {state['accuracy']:.4f}"
                              + ("" if held is None else f" (held-out {held:.4f} after the last epoch)"))

        result = train(args.arch, args.data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       seed=args.seed, size=size, channels=args.channels, heldout=args.heldout,
                       heldout_fraction=args.heldout_fraction, out=args.output,
                       checkpoint_every=args.checkpoint_every, resume=args.resume, half=args.half,
                       device=device(args), command=_command(args),
                       progress=lambda n, total: bar.update(task, advance=n, total=total), log=log,
                       status=status)
    if args.json:
        print_json({k: v for k, v in result.metadata.items() if k != "versions"} | {"path": str(result.path)})
        return 0
    accuracy = "n/a" if result.accuracy is None else f"{result.accuracy:.4f}"
    print(f"saved {result.path} ({result.metadata['arch']}); held-out accuracy {accuracy} "
          f"({result.metadata['heldout']})")
    return 0

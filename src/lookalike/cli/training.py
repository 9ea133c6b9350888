"""``lookalike train``: a Deep Ranking model on an index's products."""

from __future__ import annotations

import sys
from typing import Any

import click

from lookalike.cli.options import index_arg, refuse_unused, split_options


@click.command()
@index_arg
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Model folder to write (model.onnx, model.json, checkpoint.pt, curve).")
@click.option("--category", default=None,
              help="Category column [default: the index's category column, else articleType "
                   "where it exists; without one, training uses products alone].")
@click.option("--color", default=None,
              help="Colour column [default: baseColour where it exists, else none].")
@click.option("--product", default="product_id", show_default=True)
@click.option("--split-by", type=click.Choice(["product", "photo"]), default="product",
              show_default=True,
              help="product: validate on products never trained on; photo: every product "
                   "trains, held-out photos of known products validate.")
@click.option("--queries", type=click.Path(dir_okay=False, exists=True),
              help="Outside photos with labels (e.g. customers' photos) as more anchors: "
                   "positives are catalogue items their label maps to (--mapping), negatives "
                   "the others. Split by --query-group-column: the test share of groups is "
                   "never read (measure on it with lookalike evaluate --query-split test).")
@click.option("--mapping", type=click.Path(dir_okay=False, exists=True),
              help="YAML/JSON/CSV: outside label → catalogue values that count.")
@click.option("--query-images", type=click.Path(file_okay=False))
@click.option("--query-label-column", default="label", show_default=True)
@click.option("--query-group-column", default=None, metavar="COLUMN",
              help="Who took each outside photo, e.g. sender_id.")
@click.option("--query-test-fraction", default=0.5, show_default=True, type=float)
@click.option("--query-share", default=0.25, show_default=True, type=float,
              help="Share of each epoch's triplets anchored on outside photos.")
@click.option("--camera", default="", metavar="STEPS",
              help="Camera-like views of the catalogue photos as queries: any of background, "
                   "scale, rotate, perspective, light (comma-separated) [default: none].")
@click.option("--camera-share", default=0.5, show_default=True, type=float,
              help="Share of the queries shown as a camera-like view.")
@click.option("--classifier-only", is_flag=True,
              help="Keep INDEX's embedding and fit only the category classifier that "
                   "--rerank classify uses (seconds; with --queries, the lever that helps "
                   "camera photos most: docs/quality.md).")
@click.option("--require-better", is_flag=True,
              help="Exit with status 1 when the model is not better than the pretrained "
                   "backbone on validation (with --classifier-only: than the category vote); "
                   "the model is still written.")
@click.option("--dim", default=512, show_default=True, type=click.IntRange(2),
              help="Embedding size.")
@click.option("--gap", default=0.2, show_default=True, type=float,
              help="g in max(0, g + D(q,p) - D(q,n)), D = squared distance.")
@click.option("--aux-weight", default=1.0, show_default=True, type=float,
              help="Weight of the category/colour classification term (0: triplet loss only).")
@click.option("--keep", multiple=True, metavar="ATTR",
              help="Another column the embedding must keep telling apart (repeat), e.g. gender: "
                   "adds its classification to the objective.")
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--epochs", default=8, show_default=True, type=click.IntRange(1))
@click.option("--triplets-per-epoch", default=None, type=click.IntRange(1),
              help="[default: 25 per training item, between 2,000 and 50,000]")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(2))
@click.option("--p-same-product", type=float, default=None,
              help="[default: 0.9 if most products have several photos, else 0]")
@click.option("--p-in-class", default=0.5, show_default=True, type=float)
@click.option("--patience", default=2, show_default=True, type=click.IntRange(1),
              help="Stop after this many epochs without a better validation score.")
@click.option("--finetune-stages", default=0, show_default=True, type=click.IntRange(0),
              help="Also train the backbone's last N stages (0: frozen backbone).")
@click.option("--backbone-lr-scale", default=0.1, show_default=True, type=float,
              help="Learning rate of the tuned stages, relative to --lr.")
@split_options
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the training checkpointed in --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def train(index: str, out: str, quiet: bool, resume: bool, require_better: bool,
          **options: Any) -> None:
    """Train a Deep Ranking model on INDEX's products (frozen backbone = INDEX's model).
    Roles (category, colour) come from what INDEX has; --test-fraction 0 trains on
    everything, the way to make the model you deploy."""
    from lookalike.training.config import TrainConfig
    from lookalike.training.loop import train as run_training

    if resume:  # the checkpoint's index and options
        refuse_unused(click.get_current_context(), list(options),
                      "to a new training; --resume continues with the options it started with")
    options["keep"] = tuple(options["keep"])
    options["camera"] = tuple(c.strip() for c in options["camera"].split(",") if c.strip())
    if (options["queries"] is None) != (options["mapping"] is None):
        raise click.UsageError("--queries and --mapping go together")
    s = run_training(index, out, None if resume else TrainConfig(**options), resume=resume,
                     progress=not quiet, log=click.echo)
    baseline = "the category vote" if options["classifier_only"] else "the pretrained backbone"
    click.echo(f"model written to {s.out}: "
               + (f"best epoch {s.best_epoch} of {s.epochs_run}, " if s.epochs_run else "")
               + f"{s.timings['total_s']:.0f} s in all")
    if s.better:
        click.echo(f"it beats {baseline} on validation; use it with "
                   f"lookalike build CATALOG --model {s.out} --out INDEX")
    else:
        click.echo(f"it does NOT beat {baseline} on validation: keep the index "
                   "you have (or train with other settings)", err=True)
        if require_better:
            sys.exit(1)
